"""The drift report: live queries against the champion's reference queries.

`drift_report` runs every signal of `driftloop.monitoring.stats` and decides one thing,
whether the query distribution drifted (`DriftReport.drifted`), by `DriftConfig.policy`:

  - "both" (default): MMD permutation test AND domain classifier agree. Each test alone
    runs at its own false-positive rate; requiring both keeps a retrain from firing on one
    test's fluke, and a real topic shift moves both (bench/drift.py measures the rates).
  - "either", "mmd", "classifier": more sensitive, or one method only.

Univariate signals (KS and PSI per column: prompt length, answer length, retrieval scores,
latency, feedback ratings...) and rates (guardrail, refusal) are reported and plotted but
trigger nothing unless named in `DriftConfig.trigger_signals`: with a dozen columns each
tested at alpha 0.01 one of them drifts by chance every few reports, and a slower model or
longer answers is a serving problem, not a reason to retrain on new queries.

Too little traffic (fewer than `embedding_min_samples` usable queries on either side, an
empty partition included) gives `enough_data=False`, `drifted=False` and a summary that
says "not enough data": no retrain fires.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass, field

import numpy as np

from driftloop.monitoring.stats import (
    SignalResult, classifier_test, clean_embeddings, clean_values, ks_test, mmd_test, plain, psi, rate_test,
)

POLICIES = ("both", "either", "mmd", "classifier")
EMBEDDING_METHODS = {"both": ("mmd", "classifier_auc"), "either": ("mmd", "classifier_auc"),
                     "mmd": ("mmd",), "classifier": ("classifier_auc",)}


@dataclass
class DriftConfig:
    policy: str = "both"
    seed: int = 0
    embedding_min_samples: int = 50
    mmd_permutations: int = 200
    mmd_max_samples: int = 2000
    mmd_alpha: float = 0.01
    classifier_max_samples: int = 5000
    classifier_folds: int = 3
    classifier_auc_threshold: float = 0.55
    classifier_alpha: float = 0.01
    univariate_methods: tuple[str, ...] = ("ks", "psi")
    univariate_min_samples: int = 30
    ks_alpha: float = 0.01
    ks_min_statistic: float = 0.1
    psi_bins: int = 10
    psi_threshold: float = 0.2
    psi_alpha: float = 0.01
    rate_alpha: float = 0.01
    rate_min_samples: int = 30
    # Univariate or rate signal names (e.g. "refusal_rate", "latency_ms") that may also
    # trigger retraining when they drift; the default: query drift alone triggers.
    trigger_signals: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {self.policy!r}")
        unknown = set(self.univariate_methods) - {"ks", "psi"}
        if unknown:
            raise ValueError(f"unknown univariate methods {sorted(unknown)}; use 'ks' and/or 'psi'")
        self.univariate_methods = tuple(self.univariate_methods)
        self.trigger_signals = tuple(self.trigger_signals)


@dataclass
class DriftReport:
    signals: list[SignalResult]
    drifted: bool
    enough_data: bool
    policy: str
    reasons: list[str] = field(default_factory=list)  # the signals that made `drifted` True
    n_reference: int = 0
    n_current: int = 0

    def signal(self, name: str, method: str) -> SignalResult | None:
        return next((s for s in self.signals if s.name == name and s.method == method), None)

    def summary(self) -> str:
        if not self.enough_data:
            short = [s.detail for s in self.signals if s.method in ("mmd", "classifier_auc") and s.drifted is None]
            return f"not enough data: {short[0].removeprefix('not enough data: ') if short else 'no queries'}; no retrain"
        emb = [s for s in self.signals if s.method in ("mmd", "classifier_auc")]
        parts = []
        for s in emb:
            label = f"MMD p={s.p_value:.3f}" if s.method == "mmd" else f"classifier AUC={s.statistic:.3f}"
            parts.append(f"{label} ({'drift' if s.drifted else 'ok'})")
        others = [s for s in self.signals if s not in emb and s.drifted]
        verdict = f"DRIFTED ({', '.join(self.reasons)})" if self.drifted else "no drift"
        line = f"query drift: {verdict} [policy {self.policy}: {', '.join(parts)}]"
        if others:
            line += f"; also changed: {', '.join(sorted({f'{s.name} ({s.method})' for s in others}))}"
        return line + f"; {self.n_reference:,} reference vs {self.n_current:,} current queries"

    def to_dict(self) -> dict:
        return plain({
            "drifted": self.drifted, "enough_data": self.enough_data, "policy": self.policy, "reasons": self.reasons,
            "n_reference": self.n_reference, "n_current": self.n_current, "summary": self.summary(),
            "signals": [asdict(s) for s in self.signals],
        })

    def to_markdown(self) -> str:
        lines = [f"**{self.summary()}**", "",
                 "| signal | method | statistic | p-value | threshold | n ref | n cur | verdict | detail |",
                 "|---|---|---|---|---|---|---|---|---|"]
        for s in self.signals:
            verdict = "not enough data" if s.drifted is None else ("**drift**" if s.drifted else "ok")
            stat = "" if s.statistic is None else f"{s.statistic:.4g}"
            p = "" if s.p_value is None else f"{s.p_value:.3g}"
            detail = s.detail.replace("|", "/")
            lines.append(f"| {s.name} | {s.method} | {stat} | {p} | {s.threshold:g} | {s.n_reference:,} | "
                         f"{s.n_current:,} | {verdict} | {detail} |")
        return "\n".join(lines)


def drift_report(
    ref_embeddings, cur_embeddings, ref_columns: dict | None = None, cur_columns: dict | None = None,
    rates: dict[str, tuple[int, int, int, int]] | None = None, config: DriftConfig | None = None,
) -> DriftReport:
    """All signals and the verdict. `rates` maps a name to (ref_hits, ref_n, cur_hits, cur_n)."""
    cfg = config or DriftConfig()
    ref_columns, cur_columns = ref_columns or {}, cur_columns or {}
    ref, cur = ref_embeddings, cur_embeddings
    signals = [
        mmd_test(ref, cur, permutations=cfg.mmd_permutations, max_samples=cfg.mmd_max_samples, seed=cfg.seed,
                 alpha=cfg.mmd_alpha, min_samples=cfg.embedding_min_samples),
        classifier_test(ref, cur, max_samples=cfg.classifier_max_samples, folds=cfg.classifier_folds,
                        threshold=cfg.classifier_auc_threshold, alpha=cfg.classifier_alpha,
                        min_samples=cfg.embedding_min_samples, seed=cfg.seed),
    ]
    for name in list(ref_columns) + [c for c in cur_columns if c not in ref_columns]:
        if name not in ref_columns or name not in cur_columns:
            side = "reference" if name not in ref_columns else "current"
            signals.append(SignalResult(name, "missing", None, None, 0.0, None, 0, 0, f"not enough data: no {side} column"))
            continue
        r, c = ref_columns[name], cur_columns[name]
        if "ks" in cfg.univariate_methods:
            signals.append(ks_test(r, c, alpha=cfg.ks_alpha, min_statistic=cfg.ks_min_statistic,
                                   min_samples=cfg.univariate_min_samples, name=name))
        if "psi" in cfg.univariate_methods:
            signals.append(psi(r, c, bins=cfg.psi_bins, threshold=cfg.psi_threshold, alpha=cfg.psi_alpha,
                               min_samples=cfg.univariate_min_samples, name=name))
    for name, counts in (rates or {}).items():
        signals.append(rate_test(*counts, alpha=cfg.rate_alpha, min_samples=cfg.rate_min_samples, name=name))

    wanted = [s for s in signals[:2] if s.method in EMBEDDING_METHODS[cfg.policy]]
    enough = all(s.drifted is not None for s in wanted)
    reasons: list[str] = []
    if enough:
        hits = [s.method for s in wanted if s.drifted]
        if (cfg.policy == "both" and len(hits) == 2) or (cfg.policy != "both" and hits):
            reasons += hits
        reasons += [f"{s.name} ({s.method})" for s in signals[2:] if s.drifted and s.name in cfg.trigger_signals]
    return DriftReport(signals, bool(reasons), enough, cfg.policy, reasons, signals[0].n_reference, signals[0].n_current)


def _pca_2d(ref: np.ndarray, cur: np.ndarray, rng, max_points: int):
    dim = max(ref.shape[1], cur.shape[1])
    xs = ref[rng.choice(len(ref), min(len(ref), max_points), replace=False)] if len(ref) else np.zeros((0, dim))
    ys = cur[rng.choice(len(cur), min(len(cur), max_points), replace=False)] if len(cur) else np.zeros((0, dim))
    z = np.vstack([xs, ys]).astype(np.float64)
    z -= z.mean(axis=0)
    _, vectors = np.linalg.eigh(z.T @ z)  # d x d: cheaper than an SVD of the points
    p = z @ vectors[:, ::-1][:, :2]
    return p[: len(xs)], p[len(xs):]


def plot_drift(ref_embeddings, cur_embeddings, ref_columns: dict | None = None, cur_columns: dict | None = None,
               report: DriftReport | None = None, *, max_points: int = 1500, seed: int = 0, dpi: int = 72) -> bytes:
    """PNG: reference vs current queries on the first two principal components of both,
    a histogram per univariate column present on both sides (shared bins) and, given a
    report with rate signals, their reference and current rates."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ref_columns, cur_columns = ref_columns or {}, cur_columns or {}
    names = [n for n in ref_columns if n in cur_columns]
    rate_signals = [s for s in (report.signals if report else []) if s.method.startswith("rate") and s.extra]
    panels = 1 + len(names) + bool(rate_signals)
    ncols = 3
    nrows = (panels + ncols - 1) // ncols
    fig = Figure(figsize=(4 * ncols, 3.2 * nrows), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(nrows, ncols, 1)
    ref, cur = clean_embeddings(ref_embeddings)[0], clean_embeddings(cur_embeddings)[0]
    if len(ref) + len(cur) >= 3 and max(ref.shape[1], cur.shape[1]) >= 2:
        pr, pc = _pca_2d(ref, cur, np.random.default_rng(seed), max_points)
        ax.scatter(pr[:, 0], pr[:, 1], s=3, alpha=0.4, c="tab:blue", label=f"reference ({len(ref):,})", rasterized=True)
        ax.scatter(pc[:, 0], pc[:, 1], s=3, alpha=0.4, c="tab:orange", label=f"current ({len(cur):,})", rasterized=True)
        ax.legend(loc="best", fontsize=7, markerscale=3)
    else:
        ax.text(0.5, 0.5, "not enough data", ha="center", va="center", transform=ax.transAxes)
    title = "queries, PCA of embeddings"
    if report is not None:
        title += "\n" + ("not enough data" if not report.enough_data else ("DRIFTED" if report.drifted else "no drift"))
    ax.set_title(title, fontsize=9)
    for i, name in enumerate(names):
        ax = fig.add_subplot(nrows, ncols, i + 2)
        r, c = clean_values(ref_columns[name])[0], clean_values(cur_columns[name])[0]
        both = np.concatenate([r, c])
        if len(both) and both.min() < both.max():
            lo, hi = np.quantile(both, [0.005, 0.995])
            bins = np.linspace(lo, hi, 31) if hi > lo else 30
            for values, color, label in ((r, "tab:blue", "reference"), (c, "tab:orange", "current")):
                if len(values):  # a density of no values divides by zero
                    ax.hist(np.clip(values, lo, hi), bins=bins, density=True, alpha=0.5, color=color, label=label)
        elif len(both):
            ax.bar(["reference", "current"], [len(r), len(c)], color=["tab:blue", "tab:orange"])
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        label = name
        if report is not None:
            verdicts = [s for s in report.signals if s.name == name and s.method in ("ks", "psi")]
            label += "\n" + ", ".join(f"{s.method} {s.statistic:.2f}{' DRIFT' if s.drifted else ''}"
                                      if s.statistic is not None else f"{s.method}: not enough data" for s in verdicts)
        ax.set_title(label, fontsize=9)
        ax.tick_params(labelsize=7)
    if rate_signals:
        ax = fig.add_subplot(nrows, ncols, panels)
        x = np.arange(len(rate_signals))
        ax.bar(x - 0.2, [100 * s.extra["reference_rate"] for s in rate_signals], 0.4, color="tab:blue", label="reference")
        ax.bar(x + 0.2, [100 * s.extra["current_rate"] for s in rate_signals], 0.4, color="tab:orange", label="current")
        ax.set_xticks(x, [s.name + (" DRIFT" if s.drifted else "") for s in rate_signals], fontsize=7)
        ax.set_ylabel("%", fontsize=8)
        ax.set_title("rates", fontsize=9)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()
