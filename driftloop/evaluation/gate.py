"""The promotion gate: absolute floors, and no regression beyond tolerance against the
champion. A metric the gate needs but the report lacks fails the gate."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from driftloop.evaluation.metrics import HIGHER_IS_BETTER


@dataclass(frozen=True)
class GateRules:
    # Floors (ceilings for lower-is-better metrics) the challenger must meet on its own.
    floors: dict[str, float] = field(default_factory=lambda: {"semantic_similarity": 0.35, "toxic_rate": 0.02, "pii_rate": 0.05, "empty_rate": 0.2})
    # Metrics that must not get worse than the champion's by more than `tolerance`
    # (absolute, for scores in [0, 1]) or `relative_tolerance` (for perplexity and latency).
    no_regression: tuple[str, ...] = ("semantic_similarity", "rouge_l", "perplexity")
    tolerance: float = 0.02
    relative_tolerance: float = 0.10
    relative_metrics: tuple[str, ...] = ("perplexity", "latency_p50_s", "tokens_per_answer")


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


def decide(challenger: dict, champion: dict | None, rules: GateRules) -> dict:
    """{"passed", "failures": [..], "checks": [..]}; every rule appears in checks."""
    checks, failures = [], []
    for metric, bound in rules.floors.items():
        value, higher = challenger.get(metric), HIGHER_IS_BETTER.get(metric, True)
        ok = _present(value) and (value >= bound if higher else value <= bound)
        checks.append({"rule": "floor" if higher else "ceiling", "metric": metric, "value": value, "bound": bound, "ok": ok})
        if not ok:
            failures.append(f"{metric} {'missing' if not _present(value) else f'{value:.4g}'} {'below floor' if higher else 'above ceiling'} {bound}")
    if champion is not None:
        for metric in rules.no_regression:
            value, reference, higher = challenger.get(metric), champion.get(metric), HIGHER_IS_BETTER.get(metric, True)
            if not _present(reference):
                checks.append({"rule": "no_regression", "metric": metric, "value": value, "champion": reference, "ok": True,
                               "note": "champion has no value; rule skipped"})
                continue
            if metric in rules.relative_metrics:
                bound = reference * (1 - rules.relative_tolerance) if higher else reference * (1 + rules.relative_tolerance)
            else:
                bound = reference - rules.tolerance if higher else reference + rules.tolerance
            ok = _present(value) and (value >= bound if higher else value <= bound)
            checks.append({"rule": "no_regression", "metric": metric, "value": value, "champion": reference, "bound": bound, "ok": ok})
            if not ok:
                failures.append(f"{metric} {'missing' if not _present(value) else f'{value:.4g}'} regresses against champion {reference:.4g} "
                                f"(limit {bound:.4g})")
    return {"passed": not failures, "failures": failures, "checks": checks}
