"""Drift check: driftloop's `drift_report` against alibi-detect's MMDDrift and Evidently.

Once, the peers' own venv (they conflict with the product's lock; CPU torch only):

    python3.11 -m venv .venv-drift-peers
    .venv-drift-peers/bin/pip install torch==2.13.0+cpu
    .venv-drift-peers/bin/pip install --no-deps -r bench/peers/drift.txt

Then the benchmark (about 8 minutes on 2 idle cores):

    export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 DO_NOT_TRACK=1
    flock /tmp/driftloop-bench.lock .venv/bin/python bench/drift.py [--sizes 10000 100000] [--trials 20] [--shift-trials 20]

Data: 384-d float32 unit vectors around 200 topic centres; a reference of --reference
queries against 10k and 100k current queries. The driftloop side runs here (product venv);
the peers run in bench/peers/drift_peer.py under .venv-drift-peers/bin/python, fed the
same arrays as .npy files, with an address-space cap (--peer-mem-gb) and a time limit.

1. Time: the whole wall time of one call, from the arrays to the verdict, after a warm-up
   on both sides; median of --runs runs that alternate ours and the peer's. Ours:
   `drift_report` (MMD permutation test, domain classifier, KS and PSI on three columns,
   two rates) and `mmd_test` alone; both test at most 2,000 queries a side (seeded
   subsample). alibi-detect `MMDDrift` (same kernel, same number of permutations, same
   alpha) on those very samples, and on the full samples. Evidently's embeddings drift
   (its default "model" method and its "mmd" method; no permutations, fixed thresholds)
   on the same and the full samples, and its `Report` once (it adds a t-SNE plot).
   Memory: peak RSS added during the call, each side in its own process.
2. Quality: each side's verdict on an undrifted and a drifted (20% new topic) pair at the
   largest size, the false-positive rate on --trials undrifted pairs and the detection
   rate on --shift-trials pairs per shift (10%, 20%, 40% of current about a new topic),
   --split-size queries a side, alpha 0.01 on both p-value sides.

The last line: RESULT drift_check_s_at_10000=<drift_report> baseline=<alibi MMDDrift on the
same samples> ratio=<baseline/ours> (above 1: ours is faster).
"""

import argparse
import json
import os
import select
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import machine
from driftloop.monitoring.drift import DriftConfig, drift_report
from driftloop.monitoring.stats import subsample, mmd_test

DIM = 384
ALPHA = 0.01
ROOT = Path(__file__).resolve().parent.parent
PEER_PYTHON = ROOT / ".venv-drift-peers" / "bin" / "python"
PEER_SCRIPT = ROOT / "bench" / "peers" / "drift_peer.py"
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "DO_NOT_TRACK": "1",
           "EVIDENTLY_DISABLE_TELEMETRY": "1"}


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


def shifted(n: int, share: float, rng, model) -> np.ndarray:
    cur = queries(n, rng, model)
    cur[: int(n * share)] = queries(int(n * share), rng, topic_model(seed=99, topics=3))
    return cur


def columns(n: int, rng) -> dict:
    return {"prompt_length": rng.lognormal(3.5, 0.5, n), "latency_ms": rng.gamma(4.0, 120.0, n),
            "feedback_rating": rng.choice([1, 2, 3, 4, 5], n, p=[0.05, 0.05, 0.1, 0.3, 0.5]).astype(float)}


def rates(rng, n_ref: int, n_cur: int) -> dict:
    return {"refusal_rate": (int(rng.binomial(n_ref, 0.05)), n_ref, int(rng.binomial(n_cur, 0.05)), n_cur),
            "guardrail_rate": (int(rng.binomial(n_ref, 0.02)), n_ref, int(rng.binomial(n_cur, 0.02)), n_cur)}


def rss_mb() -> tuple[float, float]:
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def timed(fn) -> tuple[dict, object]:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: restart the VmHWM high-water mark
    except OSError:
        pass
    before = rss_mb()[0]
    start = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "rss_added_mb": rss_mb()[1] - before}, out


