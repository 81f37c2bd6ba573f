"""Two-sample drift tests, one `SignalResult` each. Plain numpy/scipy/sklearn, no Dagster.

Embedding signals (L2-normalised sentence embeddings, rows are queries):
  - `mmd_test`: unbiased MMD^2, RBF kernel with the median-heuristic bandwidth, and a
    permutation p-value. Both sides are subsampled to `max_samples` (seeded), the pooled
    kernel is computed once and every permutation is a column of one matrix product.
  - `classifier_test`: cross-validated ROC AUC of a logistic-regression domain classifier.
Univariate signals: `ks_test` (two-sample Kolmogorov-Smirnov) and `psi` (population
stability index, quantile bins of the reference). Rates: `rate_test` (two proportions).

Every test returns `drifted=None` ("not enough data") instead of a verdict when a side
has fewer than `min_samples` usable values; NaN/inf values are dropped and counted.
Every random choice comes from `numpy.random.default_rng(seed)`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import stats as sps


@dataclass
class SignalResult:
    name: str
    method: str  # "mmd", "classifier_auc", "ks", "psi", "rate_z", "rate_fisher"
    statistic: float | None
    p_value: float | None
    threshold: float  # alpha for p-value tests, the AUC or PSI cut-off otherwise
    drifted: bool | None  # None: not enough data to judge
    n_reference: int
    n_current: int
    detail: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def enough_data(self) -> bool:
        return self.drifted is not None

    def to_dict(self) -> dict:
        return plain(asdict(self))


def plain(value):
    """JSON-ready: numpy scalars to Python, NaN/inf to None."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _not_enough(name, method, threshold, n_ref, n_cur, min_samples, unit, dropped=0) -> SignalResult:
    short = min(n_ref, n_cur)
    side = "reference" if n_ref < n_cur else "current"
    detail = f"not enough data: {short} {side} {unit} < {min_samples}"
    if dropped:
        detail += f" ({dropped} non-finite dropped)"
    return SignalResult(name, method, None, None, threshold, None, n_ref, n_cur, detail)


def clean_embeddings(x) -> tuple[np.ndarray, int]:
    """Rows of finite float32 vectors, and how many rows were dropped as non-finite."""
    if x is None:
        return np.zeros((0, 0), np.float32), 0
    x = np.asarray(x)
    if x.size == 0:
        return np.zeros((0, x.shape[-1] if x.ndim == 2 else 0), np.float32), 0
    if x.ndim != 2:
        raise ValueError(f"embeddings must be a 2-D array (rows are queries), got shape {x.shape}")
    x = x.astype(np.float32, copy=False)
    finite = np.isfinite(x.sum(axis=1, dtype=np.float64))  # one value per row, no n x d mask
    if finite.all():
        return x, 0
    return x[finite], int((~finite).sum())


def _pair(ref, cur, name, method, threshold, min_samples):
    """Cleaned embeddings of both sides, or a not-enough-data result."""
    (ref, dr), (cur, dc) = clean_embeddings(ref), clean_embeddings(cur)
    if len(ref) < min_samples or len(cur) < min_samples:
        return None, None, 0, _not_enough(name, method, threshold, len(ref), len(cur), min_samples, "queries", dr + dc)
    if ref.shape[1] != cur.shape[1]:
        raise ValueError(f"embedding dimensions differ: reference {ref.shape[1]}, current {cur.shape[1]}")
    return ref, cur, dr + dc, None


