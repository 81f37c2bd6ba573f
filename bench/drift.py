"""Drift check time, memory and error rates: `drift_report` against a textbook MMD test.

1. Time and peak memory of the whole drift check (`drift_report`: MMD permutation test,
   domain classifier, KS and PSI on three columns, two rates) at 1k, 10k and 100k current
   query embeddings (384-d float32 unit vectors around topic centres) against a reference
   of --reference queries. Baseline: the MMD permutation test as first written, on the full
   samples: the full pooled float64 RBF kernel (median heuristic) and, per permutation, the
   three kernel blocks gathered and averaged; the same number of permutations. Each
   (side, size) runs in its own process; memory is tracemalloc's peak during the call
   (numpy's arrays included) and the process's peak RSS from the start of the call.
2. False-positive rate on --trials no-drift splits, and detection rate on shifts: a new
   topic in 10%, 20% and 40% of the queries (with prompts 25% longer and refusals 5% -> 7.5%
   in the synthetic ones), per method and for the report's verdict; on synthetic embeddings
   and on real ones (the corpus's questions embedded with all-MiniLM-L6-v2, drift =
   questions about held-out modules).

    flock /tmp/driftloop-bench.lock .venv/bin/python bench/drift.py [--sizes 1000 10000 100000] [--reference 2000] [--trials 100] [--no-real]
"""

import argparse
import json
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from driftloop.monitoring.drift import DriftConfig, drift_report  # noqa: E402
from driftloop.monitoring.stats import mmd_test  # noqa: E402

DIM = 384
BASELINE_LIMIT_S = 240.0


def topic_model(seed: int = 0, topics: int = 200):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((topics, DIM), dtype=np.float32) / np.sqrt(DIM)
    weights = 1.0 / np.arange(1, topics + 1) ** 0.8  # a few popular topics, a long tail
    return centres, weights / weights.sum()


def queries(n: int, rng, model, noise: float = 0.045, chunk: int = 20_000) -> np.ndarray:
    centres, weights = model
    out = np.empty((n, DIM), np.float32)
    for start in range(0, n, chunk):
        k = min(chunk, n - start)
        v = centres[rng.choice(len(centres), k, p=weights)] + noise * rng.standard_normal((k, DIM), dtype=np.float32)
        out[start : start + k] = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out


def columns(n: int, rng, longer: float = 1.0) -> dict:
    return {
        "prompt_length": rng.lognormal(3.5, 0.5, n) * longer,
        "latency_ms": rng.gamma(4.0, 120.0, n),
        "feedback_rating": rng.choice([1, 2, 3, 4, 5], n, p=[0.05, 0.05, 0.1, 0.3, 0.5]).astype(float),
    }


def rates(rng, n_ref: int, n_cur: int, refusal: float = 0.05) -> dict:
    return {"refusal_rate": (int(rng.binomial(n_ref, 0.05)), n_ref, int(rng.binomial(n_cur, refusal)), n_cur),
            "guardrail_rate": (int(rng.binomial(n_ref, 0.02)), n_ref, int(rng.binomial(n_cur, 0.02)), n_cur)}


def naive_mmd_test(x: np.ndarray, y: np.ndarray, permutations: int = 200, seed: int = 0) -> tuple[float, float]:
    """The textbook version: full samples, full pooled kernel, blocks gathered per permutation."""
    z = np.vstack([x, y]).astype(np.float64)
    sq = (z**2).sum(axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * z @ z.T, 0.0)
    k = np.exp(-d2 / np.median(d2[np.triu_indices(len(z), 1)]))
    del d2
    n, m = len(x), len(y)

    def mmd2(ix, iy):
        kxx, kyy, kxy = k[np.ix_(ix, ix)], k[np.ix_(iy, iy)], k[np.ix_(ix, iy)]
        return (kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2.0 * kxy.mean()

    observed = mmd2(np.arange(n), np.arange(n, n + m))
    rng = np.random.default_rng(seed)
    null = []
    for _ in range(permutations):
        p = rng.permutation(n + m)
        null.append(mmd2(p[:n], p[n:]))
    return observed, (1 + sum(v >= observed for v in null)) / (1 + permutations)


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak_rss() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: restart the VmHWM high-water mark
    except OSError:
        pass


def measure(fn) -> dict:
    reset_peak_rss()
    tracemalloc.start()
    start = time.perf_counter()
    fn()
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {"seconds": seconds, "traced_mb": peak / 2**20, "rss_mb": peak_rss_mb()}


def run_size(side: str, size: int, n_ref: int, permutations: int) -> dict:
    rng = np.random.default_rng(size)
    model = topic_model()
    ref, cur = queries(n_ref, rng, model), queries(size, rng, model)
    if side == "baseline":
        return measure(lambda: naive_mmd_test(ref, cur, permutations))
    ref_cols, cur_cols, rate_counts = columns(n_ref, rng), columns(size, rng), rates(rng, n_ref, size)
    config = DriftConfig(mmd_permutations=permutations)
    warm = queries(300, rng, model)
    drift_report(warm[:150], warm[150:], columns(150, rng), columns(150, rng), config=config)  # imports, first calls
    times = []
    for _ in range(3):
        start = time.perf_counter()
        drift_report(ref, cur, ref_cols, cur_cols, rate_counts, config)
        times.append(time.perf_counter() - start)
    mem = measure(lambda: drift_report(ref, cur, ref_cols, cur_cols, rate_counts, config))
    mmd_times = []
    for _ in range(3):
        start = time.perf_counter()
        mmd_test(ref, cur, permutations=permutations)
        mmd_times.append(time.perf_counter() - start)
    return {**mem, "seconds": float(np.median(times)), "runs": times, "mmd_seconds": float(np.median(mmd_times))}


def child(part: str, side: str, size: int, args) -> dict:
    cmd = [sys.executable, __file__, "--part", part, "--side", side, "--size", str(size), "--reference", str(args.reference),
           "--permutations", str(args.permutations), "--trials", str(args.trials)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("JSON ")), None)
    if line is None:
        raise SystemExit(f"{part} {side} {size} failed:\n{out.stderr[-3000:]}")
    return json.loads(line[5:])


