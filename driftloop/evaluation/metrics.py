"""Scores for one model's answers: ragas metrics that need no LLM, semantic similarity
with the local embedding model, perplexity, guardrail rates, latency and length.

A metric that could not be computed is absent (None), never 0 or 1: the gate treats a
missing metric as a failure, and the report marks it.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from driftloop.pii import find_pii

REFUSAL = re.compile(
    r"\b(i (do not|don't|cannot|can't) (know|answer|find|say)|(does|do) not (contain|mention|provide|say)|"
    r"not (enough|sufficient) information|unable to (answer|find)|no information)\b",
    re.IGNORECASE,
)

# Direction of every metric the gate may use; the report sorts and colours by it.
HIGHER_IS_BETTER = {
    "context_precision": True, "context_recall": True, "bleu": True, "rouge_l": True, "string_similarity": True,
    "semantic_similarity": True, "perplexity": False, "toxic_rate": False, "pii_rate": False, "refusal_rate": False,
    "empty_rate": False, "latency_p50_s": False, "tokens_per_answer": False, "faithfulness": True, "answer_relevancy": True,
}


class EvaluationError(ValueError):
    """The eval set cannot be scored: empty, or without references."""


@dataclass(frozen=True)
class EvalItem:
    question_id: str
    question: str
    reference: str
    reference_context: str
    doc_id: str


def eval_items(qa_rows: Sequence[dict], limit: int, seed: int = 0) -> list[EvalItem]:
    """The eval split, a seeded sample of at most `limit`, refusing sets that cannot be scored."""
    import random

    rows = [r for r in qa_rows if r.get("split") == "eval"]
    if not rows:
        raise EvaluationError(f"the eval split is empty ({len(qa_rows)} QA rows, none with split=eval); nothing to evaluate")
    missing = [r.get("qa_id", "?") for r in rows if not str(r.get("answer") or "").strip() or not str(r.get("context") or "").strip()]
    if missing:
        raise EvaluationError(f"{len(missing)} of {len(rows)} eval questions lack a reference answer or context, e.g. {missing[:3]}")
    rows = sorted(rows, key=lambda r: r["qa_id"])
    if limit and len(rows) > limit:
        rows = sorted(random.Random(seed).sample(rows, limit), key=lambda r: r["qa_id"])
    return [EvalItem(r["qa_id"], r["question"], r["answer"], r["context"], r["doc_id"]) for r in rows]


def _ragas_scores(samples, metrics) -> dict[str, list[float | None]]:
    out: dict[str, list[float | None]] = {}
    for key, metric in metrics.items():
        values: list[float | None] = []
        for sample in samples:
            try:
                value = float(metric.single_turn_score(sample))
            except Exception:  # noqa: BLE001 - one bad sample is recorded as missing, not as a score
                value = None
            values.append(value if value is not None and math.isfinite(value) else None)
        out[key] = values
    return out


def context_scores(items: Sequence[EvalItem], contexts: Sequence[Sequence[str]]) -> dict[str, list[float | None]]:
    """ragas NonLLM context precision and recall of the retrieved contexts against the reference context."""
    from ragas.dataset_schema import SingleTurnSample
    from ragas.metrics import NonLLMContextPrecisionWithReference, NonLLMContextRecall

    samples = [SingleTurnSample(user_input=i.question, retrieved_contexts=list(c) or [""], reference_contexts=[i.reference_context])
               for i, c in zip(items, contexts, strict=True)]
    return _ragas_scores(samples, {"context_precision": NonLLMContextPrecisionWithReference(), "context_recall": NonLLMContextRecall()})


def answer_scores(items: Sequence[EvalItem], answers: Sequence[str], embedder, reference_vectors: np.ndarray) -> dict[str, list[float | None]]:
    """Per answer: ragas BLEU, ROUGE-L and string similarity, embedding cosine, guardrail flags."""
    from profanity_check import predict_prob
    from ragas.dataset_schema import SingleTurnSample
    from ragas.metrics import BleuScore, NonLLMStringSimilarity, RougeScore

    # An empty answer is scored as a blank one: it counts as a miss, never as a gap in the data.
    samples = [SingleTurnSample(user_input=i.question, response=a or " ", reference=i.reference) for i, a in zip(items, answers, strict=True)]
    scores = _ragas_scores(samples, {"bleu": BleuScore(), "rouge_l": RougeScore(rouge_type="rougeL"),
                                     "string_similarity": NonLLMStringSimilarity()})
    answer_vecs = embedder.encode([a or " " for a in answers])
    scores["semantic_similarity"] = [float(x) for x in (answer_vecs * reference_vectors).sum(axis=1)]
    toxic = predict_prob([a or " " for a in answers]) if answers else []
    scores["toxic"] = [float(p >= 0.5) for p in toxic]
    scores["pii"] = [float(bool(find_pii(a))) for a in answers]
    scores["refusal"] = [float(bool(REFUSAL.search(a))) for a in answers]
    scores["empty"] = [float(not a.strip()) for a in answers]
    return scores


def _mean(values: Sequence[float | None]) -> float | None:
    """The mean, or None when any sample lacks a score: a mean over the samples that
    happened to score would be a partial figure passed off as a whole one."""
    if not values or any(v is None for v in values):
        return None
    return sum(values) / len(values)


def summarize(per_answer: dict[str, list[float | None]], contexts: dict[str, list[float | None]], latencies: Sequence[float],
              new_tokens: Sequence[int], nll: Sequence[tuple[float, int]]) -> dict[str, float | None]:
    summary: dict[str, float | None] = {k: _mean(v) for k, v in contexts.items()}
    for key in ("bleu", "rouge_l", "string_similarity", "semantic_similarity"):
        summary[key] = _mean(per_answer[key])
    for key in ("faithfulness", "answer_relevancy"):
        # An answer with nothing to judge (empty, or no full sentence) is left out of a
        # judged mean, as ragas leaves it NaN; judge failures are handled by the caller.
        scored = [v for v in per_answer.get(key, []) if v is not None]
        if key in per_answer:
            summary[key] = sum(scored) / len(scored) if scored and len(scored) * 2 >= len(per_answer[key]) else None
            summary[f"{key}_scored"] = float(len(scored))
    for flag in ("toxic", "pii", "refusal", "empty"):
        summary[f"{flag}_rate"] = _mean(per_answer[flag])
    summary["latency_p50_s"] = statistics.median(latencies) if latencies else None
    summary["tokens_per_answer"] = float(np.mean(new_tokens)) if len(new_tokens) else None
    tokens = sum(count for _, count in nll)
    summary["perplexity"] = math.exp(sum(total for total, _ in nll) / tokens) if tokens else None
    summary["missing_scores"] = float(sum(v is None for key, vals in per_answer.items() if key not in ("faithfulness", "answer_relevancy") for v in vals))
    return summary
