"""The canary decision: is the new version worse live than the one it would replace?

Both sides serve the same traffic at the same time (callers are split by a hash), so any
difference in their signals is the versions', not the traffic's. Signals per side:

- failure rate: answers of 500 or more and unreachable backends, as the proxy counted them;
- guardrail rate: requests a guardrail blocked; refusal rate: answers that decline;
- negative feedback rate: ratings of 1 or 2 (of 5) among rated answers;
- latency: the service's own latency per answer.

The rule, stated in every decision:
- each rate is tested one-sided (is the canary's higher?) with Fisher's exact test, valid
  at any sample size; latency with a one-sided Mann-Whitney U test. A signal counts as a
  regression only when its p-value is below the Bonferroni-corrected alpha AND the
  difference matters: a rate up by at least `min_rate_increase`, a p95 latency at least
  `max_p95_ratio` times the serving version's.
- interim looks (Haybittle-Peto): before both sides have `min_requests`, the canary is
  rolled back only on a regression at p < `interim_alpha` (0.001), a boundary strict
  enough that looking at every sensor tick barely raises the false-rollback rate.
- the final look, once both sides have `min_requests`: any regression rolls back, none
  promotes. There is exactly one final look per canary.

A semantic-cache hit is the first answer again, so it counts only toward requests (as in
the drift report); the router's extracts and refusals count toward the refusal rate but
not latency, which they did not spend on a model. Other distribution shifts (answer length, retrieval scores)
are reported beside the decision and do not make it: a new version is expected to answer
differently, and what matters is whether it answers worse.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import stats as sps

from driftloop.evaluation.metrics import REFUSAL
from driftloop.monitoring.traffic import generated

RATE_SIGNALS = ("failure_rate", "guardrail_rate", "refusal_rate", "negative_feedback_rate")
SIGNALS = (*RATE_SIGNALS, "latency_p95")
NEGATIVE_RATING = 2


@dataclass(frozen=True)
class CanaryPolicy:
    share: float = 0.1
    min_requests: int = 200
    alpha: float = 0.05
    interim_alpha: float = 0.001
    min_rate_increase: float = 0.02
    max_p95_ratio: float = 1.5
    decide_on: tuple[str, ...] = SIGNALS

    def __post_init__(self) -> None:
        problems = []
        if not 0 < self.share < 1:
            problems.append(f"share {self.share} must be between 0 and 1 (exclusive)")
        if self.min_requests < 10:
            problems.append(f"min_requests {self.min_requests} must be at least 10")
        if not 0 < self.interim_alpha <= self.alpha < 1:
            problems.append(f"alphas must satisfy 0 < interim_alpha ({self.interim_alpha}) <= alpha ({self.alpha}) < 1")
        if self.min_rate_increase < 0 or self.max_p95_ratio < 1:
            problems.append("min_rate_increase must be >= 0 and max_p95_ratio >= 1")
        unknown = sorted(set(self.decide_on) - set(SIGNALS))
        if unknown or not self.decide_on:
            problems.append(f"decide_on names unknown signals {unknown}; known: {', '.join(SIGNALS)}")
        if problems:
            raise ValueError("canary policy: " + "; ".join(problems))

    @classmethod
    def from_dict(cls, values: dict) -> CanaryPolicy:
        known = {k: v for k, v in (values or {}).items() if k in cls.__dataclass_fields__}
        if "decide_on" in known:
            known["decide_on"] = tuple(known["decide_on"])
        return cls(**known)

    def to_dict(self) -> dict:
        return {**asdict(self), "decide_on": list(self.decide_on)}

    def rule(self) -> str:
        return (f"one-sided Fisher exact (rates) and Mann-Whitney U (latency) on {', '.join(self.decide_on)}, Bonferroni over "
                f"{len(self.decide_on)}; a regression needs p < alpha and a rate {self.min_rate_increase:+.0%} or more, or p95 "
                f"latency x{self.max_p95_ratio:g} or more; interim looks roll back at p < {self.interim_alpha:g} (Haybittle-Peto); "
                f"at {self.min_requests} requests a side, one final look at alpha {self.alpha:g}: any regression rolls back, "
                f"none promotes")


@dataclass
class Side:
    requests: int
    failures: int
    answered: int = 0
    guardrail: int = 0
    judged: int = 0
    refusals: int = 0
    rated: int = 0
    negative: int = 0
    latencies: list[float] = field(default_factory=list)

    def rates(self) -> dict[str, tuple[int, int]]:
        return {"failure_rate": (self.failures, self.requests), "guardrail_rate": (self.guardrail, self.answered),
                "refusal_rate": (self.refusals, self.judged), "negative_feedback_rate": (self.negative, self.rated)}

    def p95(self) -> float | None:
        return float(np.percentile(self.latencies, 95)) if self.latencies else None

    def summary(self) -> dict:
        out = {"requests": self.requests, "failures": self.failures, "logged": self.answered}
        out.update({name: round(hits / n, 4) if n else None for name, (hits, n) in self.rates().items()})
        out["latency_p95_s"] = round(self.p95(), 4) if self.latencies else None
        return out


def side_from(rows: list[dict], proxy: dict) -> Side:
    """One side's signals: `rows`, its served requests from the request log (feedback joined
    in), and `proxy`, the supervisor's counts for it ({"requests", "failures"})."""
    side = Side(requests=int(proxy.get("requests", 0)), failures=int(proxy.get("failures", 0)))
    for row in rows:
        side.answered += 1
        blocked = bool(row.get("guardrail"))
        side.guardrail += blocked
        if isinstance(row.get("rating"), int | float):
            side.rated += 1
            side.negative += row["rating"] <= NEGATIVE_RATING
        if blocked or row.get("status") != 200 or (row.get("cache") or {}).get("hit"):
            continue
        # The router's refusals count: a version whose router turns everyone away is worse.
        side.judged += 1
        side.refusals += bool(REFUSAL.search(row.get("answer") or ""))
        if generated(row) and row.get("latency_s") is not None:
            side.latencies.append(float(row["latency_s"]))
    return side