METHODS = ("report", "mmd", "classifier", "mmd or classifier", "any KS", "any PSI", "any rate")


def verdicts(report) -> dict:
    mmd, clf = report.signals[0].drifted, report.signals[1].drifted
    return {"report": report.drifted, "mmd": mmd, "classifier": clf, "mmd or classifier": mmd or clf,
            "any KS": any(s.drifted for s in report.signals if s.method == "ks"),
            "any PSI": any(s.drifted for s in report.signals if s.method == "psi"),
            "any rate": any(s.drifted for s in report.signals if s.method.startswith("rate"))}


SHARES = (0.1, 0.2, 0.4)
CONDITIONS = ("none",) + tuple(f"shift {s:.0%}" for s in SHARES)


def error_rates(trials: int, n: int, permutations: int) -> dict:
    """Synthetic: fresh draws from one topic model (no drift) or with a new topic (drift)."""
    model = topic_model()
    new = topic_model(seed=99, topics=3)
    out = {c: {m: 0 for m in METHODS} for c in CONDITIONS}
    for t in range(trials):
        rng = np.random.default_rng(10_000 + t)
        config = DriftConfig(mmd_permutations=permutations, seed=t)
        ref, ref_cols = queries(n, rng, model), columns(n, rng)
        reports = {"none": drift_report(ref, queries(n, rng, model), ref_cols, columns(n, rng), rates(rng, n, n), config)}
        for share, cond in zip(SHARES, CONDITIONS[1:], strict=True):
            cur = queries(n, rng, model)
            cur[: int(n * share)] = queries(int(n * share), rng, new)
            reports[cond] = drift_report(ref, cur, ref_cols, columns(n, rng, longer=1.25), rates(rng, n, n, refusal=0.075), config)
        for cond, report in reports.items():
            for m, hit in verdicts(report).items():
                out[cond][m] += bool(hit)
    return {c: {m: v / trials for m, v in d.items()} for c, d in out.items()}


