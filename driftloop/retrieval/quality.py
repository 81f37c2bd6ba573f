"""Retrieval quality on the eval split: recall@k and MRR@k.

A retrieved chunk is relevant when it comes from the question's document and holds
the opening of the reference answer. When the answer straddles a chunk boundary no
chunk holds it, and any chunk of the document counts; the report says how often.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np


def _norm(text: str) -> str:
    return " ".join(re.findall(r"\w+", text.lower()))


def _probe(answer: str) -> str:
    return _norm(answer)[:60]


def holds_answer(text: str, answer: str) -> bool:
    probe = _probe(answer)
    return bool(probe) and probe in _norm(text)


def answer_chunks(qa_rows: Sequence[dict], chunks: Sequence[dict]) -> list[tuple[set[int], set[int]]]:
    """Per question: the chunks of its document that hold the reference answer's opening,
    and all the chunks of its document."""
    by_doc: dict[str, list[int]] = {}
    normed = [_norm(c["text"]) for c in chunks]
    for i, c in enumerate(chunks):
        by_doc.setdefault(c["doc_id"], []).append(i)
    result = []
    for row in qa_rows:
        candidates = by_doc.get(row["doc_id"], [])
        probe = _probe(row["answer"])
        result.append(({i for i in candidates if probe and probe in normed[i]}, set(candidates)))
    return result


def relevant_sets(qa_rows: Sequence[dict], chunks: Sequence[dict]) -> tuple[list[set[int]], int]:
    found = answer_chunks(qa_rows, chunks)
    return [exact or document for exact, document in found], sum(1 for exact, _ in found if not exact)


def retrieval_metrics(ranked_ids: np.ndarray, relevant: Sequence[set[int]], k: int) -> dict:
    hits, reciprocal = 0, 0.0
    for row, rel in zip(ranked_ids[:, :k], relevant, strict=True):
        for rank, idx in enumerate(row, start=1):
            if int(idx) in rel:
                hits += 1
                reciprocal += 1.0 / rank
                break
    n = len(relevant)
    return {f"recall_at_{k}": hits / n if n else float("nan"), f"mrr_at_{k}": reciprocal / n if n else float("nan"), "questions": n}