@dataclass
class CanaryDecision:
    verdict: str  # "promote", "rollback" or "wait"
    reason: str
    rule: str
    look: str  # "interim" or "final"
    baseline: dict
    canary: dict
    tests: dict

    def to_dict(self) -> dict:
        return asdict(self)

    def table(self) -> str:
        lines = ["| signal | serving | canary | p (one-sided) | regression |", "|---|---|---|---|---|"]
        for name, test in self.tests.items():
            lines.append(f"| {name} | {test['baseline']} | {test['canary']} | {test['p'] if test['p'] is not None else 'n/a'} | "
                         f"{'yes' if test['regression'] else 'no'} |")
        return "\n".join(lines)


def _rate_test(base: tuple[int, int], cand: tuple[int, int], alpha: float, margin: float) -> dict:
    (b_hits, b_n), (c_hits, c_n) = base, cand
    if not b_n or not c_n:
        return {"baseline": f"{b_hits}/{b_n}", "canary": f"{c_hits}/{c_n}", "p": None, "regression": False}
    p = float(sps.fisher_exact([[c_hits, c_n - c_hits], [b_hits, b_n - b_hits]], alternative="greater").pvalue)
    increase = c_hits / c_n - b_hits / b_n
    return {"baseline": f"{b_hits}/{b_n}", "canary": f"{c_hits}/{c_n}", "p": round(p, 6), "increase": round(increase, 4),
            "regression": p < alpha and increase >= margin}


def _latency_test(base: Side, cand: Side, alpha: float, ratio: float) -> dict:
    b95, c95 = base.p95(), cand.p95()
    shown = {"baseline": f"p95 {b95:.3f} s" if b95 is not None else "n/a", "canary": f"p95 {c95:.3f} s" if c95 is not None else "n/a"}
    if len(base.latencies) < 2 or len(cand.latencies) < 2:
        return {**shown, "p": None, "regression": False}
    p = float(sps.mannwhitneyu(cand.latencies, base.latencies, alternative="greater").pvalue)
    return {**shown, "p": round(p, 6), "p95_ratio": round(c95 / b95, 3) if b95 else None,
            "regression": p < alpha and c95 >= ratio * b95}


def decide(policy: CanaryPolicy, baseline: Side, canary: Side) -> CanaryDecision:
    final = baseline.requests >= policy.min_requests and canary.requests >= policy.min_requests
    alpha = (policy.alpha if final else policy.interim_alpha) / len(policy.decide_on)
    base_rates, cand_rates = baseline.rates(), canary.rates()
    tests = {}
    for name in policy.decide_on:
        if name == "latency_p95":
            tests[name] = _latency_test(baseline, canary, alpha, policy.max_p95_ratio)
        else:
            tests[name] = _rate_test(base_rates[name], cand_rates[name], alpha, policy.min_rate_increase)
    worse = [name for name, test in tests.items() if test["regression"]]
    look = "final" if final else "interim"
    if worse:
        verdict = "rollback"
        reason = f"{look} look: the canary is worse on {', '.join(worse)} (p < {alpha:.2g} each, Bonferroni over {len(policy.decide_on)})"
    elif final:
        verdict, reason = "promote", f"final look at {canary.requests} canary and {baseline.requests} serving requests: no regression"
    else:
        verdict = "wait"
        reason = (f"{canary.requests}/{policy.min_requests} canary and {baseline.requests}/{policy.min_requests} serving requests; "
                  f"no regression at the interim boundary p < {policy.interim_alpha:g}")
    return CanaryDecision(verdict, reason, policy.rule(), look, baseline.summary(), canary.summary(), tests)


def shifts(baseline_rows: list[dict], canary_rows: list[dict]) -> dict:
    """The drift report's serving columns compared between the sides (two-sided KS): reported
    beside the decision, never deciding it."""
    from driftloop.monitoring.stats import ks_test
    from driftloop.monitoring.traffic import columns

    base, cand = columns(baseline_rows), columns(canary_rows)
    out = {}
    for name in ("answer_chars", "completion_tokens", "top_retrieval_score"):
        result = ks_test(base[name], cand[name], name=name, min_samples=20)
        out[name] = result.detail
    return out


def evidence(log_root, canary: dict, until) -> tuple[Side, Side, dict]:
    """Both sides' signals from the canary's start to `until`: the request log under
    `log_root` (split by each answer's model version) and the supervisor's counts in
    `canary` (its /status entry)."""
    from datetime import datetime

    from driftloop.monitoring.traffic import join_feedback, read_window, served

    requests, feedback = read_window(log_root, datetime.fromisoformat(canary["started_at"]), until)
    rows = join_feedback(served(requests.rows), feedback.rows)
    by_version = {version: [r for r in rows if r.get("model_version") == version]
                  for version in (canary["baseline_version"], canary["model_version"])}
    base_rows, cand_rows = by_version[canary["baseline_version"]], by_version[canary["model_version"]]
    sides = canary.get("sides") or {}
    return (side_from(base_rows, sides.get("baseline", {})), side_from(cand_rows, sides.get("canary", {})),
            shifts(base_rows, cand_rows))
