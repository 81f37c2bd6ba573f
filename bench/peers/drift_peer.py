"""The peer side of bench/drift.py: alibi-detect's MMDDrift and Evidently's embeddings drift.

Runs in .venv-drift-peers (see bench/peers/drift.txt), never in the product venv, and
imports nothing from driftloop. bench/drift.py starts it once and sends one JSON request
a line on stdin; each answer is one line `JSON {...}` on stdout. Samples arrive as .npy
paths, so both sides test identical arrays. Each answer carries the whole wall time of
the call (detector built from the arrays, then the test) and the process's peak RSS
during it. The address space is capped (--mem-gb) so an O(n^2) kernel that does not fit
fails with the allocator's own message instead of swapping the box; every outbound
connection is refused and counted (`connections_refused`), telemetry or not.
"""

import argparse
import json
import resource
import socket
import sys
import time
from pathlib import Path

import numpy as np

REFUSED: list[str] = []


def refuse_network() -> None:
    original = socket.socket.connect

    def connect(self, address):
        if self.family == socket.AF_UNIX:
            return original(self, address)
        REFUSED.append(str(address))
        raise OSError(f"bench/peers/drift_peer.py: network refused ({address})")

    socket.socket.connect = connect
    socket.socket.connect_ex = lambda self, address: connect(self, address) or 0


def rss_mb() -> tuple[float, float]:
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def alibi_mmd(ref: np.ndarray, cur: np.ndarray, permutations: int, alpha: float, seed: int) -> dict:
    """MMDDrift at its documented best for this job on a CPU: the pytorch backend, the
    default Gaussian RBF with the median heuristic configured from x_ref at init (which
    also caches the reference kernel block), no preprocessing (the inputs are already
    embeddings). p_val = alpha, n_permutations = ours."""
    import torch
    from alibi_detect.cd import MMDDrift

    torch.manual_seed(seed)
    start = time.perf_counter()
    detector = MMDDrift(ref, backend="pytorch", p_val=alpha, n_permutations=permutations, device="cpu",
                        configure_kernel_from_x_ref=True, preprocess_at_init=True)
    built = time.perf_counter()
    out = detector.predict(cur, return_p_val=True, return_distance=True)["data"]
    end = time.perf_counter()
    return {"seconds": end - start, "predict_seconds": end - built, "drifted": bool(out["is_drift"]),
            "p_value": float(out["p_val"]), "statistic": float(out["distance"]),
            "bandwidth": float(detector._detector.kernel.sigma.item())}


def frame(x: np.ndarray):
    import pandas as pd

    return pd.DataFrame(x, columns=[f"e{i}" for i in range(x.shape[1])])


def evidently_method(name: str, alpha: float):
    from evidently.metrics.embeddings import MMDDriftMethod, ModelDriftMethod

    # The documented defaults: "model" is Evidently's default (a domain classifier,
    # drift when ROC AUC > 0.55; bootstrap only below 1,000 reference rows), "mmd" flags
    # MMD^2 > 0.015; neither has a p-value or permutations. "model-bootstrap" is its
    # documented test mode at our alpha: drift when the AUC beats the (1 - alpha)
    # quantile of 100 random classifiers' AUCs on the same test split.
    if name == "model-bootstrap":
        return ModelDriftMethod(bootstrap=True, quantile_probability=1.0 - alpha)
    return {"model": ModelDriftMethod, "mmd": MMDDriftMethod}[name]()


def evidently_drift(ref: np.ndarray, cur: np.ndarray, method: str, report: bool, alpha: float) -> dict:
    """report=False: the drift method alone on DataFrames (what the verdict depends on);
    report=True: what a user runs, Report([EmbeddingsDrift(...)]).run(...), which also
    fits a t-SNE of up to 2,500 rows a side for its plot."""
    start = time.perf_counter()
    if not report:
        score, drifted, _ = evidently_method(method, alpha)(frame(cur), frame(ref))
        return {"seconds": time.perf_counter() - start, "drifted": bool(drifted), "statistic": float(score)}
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import EmbeddingsDrift

    ref_df, cur_df = frame(ref), frame(cur)
    cols = list(ref_df.columns)
    definition = DataDefinition(numerical_columns=cols, embeddings={"queries": cols})
    snapshot = Report([EmbeddingsDrift(embeddings_name="queries", drift_method=evidently_method(method, alpha))]).run(
        current_data=Dataset.from_pandas(cur_df, data_definition=definition),
        reference_data=Dataset.from_pandas(ref_df, data_definition=definition))
    score = float(snapshot.dict()["metrics"][0]["value"])
    threshold = evidently_method(method, alpha).threshold
    return {"seconds": time.perf_counter() - start, "drifted": score > threshold, "statistic": score}


def handle(req: dict) -> dict:
    ref, cur = np.load(req["ref"]), np.load(req["cur"])
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: restart the VmHWM high-water mark
    except OSError:
        pass
    before = rss_mb()[0]
    try:
        if req["op"] == "alibi":
            out = alibi_mmd(ref, cur, req["permutations"], req["alpha"], req.get("seed", 0))
        else:
            out = evidently_drift(ref, cur, req["method"], req.get("report", False), req.get("alpha", 0.01))
    except (MemoryError, RuntimeError) as exc:  # the allocator refused the kernel matrix
        lines = str(exc).splitlines() or [""]
        reason = next((ln for ln in lines if "allocate" in ln), lines[0]).strip()
        prefix = f"{type(exc).__name__}: "
        out = {"error": prefix + reason.removeprefix(prefix)[:300]}
    return {**out, "rss_added_mb": rss_mb()[1] - before, "connections_refused": len(REFUSED)}


def versions() -> dict:
    import alibi_detect
    import evidently
    import sklearn
    import torch

    return {"alibi-detect": alibi_detect.__version__, "evidently": evidently.__version__, "torch": torch.__version__,
            "numpy": np.__version__, "scikit-learn": sklearn.__version__, "torch_threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mem-gb", type=float, default=14.0, help="address-space cap (RLIMIT_AS)")
    args = parser.parse_args()
    refuse_network()
    cap = int(args.mem_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    print("JSON " + json.dumps({"ready": True, "versions": versions(), "mem_gb": args.mem_gb}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        if req["op"] == "quit":
            break
        if req["op"] == "status":
            print("JSON " + json.dumps({"connections_refused": len(REFUSED), "refused": REFUSED[:5]}), flush=True)
            continue
        print("JSON " + json.dumps(handle(req)), flush=True)


if __name__ == "__main__":
    main()