def real_error_rates(trials: int, permutations: int) -> dict:
    """The corpus's questions: random halves (no drift); held-out modules as 20% of current (drift)."""
    from driftloop.data.pydocs import python_docs
    from driftloop.data.qa import derive_qa_pairs
    from driftloop.models.embedding import load_embedder

    pairs = derive_qa_pairs(python_docs())
    start = time.perf_counter()
    vectors = load_embedder("all-MiniLM-L6-v2", "cpu").encode([p.question for p in pairs], batch_size=64)
    embed_s = time.perf_counter() - start
    modules = np.array([p.doc_id for p in pairs])
    names = np.unique(modules)
    out = {c: {m: 0 for m in METHODS[:4]} for c in CONDITIONS}
    sizes = {}
    for t in range(trials):
        rng = np.random.default_rng(20_000 + t)
        config = DriftConfig(mmd_permutations=permutations, seed=t)
        p = rng.permutation(len(pairs))
        half = len(p) // 2
        reports = {"none": drift_report(vectors[p[:half]], vectors[p[half:]], config=config)}
        sizes["none"] = (half, len(p) - half)
        held = np.isin(modules, rng.choice(names, len(names) * 2 // 5, replace=False))
        seen = rng.permutation(np.flatnonzero(~held))
        ref_idx, cur_idx = seen[: len(seen) // 2], seen[len(seen) // 2 :]
        for share, cond in zip(SHARES, CONDITIONS[1:], strict=True):
            base = cur_idx[: int(len(cur_idx) * (1 - share))]  # current keeps its size
            new_idx = rng.choice(np.flatnonzero(held), int(len(base) * share / (1 - share)), replace=False)
            reports[cond] = drift_report(vectors[ref_idx], vectors[np.r_[base, new_idx]], config=config)
            sizes[cond] = (len(ref_idx), len(base) + len(new_idx))
        for cond, report in reports.items():
            for m, hit in verdicts(report).items():
                if m in out[cond]:
                    out[cond][m] += bool(hit)
    rates_ = {c: {m: v / trials for m, v in d.items()} for c, d in out.items()}
    return {"rates": rates_, "questions": len(pairs), "modules": len(names), "embed_s": embed_s, "sizes": sizes}


def rate_table(rates_: dict) -> None:
    print(f"{'method':>18} {'FPR (no drift)':>15}" + "".join(f" {'detection, ' + c:>20}" for c in CONDITIONS[1:]))
    for m in rates_["none"]:
        print(f"{m:>18} {rates_['none'][m]:>15.2f}" + "".join(f" {rates_[c][m]:>20.2f}" for c in CONDITIONS[1:]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument("--reference", type=int, default=2_000, help="reference queries in the timing runs")
    parser.add_argument("--permutations", type=int, default=200)
    parser.add_argument("--trials", type=int, default=100, help="no-drift splits and shifted samples for the error rates")
    parser.add_argument("--split-size", type=int, default=2_000, help="queries per side in the synthetic error-rate trials")
    parser.add_argument("--no-real", action="store_true", help="skip the error rates on real question embeddings")
    parser.add_argument("--part", choices=["time", "errors", "real"])
    parser.add_argument("--side", choices=["ours", "baseline"], default="ours")
    parser.add_argument("--size", type=int, default=0)
    args = parser.parse_args()
    if args.part == "time":
        print("JSON " + json.dumps(run_size(args.side, args.size, args.reference, args.permutations)))
        return
    if args.part == "real":
        print("JSON " + json.dumps(real_error_rates(args.trials, args.permutations)))
        return
    from common import machine

    print(f"machine: {machine()}; reference {args.reference:,} queries, {DIM}-d float32, {args.permutations} permutations")
    print(f"{'current':>8} {'side':>9} {'seconds':>9} {'MMD only s':>11} {'traced MB':>10} {'peak RSS MB':>12}")
    results, base_per_pair = {}, None
    for size in args.sizes:
        ours = child("time", "ours", size, args)
        results[("ours", size)] = ours
        print(f"{size:>8,} {'ours':>9} {ours['seconds']:>9.2f} {ours['mmd_seconds']:>11.2f} {ours['traced_mb']:>10.0f} {ours['rss_mb']:>12.0f}")
        pooled = size + args.reference
        if base_per_pair is not None:
            est_s = base_per_pair[0] * pooled**2
            est_gb = base_per_pair[1] * pooled**2 / 1024
            if est_s > BASELINE_LIMIT_S or est_gb > 8:
                print(f"{size:>8,} {'baseline':>9}   skipped (estimated {est_s:,.0f} s / {est_gb:,.0f} GB)")
                continue
        base = child("time", "baseline", size, args)
        results[("baseline", size)] = base
        base_per_pair = (base["seconds"] / pooled**2, base["traced_mb"] / pooled**2)
        print(f"{size:>8,} {'baseline':>9} {base['seconds']:>9.2f} {base['seconds']:>11.2f} {base['traced_mb']:>10.0f} {base['rss_mb']:>12.0f}"
              f"   speed-up {base['seconds'] / ours['seconds']:.1f}x, memory {base['traced_mb'] / ours['traced_mb']:.1f}x")

    n = args.split_size
    start = time.perf_counter()
    synth = error_rates(args.trials, n, args.permutations)
    print(f"\nerror rates, synthetic, {args.trials} trials of {n:,} vs {n:,} queries ({time.perf_counter() - start:.0f} s)")
    rate_table(synth)
    if not args.no_real:
        real = child("real", "ours", 0, args)
        sizes = "; ".join(f"{c}: {a:,} vs {b:,}" for c, (a, b) in real["sizes"].items())
        print(f"\nerror rates, real question embeddings ({real['questions']:,} questions about {real['modules']} modules, "
              f"embedded in {real['embed_s']:.0f} s), {args.trials} trials; no drift = random halves, shift = that share of "
              f"current about held-out modules; queries (last trial): {sizes}")
        rate_table(real["rates"])
    size = 10_000 if ("baseline", 10_000) in results else max(s for side, s in results if side == "baseline")
    ours, base = results[("ours", size)]["seconds"], results[("baseline", size)]["seconds"]
    print(f"RESULT drift_check_s_at_{size}={ours:.2f} baseline={base:.2f} ratio={base / ours:.1f}")


if __name__ == "__main__":
    main()
