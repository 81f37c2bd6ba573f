"""The promotion gate: absolute floors, and no regression against the champion shown
with paired statistics (driftloop.evaluation.stats). A metric the gate needs but the
report lacks fails the gate; evidence too thin to conclude is "inconclusive", which does
not promote either."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from driftloop.evaluation.judge import JUDGED
from driftloop.evaluation.metrics import HIGHER_IS_BETTER
from driftloop.evaluation.stats import ALPHA, POWER, RESAMPLES, Evidence, paired_difference, perplexity_ratio

# The power analysis (docs/gate-power.md): on the default corpus 13 paired questions make
# the minimum detectable regression equal the 0.05 tolerance; rounded up to the batch.
DEFAULT_MIN_QUESTIONS = 16
# No-regression rules the gate can pair per question: per-answer scores, and perplexity
# from each question's NLL. Latency and length are shared per batch, not per question.
PAIRED_METRICS = ("semantic_similarity", "rouge_l", "bleu", "string_similarity", "faithfulness", "answer_relevancy", "perplexity")


@dataclass(frozen=True)
class GateRules:
    # Floors (ceilings for lower-is-better metrics) the challenger must meet on its own.
    floors: dict[str, float] = field(default_factory=lambda: {"semantic_similarity": 0.35, "toxic_rate": 0.02, "pii_rate": 0.05, "empty_rate": 0.2})
    # Metrics that must not get worse than the champion's by more than `tolerance`
    # (absolute, for scores in [0, 1]) or `relative_tolerance` (perplexity), shown by a
    # one-sided bound at level `alpha` on paired per-question differences.
    no_regression: tuple[str, ...] = ("semantic_similarity", "rouge_l", "perplexity")
    tolerance: float = 0.02
    relative_tolerance: float = 0.10
    min_questions: int = DEFAULT_MIN_QUESTIONS
    alpha: float = ALPHA
    power: float = POWER
    resamples: int = RESAMPLES
    seed: int = 0

    @classmethod
    def from_bounds(cls, *, min_semantic_similarity: float, max_toxic_rate: float, max_pii_rate: float, max_empty_rate: float,
                    min_faithfulness: float, min_answer_relevancy: float, no_regression: Sequence[str], tolerance: float,
                    relative_tolerance: float, min_questions: int, seed: int) -> GateRules:
        """Rules from the flat bounds a run configures. A judged floor of 0 leaves that
        metric out of the gate: with the judge off it would otherwise fail as missing."""
        floors = {"semantic_similarity": min_semantic_similarity, "toxic_rate": max_toxic_rate, "pii_rate": max_pii_rate,
                  "empty_rate": max_empty_rate}
        floors.update({metric: bound for metric, bound in (("faithfulness", min_faithfulness), ("answer_relevancy", min_answer_relevancy))
                       if bound > 0})
        return cls(floors=floors, no_regression=tuple(no_regression), tolerance=tolerance, relative_tolerance=relative_tolerance,
                   min_questions=min_questions, seed=seed)


def eval_split_problem(qa_rows, min_questions: int) -> str | None:
    """Why the eval split cannot give the gate enough paired questions, or None."""
    n = sum(r.get("split") == "eval" for r in qa_rows)
    if n >= min_questions:
        return None
    return (f"the eval split holds {n} questions, fewer than the promotion gate's minimum of {min_questions}: every no-regression "
            f"rule would be inconclusive and nothing could be promoted; add documents, raise data/qa_pairs eval_fraction, or lower "
            f"min_questions (which makes the gate blind to smaller regressions, see docs/gate-power.md)")


def gate_view(summary: dict | None, judgement: dict | None) -> dict | None:
    """The metrics as the gate may use them: a judged metric from a judge that is not
    trusted for it, or that could not score, counts as missing."""
    if summary is None or judgement is None:
        return summary
    view = dict(summary)
    for metric, trusted in judgement["trusted"].items():
        if not (trusted and judgement.get("available", True)):
            view[metric] = None
    return view


def _present(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def paired_evidence(questions: dict, challenger: str, reference: str, rules: GateRules) -> list[Evidence]:
    """One Evidence per no-regression metric from the per-question scores of two models;
    None when a question lacks the metric for either model."""
    both = [r["scores"] for r in questions.values() if challenger in r["scores"] and reference in r["scores"]]
    out = []
    for metric in rules.no_regression:
        keys = ("nll", "nll_tokens") if metric == "perplexity" else (metric,)
        rows = both
        if metric in JUDGED:
            # An answer with nothing to judge has no score (as in the judged mean); pair the rest.
            rows = [row for row in both if row[challenger].get(metric) is not None and row[reference].get(metric) is not None]
        if not rows or any(row[m].get(key) is None for row in rows for m in (challenger, reference) for key in keys):
            out.append(None)
            continue
        common = {"min_questions": rules.min_questions, "alpha": rules.alpha, "power": rules.power, "resamples": rules.resamples, "seed": rules.seed}
        if metric == "perplexity":
            pairs = {m: [(row[m]["nll"], int(row[m]["nll_tokens"])) for row in rows] for m in (challenger, reference)}
            out.append(perplexity_ratio(pairs[challenger], pairs[reference], rules.relative_tolerance, **common))
        else:
            out.append(paired_difference(metric, [row[challenger][metric] for row in rows], [row[reference][metric] for row in rows],
                                         HIGHER_IS_BETTER.get(metric, True), rules.tolerance, **common))
    return out


def _describe(e: Evidence, reference: str, alpha: float) -> str:
    if e.estimate is None:
        return f"{e.metric} inconclusive against {reference}: {e.reason}"
    level = round(100 * (1 - 2 * alpha))
    if e.scale == "ratio":
        figures = f"perplexity ratio {e.estimate:.4f} ({level}% interval {e.low:.4f} to {e.high:.4f}, limit {e.limit:.4f}, n={e.n})"
    else:
        figures = f"mean paired difference {e.estimate:+.4f} ({level}% interval {e.low:+.4f} to {e.high:+.4f}, limit {e.limit:+.4f}, n={e.n})"
    word = {"failed": "regresses against", "inconclusive": "inconclusive against", "passed": "holds against"}[e.verdict]
    return f"{e.metric} {word} {reference}: {figures}; {e.reason}"


def decide(challenger: dict, champion: dict | None, rules: GateRules, questions: dict | None = None,
           labels: tuple[str, str] = ("challenger", "champion")) -> dict:
    """{"passed", "verdict", "failures", "inconclusive", "checks", "evidence"}; every rule
    appears in checks. `challenger` and `champion` are summaries as gate_view gives them;
    `questions` is the report's per-question table and `labels` the two models' names in it."""
    checks, failures, unsure, evidence = [], [], [], []
    for metric, bound in rules.floors.items():
        value, higher = challenger.get(metric), HIGHER_IS_BETTER.get(metric, True)
        ok = _present(value) and (value >= bound if higher else value <= bound)
        checks.append({"rule": "floor" if higher else "ceiling", "metric": metric, "value": value, "bound": bound, "ok": ok})
        if not ok:
            failures.append(f"{metric} {'missing' if not _present(value) else f'{value:.4g}'} {'below floor' if higher else 'above ceiling'} {bound}")
    if champion is not None and rules.no_regression:
        reference = labels[1]
        found = paired_evidence(questions or {}, labels[0], reference, rules)
        for metric, e in zip(rules.no_regression, found, strict=True):
            value, ref_value = challenger.get(metric), champion.get(metric)
            if not _present(ref_value):
                # Without the reference's score there is nothing to show the challenger is no worse.
                checks.append({"rule": "no_regression", "metric": metric, "value": value, "champion": ref_value, "ok": False})
                failures.append(f"{metric} missing for {reference}: no regression cannot be shown")
                continue
            if not _present(value) or e is None:
                checks.append({"rule": "no_regression", "metric": metric, "value": value, "champion": ref_value, "ok": False})
                failures.append(f"{metric} missing: no paired per-question scores against {reference}")
                continue
            evidence.append(e.as_dict())
            checks.append({"rule": "no_regression", "metric": metric, "value": value, "champion": ref_value, "bound": e.limit,
                           "verdict": e.verdict, "ok": e.verdict == "passed"})
            if e.verdict == "failed":
                failures.append(_describe(e, reference, rules.alpha))
            elif e.verdict == "inconclusive":
                unsure.append(_describe(e, reference, rules.alpha))
    verdict = "FAILED" if failures else "INCONCLUSIVE" if unsure else "PASSED"
    return {"passed": verdict == "PASSED", "verdict": verdict, "failures": failures, "inconclusive": unsure, "checks": checks,
            "evidence": evidence, "alpha": rules.alpha, "power": rules.power, "min_questions": rules.min_questions}
