"""Paired evidence for the promotion gate: every model answers the same questions, so a
comparison is made on per-question differences, not on two independent means.

For each metric the gate computes a seeded percentile bootstrap (scipy) of the paired
statistic, and applies a non-inferiority rule at one-sided level `alpha` (the interval
reported is the two-sided 1 - 2*alpha interval, whose ends are the one-sided bounds):

- passed: the worse-side bound is within the tolerance (non-inferiority shown);
- failed: the whole interval lies beyond the tolerance (a clear regression);
- inconclusive: the interval straddles the tolerance, or n is below `min_questions`.

Scores in [0, 1] are compared as the mean of (challenger - reference), signed so that a
positive difference is an improvement. Perplexity is compared as the ratio of the two
corpus perplexities, bootstrapped on the log scale by resampling questions (each with its
summed NLL and token count), so the tolerance stays relative.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from statistics import NormalDist

import numpy as np

ALPHA = 0.05
POWER = 0.80
RESAMPLES = 4000


def z_sum(alpha: float = ALPHA, power: float = POWER) -> float:
    """z_{1-alpha} + z_{power}: the one-sided test's critical value plus the power margin."""
    return NormalDist().inv_cdf(1 - alpha) + NormalDist().inv_cdf(power)


def questions_needed(sd: float, tolerance: float, alpha: float = ALPHA, power: float = POWER) -> int:
    """Questions at which the minimum detectable regression equals `tolerance`: an equal
    model then shows non-inferiority with probability `power`, given the SD of one
    question's paired difference."""
    if tolerance <= 0:
        raise ValueError("tolerance must be positive")
    return max(2, math.ceil((z_sum(alpha, power) * sd / tolerance) ** 2))


def log_ratio_sd(challenger: Sequence[tuple[float, int]], reference: Sequence[tuple[float, int]]) -> float:
    """The per-question SD of the log perplexity ratio, by linearising the ratio estimator
    sum(nll_c - nll_r) / sum(tokens): its standard error is this over sqrt(n)."""
    nll_c, tok = (np.asarray(col, dtype=float) for col in zip(*challenger, strict=True))
    nll_r = np.asarray([total for total, _ in reference], dtype=float)
    log_ratio = (nll_c - nll_r).sum() / tok.sum()
    return float(((nll_c - nll_r) - log_ratio * tok).std(ddof=1) / tok.mean())


@dataclass(frozen=True)
class Evidence:
    metric: str
    n: int
    scale: str  # "difference" (challenger - reference, improvement positive) or "ratio" (challenger / reference)
    estimate: float | None
    low: float | None
    high: float | None
    limit: float  # the tolerance on the metric's own scale: -tolerance, or 1 + relative tolerance
    mde: float | None  # smallest regression detectable at this n (same units as the tolerance)
    verdict: str  # passed | failed | inconclusive
    reason: str

    def as_dict(self) -> dict:
        return asdict(self)


def _interval(data: tuple[np.ndarray, ...], statistic, alpha: float, resamples: int, seed: int) -> tuple[float, float]:
    """The percentile bootstrap interval over questions."""
    from scipy.stats import bootstrap

    result = bootstrap(data, statistic, paired=True, vectorized=True, axis=-1, n_resamples=resamples, method="percentile",
                       confidence_level=1 - 2 * alpha, rng=np.random.default_rng(seed))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def _verdict(worst: float, best: float, limit: float, beyond) -> tuple[str, str]:
    if not beyond(worst, limit):
        return "passed", "the worse-side bound is within the tolerance"
    if beyond(best, limit):
        return "failed", "the whole interval is beyond the tolerance"
    return "inconclusive", "the interval straddles the tolerance"


def _too_few(metric: str, n: int, min_questions: int, scale: str, limit: float) -> Evidence:
    return Evidence(metric, n, scale, None, None, None, limit, None, "inconclusive",
                    f"{n} paired questions, fewer than the gate's minimum of {min_questions}")


def paired_difference(metric: str, challenger: Sequence[float], reference: Sequence[float], higher_is_better: bool, tolerance: float,
                      min_questions: int, alpha: float = ALPHA, power: float = POWER, resamples: int = RESAMPLES, seed: int = 0) -> Evidence:
    sign = 1.0 if higher_is_better else -1.0
    diffs = sign * (np.asarray(challenger, dtype=float) - np.asarray(reference, dtype=float))
    n = len(diffs)
    if n < max(2, min_questions):
        return _too_few(metric, n, min_questions, "difference", -tolerance)
    low, high = _interval((diffs,), lambda d, axis: d.mean(axis=axis), alpha, resamples, seed)
    verdict, reason = _verdict(low, high, -tolerance, lambda value, limit: value < limit)
    mde = z_sum(alpha, power) * float(diffs.std(ddof=1)) / math.sqrt(n)
    return Evidence(metric, n, "difference", float(diffs.mean()), low, high, -tolerance, mde, verdict, reason)


def perplexity_ratio(challenger: Sequence[tuple[float, int]], reference: Sequence[tuple[float, int]], relative_tolerance: float,
                     min_questions: int, alpha: float = ALPHA, power: float = POWER, resamples: int = RESAMPLES, seed: int = 0) -> Evidence:
    """Ratio of corpus perplexities (challenger / reference; above 1 is worse) from each
    question's (summed NLL, tokens); the MDE is relative (0.05: a 5 % worse perplexity)."""
    limit = 1.0 + relative_tolerance
    n = len(challenger)
    if n < max(2, min_questions):
        return _too_few("perplexity", n, min_questions, "ratio", limit)
    nll_c, tok_c = (np.asarray(col, dtype=float) for col in zip(*challenger, strict=True))
    nll_r, tok_r = (np.asarray(col, dtype=float) for col in zip(*reference, strict=True))

    def log_ratio(a, b, c, d, axis):
        return a.sum(axis=axis) / b.sum(axis=axis) - c.sum(axis=axis) / d.sum(axis=axis)

    low, high = _interval((nll_c, tok_c, nll_r, tok_r), log_ratio, alpha, resamples, seed)
    estimate = float(log_ratio(nll_c, tok_c, nll_r, tok_r, axis=-1))
    verdict, reason = _verdict(math.exp(high), math.exp(low), limit, lambda value, bound: value > bound)
    mde = math.exp(z_sum(alpha, power) * log_ratio_sd(challenger, reference) / math.sqrt(n)) - 1
    return Evidence("perplexity", n, "ratio", math.exp(estimate), math.exp(low), math.exp(high), limit, mde, verdict, reason)