class Peer:
    """bench/peers/drift_peer.py in the peers' venv, one JSON request and answer a line."""

    def __init__(self, mem_gb: float, workdir: Path):
        self.mem_gb, self.stderr_path = mem_gb, workdir / "peer.stderr"
        self.start()

    def start(self) -> None:
        if not PEER_PYTHON.exists():
            raise SystemExit(f"{PEER_PYTHON} is missing: create it with the commands at the top of {__file__}")
        self.proc = subprocess.Popen([str(PEER_PYTHON), str(PEER_SCRIPT), "--mem-gb", str(self.mem_gb)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr_path.open("a"),
                                     text=True, env={**os.environ, **OFFLINE})
        self.info = self._answer(300)

    def _answer(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            ready, _, _ = select.select([self.proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise TimeoutError
            line = self.proc.stdout.readline()
            if not line:
                tail = self.stderr_path.read_text()[-3000:]
                raise SystemExit(f"the peer process exited (code {self.proc.wait()}):\n{tail}")
            if line.startswith("JSON "):
                return json.loads(line[5:])

    def call(self, timeout: float = 600, **request) -> dict:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        try:
            return self._answer(timeout)
        except TimeoutError:
            self.proc.kill()
            self.proc.wait()
            self.start()
            return {"error": f"stopped at the time limit, {timeout:.0f} s"}

    def close(self) -> None:
        self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def save(workdir: Path, name: str, x: np.ndarray) -> str:
    path = workdir / f"{name}.npy"
    np.save(path, x)
    return str(path)


def mmd_samples(ref: np.ndarray, cur: np.ndarray, cfg: DriftConfig) -> tuple[np.ndarray, np.ndarray]:
    """The rows `mmd_test` tests (its seeded subsample); `classifier_test` draws the same
    rows whenever the reference has at most mmd_max_samples rows, as here."""
    rng = np.random.default_rng(cfg.seed)
    return subsample(ref, cfg.mmd_max_samples, rng), subsample(cur, cfg.mmd_max_samples, rng)


def time_size(peer: Peer, workdir: Path, size: int, args) -> list[dict]:
    rng = np.random.default_rng(size)
    model = topic_model()
    cfg = DriftConfig(mmd_permutations=args.permutations, mmd_alpha=ALPHA)
    ref, cur = queries(args.reference, rng, model), queries(size, rng, model)
    ref_cols, cur_cols, counts = columns(len(ref), rng), columns(size, rng), rates(rng, len(ref), size)
    xs, ys = mmd_samples(ref, cur, cfg)
    same = {"ref": save(workdir, "ref_same", xs), "cur": save(workdir, "cur_same", ys)}
    full = {"ref": save(workdir, "ref_full", ref), "cur": save(workdir, "cur_full", cur)}
    perm = {"permutations": args.permutations, "alpha": ALPHA}
    warm_ref, warm_cur = queries(300, rng, model), queries(300, rng, model)
    warm = {"ref": save(workdir, "warm_ref", warm_ref), "cur": save(workdir, "warm_cur", warm_cur)}
    drift_report(warm_ref, warm_cur, columns(300, rng), columns(300, rng), config=cfg)  # imports, first calls
    mmd_test(warm_ref, warm_cur, permutations=args.permutations)
    for method in ("model", "mmd"):
        peer.call(op="evidently", method=method, **warm)
    peer.call(op="alibi", **warm, **perm)

    rows: dict[str, dict] = {}

    def add(key: str, label: str, samples: str, result: dict, **extra) -> None:
        row = rows.setdefault(key, {"size": size, "side": label, "samples": samples, "runs": [], **extra})
        row["runs"].append(result)

    n_same = f"{len(xs):,} vs {len(ys):,}"
    n_full = f"{len(ref):,} vs {len(cur):,}"
    for _ in range(args.runs):  # alternate: ours, the peer's on the same samples
        t, report = timed(lambda: drift_report(ref, cur, ref_cols, cur_cols, counts, cfg))
        add("ours", "driftloop drift_report", n_same, {**t, "drifted": report.drifted, "p_value": report.signals[0].p_value})
        t, signal = timed(lambda: mmd_test(ref, cur, permutations=args.permutations, alpha=ALPHA))
        add("ours_mmd", "driftloop mmd_test", n_same, {**t, "drifted": signal.drifted, "p_value": signal.p_value})
        add("alibi_same", "alibi MMDDrift", n_same, peer.call(op="alibi", timeout=args.peer_limit_s, **same, **perm))
        for method in ("model", "mmd"):
            add(f"ev_{method}_same", f"Evidently {method}", n_same, peer.call(op="evidently", method=method, **same))
            if len(ys) < len(cur):
                add(f"ev_{method}_full", f"Evidently {method}", n_full,
                    peer.call(op="evidently", method=method, timeout=args.peer_limit_s, **full))
    if len(ys) < len(cur):  # one run each: minutes per call, or refused by the memory cap at once
        add("alibi_full", "alibi MMDDrift", n_full, peer.call(op="alibi", timeout=args.peer_limit_s, **full, **perm))
    if size == args.sizes[0] and not args.no_report:
        add("ev_report", "Evidently Report (model)", n_full,
            peer.call(op="evidently", method="model", report=True, timeout=args.peer_limit_s, **full))
    order = ("ours", "ours_mmd", "alibi_same", "alibi_full", "ev_model_same", "ev_model_full", "ev_mmd_same", "ev_mmd_full",
             "ev_report")
    return [rows[k] for k in order if k in rows]


def summarise(row: dict) -> dict:
    ok = [r for r in row["runs"] if "error" not in r]
    if not ok:
        return {**row, "seconds": None, "error": row["runs"][0]["error"]}
    failed = [r["error"] for r in row["runs"] if "error" in r]
    return {**row, "seconds": float(np.median([r["seconds"] for r in ok])), "rss_added_mb": max(r["rss_added_mb"] for r in ok),
            "drifted": ok[0]["drifted"], "n_runs": f"{len(ok)}/{len(row['runs'])}", "error": failed[0] if failed else None}


def print_timings(rows: list[dict]) -> None:
    print(f"\n{'current':>8}  {'side':<26} {'samples tested':>17} {'seconds':>9} {'runs':>5} {'RSS added MB':>13}  verdict")
    for row in rows:
        head = f"{row['size']:>8,}  {row['side']:<26} {row['samples']:>17}"
        if row["seconds"] is None:
            print(f"{head}   cannot run: {row['error']}")
            continue
        print(f"{head} {row['seconds']:>9.2f} {row['n_runs']:>5} {row['rss_added_mb']:>13,.0f}  "
              f"{'drift' if row['drifted'] else 'no drift'}" + (f"; failed runs: {row['error']}" if row["error"] else ""))


def verdicts(peer: Peer, workdir: Path, size: int, args) -> None:
    """Each side's verdict on one undrifted and one drifted pair at `size` current queries."""
    rng = np.random.default_rng(7 + size)
    model = topic_model()
    cfg = DriftConfig(mmd_permutations=args.permutations, mmd_alpha=ALPHA)
    ref = queries(args.reference, rng, model)
    print(f"\nverdicts at {size:,} current vs {len(ref):,} reference queries, every side on the rows driftloop's MMD "
          f"tests (drifted: 20% of current about a new topic; D = drift)")
    heads = ("driftloop report", "driftloop MMD", "alibi MMDDrift", "Evidently model", "Ev. model, bootstrap", "Evidently mmd")
    print(f"{'pair':>10}" + "".join(f" {h:>20}" for h in heads))
    for name, cur in (("undrifted", queries(size, rng, model)), ("drifted", shifted(size, 0.2, rng, model))):
        xs, ys = mmd_samples(ref, cur, cfg)
        paths = {"ref": save(workdir, "v_ref", xs), "cur": save(workdir, "v_cur", ys)}
        report = drift_report(ref, cur, config=cfg)
        alibi = peer.call(op="alibi", permutations=args.permutations, alpha=ALPHA, timeout=args.peer_limit_s, **paths)
        ev = [peer.call(op="evidently", method=m, alpha=ALPHA, **paths) for m in ("model", "model-bootstrap", "mmd")]
        cells = [("", report.drifted), (f"p={report.signals[0].p_value:.3f}", report.signals[0].drifted),
                 (f"p={alibi['p_value']:.3f}" if "p_value" in alibi else alibi.get("error", "")[:14], alibi.get("drifted")),
                 (f"AUC={ev[0]['statistic']:.3f}", ev[0]["drifted"]), (f"AUC={ev[1]['statistic']:.3f}", ev[1]["drifted"]),
                 (f"MMD^2={ev[2]['statistic']:.4f}", ev[2]["drifted"])]
        print(f"{name:>10}" + "".join(f" {text + (' D' if hit else ' -'):>20}" for text, hit in cells))


def error_rates(peer: Peer, workdir: Path, args) -> None:
    """False positives on undrifted pairs, detection on shifted ones; every side sees the same pair."""
    model = topic_model()
    n = args.split_size
    sides = ("driftloop report", "driftloop MMD", "alibi MMDDrift", "Evidently model", "Evidently model, bootstrap",
             "Evidently mmd")
    conditions = [("none", 0.0, args.trials)] + [(f"shift {s:.0%}", s, args.shift_trials) for s in (0.1, 0.2, 0.4)]
    start = time.perf_counter()
    table = {}
    for cond, share, trials in conditions:
        hits = dict.fromkeys(sides, 0)
        for t in range(trials):
            rng = np.random.default_rng(10_000 + t)
            cfg = DriftConfig(mmd_permutations=args.permutations, mmd_alpha=ALPHA, seed=t)
            ref = queries(n, rng, model)
            cur = shifted(n, share, rng, model) if share else queries(n, rng, model)
            paths = {"ref": save(workdir, "e_ref", ref), "cur": save(workdir, "e_cur", cur)}
            report = drift_report(ref, cur, config=cfg)
            alibi = peer.call(op="alibi", permutations=args.permutations, alpha=ALPHA, seed=t, timeout=args.peer_limit_s, **paths)
            if "error" in alibi:
                raise SystemExit(f"alibi MMDDrift failed on a {n:,}-a-side pair: {alibi['error']}")
            got = [report.drifted, report.signals[0].drifted, alibi["drifted"]]
            for method in ("model", "model-bootstrap", "mmd"):
                got.append(peer.call(op="evidently", method=method, alpha=ALPHA, **paths)["drifted"])
            for side, hit in zip(sides, got, strict=True):
                hits[side] += bool(hit)
        table[cond] = (trials, {s: v / trials for s, v in hits.items()})
    print(f"\nerror rates, {n:,} vs {n:,} queries a pair, every side on the same pairs ({time.perf_counter() - start:.0f} s); "
          f"FPR = share of undrifted pairs flagged, detection = share of shifted pairs flagged")
    print(f"{'side':>27}" + "".join(f" {f'{c} ({k})':>16}" for c, (k, _) in table.items()))
    for side in sides:
        print(f"{side:>27}" + "".join(f" {r[side]:>16.2f}" for _, r in table.values()))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--reference", type=int, default=2_000, help="reference queries in the timing runs")
    parser.add_argument("--permutations", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3, help="timed runs per side and size (median reported)")
    parser.add_argument("--trials", type=int, default=20, help="undrifted pairs for the false-positive rate")
    parser.add_argument("--shift-trials", type=int, default=20, help="pairs per shift for the detection rate")
    parser.add_argument("--split-size", type=int, default=1_000, help="queries a side in the error-rate pairs")
    parser.add_argument("--peer-mem-gb", type=float, default=14.0, help="address-space cap of the peer process")
    parser.add_argument("--peer-limit-s", type=float, default=420.0, help="time limit of one peer call")
    parser.add_argument("--no-report", action="store_true", help="skip timing Evidently's Report (t-SNE included)")
    args = parser.parse_args()
    os.environ.update(OFFLINE)
    with tempfile.TemporaryDirectory(prefix="drift-bench-") as tmp:
        workdir = Path(tmp)
        peer = Peer(args.peer_mem_gb, workdir)
        print(f"machine: {machine()}; load average at start {os.getloadavg()[0]:.1f}")
        sizes = ", ".join(f"{s:,}" for s in args.sizes)
        print(f"data: {DIM}-d float32 unit vectors; reference {args.reference:,} queries; current {sizes}")
        print(f"driftloop (product venv, numpy {np.__version__}): DriftConfig defaults (MMD: RBF, median heuristic, "
              f"at most {DriftConfig.mmd_max_samples:,} a side, {args.permutations} permutations, p < {ALPHA}; "
              f"policy 'both' = MMD and domain classifier)")
        print(f"peers ({', '.join(f'{k} {v}' for k, v in peer.info['versions'].items())}; address space capped at "
              f"{args.peer_mem_gb:g} GB, {args.peer_limit_s:.0f} s a call):")
        print(f"  alibi-detect MMDDrift(x_ref, backend='pytorch', device='cpu', p_val={ALPHA}, "
              f"n_permutations={args.permutations}, configure_kernel_from_x_ref=True, preprocess_at_init=True); "
              "default GaussianRBF, median heuristic; timed: build + predict")
        print("  Evidently EmbeddingsDrift methods at their defaults: model (SGD domain classifier, drift when ROC AUC > 0.55), "
              "mmd (drift when MMD^2 > 0.015)")
        print(f"timing: warm-up on both sides, then the median of {args.runs} alternating runs (full-sample alibi: 1 run)")
        rows = []
        for size in args.sizes:
            rows += [summarise(r) for r in time_size(peer, workdir, size, args)]
        print_timings(rows)
        verdicts(peer, workdir, max(args.sizes), args)
        error_rates(peer, workdir, args)
        print(f"\npeer outbound connections refused during the run: {peer.call(op='status')['connections_refused']}")
        peer.close()
    size = 10_000 if 10_000 in args.sizes else args.sizes[0]
    ours = next(r for r in rows if r["size"] == size and r["side"] == "driftloop drift_report")["seconds"]
    base = next(r for r in rows if r["size"] == size and r["side"] == "alibi MMDDrift")["seconds"]
    print(f"RESULT drift_check_s_at_{size}={ours:.2f} baseline={base:.2f} ratio={base / ours:.1f}")


if __name__ == "__main__":
    main()
