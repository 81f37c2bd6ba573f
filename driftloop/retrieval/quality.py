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


def relevant_sets(qa_rows: Sequence[dict], chunks: Sequence[dict]) -> tuple[list[set[int]], int]:
    by_doc: dict[str, list[int]] = {}
    normed = [_norm(c["text"]) for c in chunks]
    for i, c in enumerate(chunks):
        by_doc.setdefault(c["doc_id"], []).append(i)
    result, doc_level = [], 0
    for row in qa_rows:
        candidates = by_doc.get(row["doc_id"], [])
        probe = _norm(row["answer"])[:60]
        exact = {i for i in candidates if probe and probe in normed[i]}
        if not exact:
            doc_level += 1
        result.append(exact or set(candidates))
    return result, doc_level


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