def subsample(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    if len(x) <= k:
        return x
    return x[np.sort(rng.choice(len(x), size=k, replace=False))]


def rbf_kernel_matrix(z: np.ndarray, rng: np.random.Generator, median_points: int = 1000) -> tuple[np.ndarray, float]:
    """exp(-|x-y|^2 / (2 s^2)) over the rows of z in float32, s = median pairwise distance
    (over all pairs when len(z) <= median_points, else over a seeded subset of rows)."""
    sq = np.einsum("ij,ij->i", z, z)
    k = z @ z.T
    k *= -2.0
    k += sq[:, None]
    k += sq[None, :]
    np.maximum(k, 0.0, out=k)
    np.fill_diagonal(k, 0.0)
    idx = np.arange(len(z)) if len(z) <= median_points else np.sort(rng.choice(len(z), median_points, replace=False))
    sub = k[np.ix_(idx, idx)]
    med = float(np.median(sub[np.triu_indices(len(idx), 1)]))
    if med <= 0.0:  # all points identical: any bandwidth gives a constant kernel
        med = 1.0
    k *= np.float32(-1.0 / med)  # 2 s^2 = median of squared distances
    np.exp(k, out=k)
    return k, math.sqrt(med / 2.0)


def mmd2_permutations(k: np.ndarray, n: int, permutations: int, rng: np.random.Generator) -> np.ndarray:
    """Unbiased MMD^2 of the split (first n rows | the rest) followed by `permutations`
    random relabellings, all from one kernel matrix `k` (modified in place).

    Shifting every off-diagonal entry by a constant leaves the unbiased MMD^2 unchanged,
    so k is centred (float32 sums stay accurate) and its diagonal zeroed (the unbiased
    estimator excludes it); then with a the 0/1 indicator of "reference" and r = K 1:
    a'Ka, a'Kb = a'r - a'Ka and b'Kb = 1'K1 - 2a'r + a'Ka, for all labellings at once.
    """
    big_n = len(k)
    m = big_n - n
    np.fill_diagonal(k, 0.0)
    k -= np.float32(k.sum(dtype=np.float64) / (big_n * (big_n - 1)))
    np.fill_diagonal(k, 0.0)
    labels = np.zeros((permutations + 1, big_n), np.float32)
    labels[:, :n] = 1.0
    labels[1:] = rng.permuted(labels[1:], axis=1)
    a = labels.T  # big_n x (P + 1), column 0 is the observed split
    r = k.sum(axis=1, dtype=np.float64)
    total = r.sum()
    ka = k @ a
    s_xx = (a * ka).sum(axis=0, dtype=np.float64)
    a_r = a.astype(np.float64).T @ r
    s_xy = a_r - s_xx
    s_yy = total - 2.0 * a_r + s_xx
    return s_xx / (n * (n - 1)) + s_yy / (m * (m - 1)) - 2.0 * s_xy / (n * m)


def mmd_test(
    ref, cur, *, permutations: int = 200, max_samples: int = 2000, seed: int = 0, alpha: float = 0.01,
    min_samples: int = 50, name: str = "query_embeddings",
) -> SignalResult:
    """Unbiased MMD^2 (RBF, median heuristic) with a permutation p-value; drifted when p < alpha.
    The smallest p-value is 1 / (permutations + 1), so permutations must exceed 1 / alpha."""
    if 1.0 / (permutations + 1) >= alpha:
        raise ValueError(f"{permutations} permutations cannot give p < {alpha}; use at least {math.ceil(1 / alpha)}")
    ref, cur, dropped, short = _pair(ref, cur, name, "mmd", alpha, max(min_samples, 2))
    if short:
        return short
    rng = np.random.default_rng(seed)
    xs, ys = subsample(ref, max_samples, rng), subsample(cur, max_samples, rng)
    k, sigma = rbf_kernel_matrix(np.vstack([xs, ys]), rng)
    values = mmd2_permutations(k, len(xs), permutations, rng)
    observed = float(values[0])
    # values[0] equals itself, hence the +1 of the usual (1 + #{perm >= obs}) / (1 + P).
    p = float((values >= observed - 1e-12).sum() / (permutations + 1))
    drifted = p < alpha
    detail = (f"MMD^2 {observed:.5f}, p {p:.3f} ({permutations} permutations, {len(xs)} vs {len(ys)} queries"
              f"{' subsampled' if len(xs) < len(ref) or len(ys) < len(cur) else ''}); "
              f"{'drift' if drifted else 'no drift'} at alpha {alpha}")
    if dropped:
        detail += f"; {dropped} non-finite rows dropped"
    extra = {"bandwidth": sigma, "permutations": permutations, "samples_used": [len(xs), len(ys)],
             "null_mean": float(values[1:].mean()), "null_p99": float(np.quantile(values[1:], 0.99))}
    return SignalResult(name, "mmd", observed, p, alpha, drifted, len(ref), len(cur), detail, extra)


def classifier_test(
    ref, cur, *, max_samples: int = 5000, folds: int = 3, threshold: float = 0.55, alpha: float = 0.01,
    min_samples: int = 50, seed: int = 0, C: float = 0.1, name: str = "query_embeddings",
) -> SignalResult:
    """Domain classifier: logistic regression (standardised features) told apart reference
    from current, balanced by subsampling both sides to the same size (at most max_samples),
    scored by the mean ROC AUC over stratified folds. Drifted when AUC > threshold and the
    one-sided p-value < alpha: the threshold is the effect size that matters, the p-value
    stops small samples from reaching it by chance.

    p-value: given its training folds, a fold's test AUC is a Mann-Whitney statistic, so
    z_f = (AUC_f - 0.5) / sd_f is about N(0, 1) with no drift. The folds share training
    data, so their z are correlated and the mean z has variance <= 1: referring it to
    N(0, 1) is conservative (the pooled-sample Mann-Whitney variance instead is too small,
    about 1.5x too narrow in sd, and gave 3-10% false positives at alpha 0.01). The bound
    costs up to sqrt(folds) in z, hence 3 folds by default: on real question embeddings
    with a 20% new topic, 3 folds flagged 5 of 8 samples, 5 folds 2 of 8, 2 folds 3 of 8.

    If a share s of the current queries is new ground (a topic the reference lacks) and the
    rest is like the reference, the best possible AUC is 0.5 + s/2: the default 0.55 means
    "about a tenth of the traffic or more is recognisably new" (0.65 would need 30%)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    ref, cur, dropped, short = _pair(ref, cur, name, "classifier_auc", threshold, max(min_samples, 2 * folds))
    if short:
        return short
    rng = np.random.default_rng(seed)
    per_side = min(len(ref), len(cur), max_samples)
    xs, ys = subsample(ref, per_side, rng), subsample(cur, per_side, rng)
    x = np.vstack([xs, ys])
    y = np.r_[np.zeros(per_side), np.ones(per_side)]
    aucs, zs = [], []
    for train, test in StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y):
        model = make_pipeline(StandardScaler(), LogisticRegression(C=C, solver="liblinear", random_state=seed))
        model.fit(x[train], y[train])
        aucs.append(roc_auc_score(y[test], model.decision_function(x[test])))
        n1 = int(y[test].sum())
        n0 = len(test) - n1
        zs.append((aucs[-1] - 0.5) / math.sqrt((n0 + n1 + 1) / (12.0 * n0 * n1)))
    auc = float(np.mean(aucs))
    p = float(sps.norm.sf(np.mean(zs)))
    drifted = auc > threshold and p < alpha
    detail = (f"ROC AUC {auc:.3f} ({folds}-fold, {per_side} per side), p {p:.2g}; "
              f"{'drift' if drifted else 'no drift'} at AUC > {threshold}")
    if dropped:
        detail += f"; {dropped} non-finite rows dropped"
    extra = {"fold_aucs": [float(a) for a in aucs], "samples_per_side": per_side, "alpha": alpha}
    return SignalResult(name, "classifier_auc", auc, p, threshold, drifted, len(ref), len(cur), detail, extra)


def clean_values(x) -> tuple[np.ndarray, int]:
    if x is None:
        return np.zeros(0), 0
    x = np.asarray(x, dtype=np.float64).ravel()
    finite = np.isfinite(x)
    return x[finite], int((~finite).sum())


def _univariate(ref, cur, name, method, threshold, min_samples):
    (ref, dr), (cur, dc) = clean_values(ref), clean_values(cur)
    if len(ref) < min_samples or len(cur) < min_samples:
        return None, None, "", _not_enough(name, method, threshold, len(ref), len(cur), min_samples, "values", dr + dc)
    note = f"; {dr} reference and {dc} current non-finite values dropped" if dr + dc else ""
    return ref, cur, note, None


def ks_test(ref, cur, *, alpha: float = 0.01, min_statistic: float = 0.1, min_samples: int = 30, name: str = "value") -> SignalResult:
    """Two-sample KS; drifted when p < alpha and the KS distance > min_statistic (with 100k
    values any difference is significant; the distance is the size that matters)."""
    ref, cur, note, short = _univariate(ref, cur, name, "ks", alpha, min_samples)
    if short:
        return short
    with warnings.catch_warnings():  # ties (ratings) can make the exact method fall back to asymp
        warnings.filterwarnings("ignore", "ks_2samp: Exact calculation unsuccessful", RuntimeWarning)
        res = sps.ks_2samp(ref, cur)
    stat, p = float(res.statistic), float(res.pvalue)
    drifted = p < alpha and stat > min_statistic
    detail = (f"KS {stat:.3f}, p {p:.2g}; median {np.median(ref):.4g} -> {np.median(cur):.4g}; "
              f"{'drift' if drifted else 'no drift'} at alpha {alpha}, KS > {min_statistic}{note}")
    return SignalResult(name, "ks", stat, p, alpha, drifted, len(ref), len(cur), detail, {"min_statistic": min_statistic})


def psi(ref, cur, *, bins: int = 10, threshold: float = 0.2, alpha: float = 0.01, min_samples: int = 30,
        eps: float = 1e-4, name: str = "value") -> SignalResult:
    """Population stability index over quantile bins of the reference (ties merged, so
    discrete values such as ratings get one bin each). Drifted when PSI > threshold and the
    p-value of the binned counts < alpha: raw PSI is noisy in small samples (expected value
    about (bins - 1) * (1/n_ref + 1/n_cur) with no drift, 0.6 at 30 a side and 10 bins)."""
    ref, cur, note, short = _univariate(ref, cur, name, "psi", threshold, min_samples)
    if short:
        return short
    edges = np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1)[1:-1]))
    if len(edges) == 1:  # (near-)constant reference: below, at, above the value
        edges = np.array([edges[0], np.nextafter(edges[0], np.inf)])
    counts = np.stack([np.bincount(np.searchsorted(edges, v, side="right"), minlength=len(edges) + 1) for v in (ref, cur)])
    r, c = np.maximum(counts[0] / len(ref), eps), np.maximum(counts[1] / len(cur), eps)
    value = float(np.sum((c - r) * np.log(c / r)))
    counts = counts[:, counts.sum(axis=0) > 0]
    p = float(sps.chi2_contingency(counts, correction=False).pvalue) if counts.shape[1] > 1 else 1.0
    drifted = value > threshold and p < alpha
    detail = (f"PSI {value:.3f} over {len(r)} bins, p {p:.2g}; "
              f"{'drift' if drifted else 'no drift'} at PSI > {threshold}{note}")
    return SignalResult(name, "psi", value, p, threshold, drifted, len(ref), len(cur), detail,
                        {"edges": [float(e) for e in edges], "alpha": alpha})


def rate_test(ref_hits: int, ref_n: int, cur_hits: int, cur_n: int, *, alpha: float = 0.01, min_samples: int = 30,
              name: str = "rate") -> SignalResult:
    """Two-sided two-proportion z-test (pooled); Fisher's exact test instead when an expected
    cell count is below 5. The statistic is the change in rate (current - reference)."""
    counts = [ref_hits, ref_n, cur_hits, cur_n]
    if any(int(v) != v or v < 0 for v in counts) or ref_hits > ref_n or cur_hits > cur_n:
        raise ValueError(f"rate counts must be integers with 0 <= hits <= n, got {counts}")
    ref_hits, ref_n, cur_hits, cur_n = map(int, counts)
    if ref_n < min_samples or cur_n < min_samples:
        return _not_enough(name, "rate_z", alpha, ref_n, cur_n, min_samples, "events")
    p1, p2 = ref_hits / ref_n, cur_hits / cur_n
    pooled = (ref_hits + cur_hits) / (ref_n + cur_n)
    se = math.sqrt(pooled * (1 - pooled) * (1 / ref_n + 1 / cur_n))
    z = (p2 - p1) / se if se > 0 else 0.0
    if min(ref_n, cur_n) * min(pooled, 1 - pooled) < 5:
        method = "rate_fisher"
        p = float(sps.fisher_exact([[ref_hits, ref_n - ref_hits], [cur_hits, cur_n - cur_hits]]).pvalue)
    else:
        method = "rate_z"
        p = float(2 * sps.norm.sf(abs(z)))
    drifted = p < alpha
    detail = (f"rate {100 * p1:.2f}% -> {100 * p2:.2f}% ({ref_hits}/{ref_n} vs {cur_hits}/{cur_n}), p {p:.2g}; "
              f"{'drift' if drifted else 'no drift'} at alpha {alpha}")
    return SignalResult(name, method, p2 - p1, p, alpha, drifted, ref_n, cur_n, detail,
                        {"z": z, "reference_rate": p1, "current_rate": p2})
