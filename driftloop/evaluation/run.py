"""One evaluation: the same questions, the same retrieved contexts, every model side by
side (base without adapter, champion, challenger), and optionally a second prompt
template on the challenger (A/B)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

from driftloop.evaluation.cache import AnswerCache, CachedAnswer, answer_key
from driftloop.evaluation.generate import BASE, Answer, Answerer, retrieve
from driftloop.evaluation.judge import JUDGED, JudgeSample, calibrate, trust_statement
from driftloop.evaluation.metrics import EvalItem, answer_scores, context_scores, summarize
from driftloop.prompts import PromptTemplate


def _fmt(value: float | None) -> str:
    return "missing" if value is None else f"{value:.3f}"


def _answer_all(answerer: Answerer, adapter: str, items: Sequence[EvalItem], prompts: list[str], keys: list[str] | None,
                cache: AnswerCache | None, max_new_tokens: int, batch_size: int) -> tuple[list[Answer], list[tuple[float, int]], int]:
    """Answers and reference NLLs for every item, generating only those the cache lacks;
    returns how many were reused."""
    found = [cache.get(key) for key in keys] if cache is not None else [None] * len(items)
    todo = [n for n, hit in enumerate(found) if hit is None]
    if todo:
        fresh = answerer.answer(adapter, [prompts[n] for n in todo], [items[n].question_id for n in todo], max_new_tokens, batch_size)
        nlls = answerer.answer_nll(adapter, [prompts[n] for n in todo], [items[n].reference for n in todo])
        for n, answer, (nll, tokens) in zip(todo, fresh, nlls, strict=True):
            found[n] = CachedAnswer(answer.answer, answer.latency_s, answer.new_tokens, nll, tokens)
            if cache is not None:
                cache.put(keys[n], found[n])
    answers = [Answer(i.question_id, hit.answer, hit.latency_s, hit.new_tokens) for i, hit in zip(items, found, strict=True)]
    return answers, [(hit.nll, hit.nll_tokens) for hit in found], len(items) - len(todo)


def evaluate_models(
    answerer: Answerer,
    index,
    embedder,
    items: Sequence[EvalItem],
    models: dict[str, Path | None],
    prompt: PromptTemplate,
    k: int = 3,
    max_new_tokens: int = 96,
    batch_size: int = 8,
    prompt_b: PromptTemplate | None = None,
    ab_model: str = "challenger",
    log: Callable[[str], None] = print,
    judge=None,
    min_agreement: float = 0.75,
    control_pairs: int = 8,
    agreement: dict | None = None,
    cache: AnswerCache | None = None,
    identities: dict[str, str] | None = None,
) -> dict:
    """`models` maps a display name to an adapter folder, or None for the base model.
    With a judge, faithfulness and answer relevancy are scored too, and the judge is
    calibrated first (see driftloop.evaluation.judge); `agreement`, its agreement with a
    hand-labelled set (driftloop.evaluation.agreement), then decides its trust. With a cache, `identities` names
    each model by the versions of its weights (base hash, adapter version), and answers
    already generated for the same model, index, prompt, question and settings are reused."""
    if cache is not None and set(models) - set(identities or {}):
        raise ValueError(f"an answer cache needs an identity for every model; missing: {sorted(set(models) - set(identities or {}))}")
    started = time.perf_counter()
    judgement = None
    if judge is not None:
        t0 = time.perf_counter()
        calibration = calibrate(judge, items, control_pairs)
        judgement = trust_statement(judge.name, calibration, min_agreement, agreement)
        scored = sum(calibration.get("scored_pairs", {}).values()) + sum((agreement or {}).get(m, {}).get("n", 0) for m in JUDGED)
        judgement["available"] = scored > 0
        if not judgement["available"]:
            reason = "; ".join(calibration.get("errors") or (agreement or {}).get("errors") or []) or calibration.get(
                "note", "no control pair could be scored")
            judgement["text"] = (f"PARTIAL REPORT: judge `{judge.name}` could not score ({reason}); faithfulness and answer relevancy are "
                                 f"missing for every model and count as missing for the gate.")
        log(f"judge calibrated in {time.perf_counter() - t0:.0f}s: {judgement['text']}")
    for name, path in models.items():
        if path is not None and name not in answerer.adapters:
            answerer.add_adapter(name, path)
    retrieved = retrieve(index, embedder, [i.question for i in items], k)
    contexts = [[c["text"] for c in rows] for rows in retrieved]
    context_metrics = context_scores(items, contexts)
    variants = [(name, name, prompt) for name in models]
    if prompt_b is not None and ab_model in models:
        variants.append((f"{ab_model}@{prompt_b.version}", ab_model, prompt_b))
    reference_vectors = embedder.encode([i.reference for i in items])
    per_question = {
        item.question_id: {"question": item.question, "reference": item.reference, "contexts": ctx, "answers": {}, "scores": {},
                           "context_precision": context_metrics["context_precision"][n], "context_recall": context_metrics["context_recall"][n]}
        for n, (item, ctx) in enumerate(zip(items, contexts, strict=True))
    }
    per_model = {}
    settings = {"max_new_tokens": max_new_tokens, "k": k, "precision": answerer.precision, "device": str(answerer.device)}
    for label, name, template in variants:
        t0 = time.perf_counter()
        adapter = BASE if models[name] is None else name
        prompts = [answerer.prompt_text(template, i.question, c) for i, c in zip(items, contexts, strict=True)]
        keys = None if cache is None else [answer_key(identities[name], index.version, template.version, i.question_id, p, i.reference, settings)
                                           for i, p in zip(items, prompts, strict=True)]
        answers, nll, reused = _answer_all(answerer, adapter, items, prompts, keys, cache, max_new_tokens, batch_size)
        scores = answer_scores(items, [a.answer for a in answers], embedder, reference_vectors)
        scores["nll"] = [float(total) for total, _ in nll]
        scores["nll_tokens"] = [float(count) for _, count in nll]
        judge_errors: list[str] = []
        if judgement is not None:
            if judgement["available"]:
                judged = judge.score([JudgeSample(i.question, a.answer, tuple(c)) for i, a, c in zip(items, answers, contexts, strict=True)])
                scores.update(judged.as_dict())
                judge_errors = judged.errors
            else:
                scores.update({metric: [None] * len(items) for metric in JUDGED})
        summary = summarize(scores, context_metrics, [a.latency_s for a in answers], [a.new_tokens for a in answers], nll)
        if judgement is not None:
            summary["judge_errors"] = float(len(judge_errors))
            if judge_errors:
                # A mean over the answers the judge happened to score would pass a partial
                # figure off as a whole one.
                summary.update({metric: None for metric in JUDGED})
                log(f"{label}: judge failed on {len(judge_errors)} scores, e.g. {judge_errors[0]}")
        summary["prompt_version"] = template.version
        summary["answers_reused"], summary["answers_generated"] = float(reused), float(len(items) - reused)
        per_model[label] = summary
        for n, (item, answer) in enumerate(zip(items, answers, strict=True)):
            row = per_question[item.question_id]
            row["answers"][label] = answer.answer
            row["scores"][label] = {key: values[n] for key, values in scores.items()}
        log(f"{label}: {len(items)} answers ({reused} reused) in {time.perf_counter() - t0:.0f}s, semantic similarity {_fmt(summary['semantic_similarity'])}, "
            f"ROUGE-L {_fmt(summary['rouge_l'])}, perplexity {_fmt(summary['perplexity'])}")
    return {"models": per_model, "questions": per_question, "n_questions": len(items), "k": k,
            "prompt_version": prompt.version, "prompt_b_version": prompt_b.version if prompt_b else None, "judge": judgement,
            "seconds": time.perf_counter() - started}
