"""Overload and redeploy-under-load on a real tiny-model BentoML service over HTTP.

overload(): closed-loop clients at `factor` times the service's concurrency limit for
`seconds`, a prober on /livez and /readyz every half second, and the RSS of the service's
process tree sampled every second. Designed answers are 200, 429 and 503 "overloaded";
anything else (another 5xx, a connection error) is a failure.

redeploy_under_load(): clients call the supervisor's stable port without pause while it
switches between two bentos `switches` times; every non-200 answer is a lost request.
Then the same under overload (`--overload-switches`): `factor` times as many clients as
each backend admits, where 429 and 503 "overloaded" are designed and anything else lost.

    python reliability/load.py --overload-s 180 --switches 6 --overload-switches 3

writes overload.json, redeploy_under_load.json and redeploy_under_overload.json to
artifacts/reliability/."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from serving_helpers import KEY, call  # noqa: E402

QUESTION = {"question": "What does section 2 say about the river?", "max_new_tokens": 24}


def _designed(status: int | None, body: str) -> bool:
    if status in (200, 429):
        return True
    return status == 503 and "overloaded" in body


SHED_BACKOFF_S = 0.02


def rss_by_process(pid: int) -> dict[str, int]:
    """Resident bytes of the service's processes by role: the models worker, the public
    worker, the `bentoml serve` parent; so a growth can be pinned to one of them."""
    import psutil

    out: dict[str, int] = {}
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return out
    for proc in procs:
        try:
            line = " ".join(proc.cmdline())
            role = "models" if "driftloop-models" in line else "rag" if "worker.service" in line else "server"
            out[role] = out.get(role, 0) + proc.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return out


def overload(port: int, pid: int, seconds: float, max_concurrency: int, factor: int = 4) -> dict:
    clients = max_concurrency * factor
    stop = threading.Event()
    statuses: Counter = Counter()
    undesigned: list[str] = []
    health: Counter = Counter()
    rss: list[tuple[float, int]] = []
    by_role: list[dict[str, int]] = []
    latencies: list[float] = []
    lock = threading.Lock()

    def client() -> None:
        while not stop.is_set():
            started = time.perf_counter()
            try:
                status, body = call(port, "/answer", QUESTION)
            except OSError as err:
                status, body = None, repr(err)
            with lock:
                statuses[str(status)] += 1
                if status == 200:
                    latencies.append(time.perf_counter() - started)
                if not _designed(status, body):
                    undesigned.append(f"{status} {body[:200]}")
            if status in (429, 503):
                # A client told to back off waits a moment, as any retrying client does; without
                # it the load generator, on the same two cores, spins on instant 429s and
                # measures its own CPU use rather than the service's.
                time.sleep(SHED_BACKOFF_S)

    def prober() -> None:
        while not stop.is_set():
            for path in ("/livez", "/readyz"):
                try:
                    status = call(port, path, key=None)[0]
                except OSError as err:
                    status = repr(err)[:80]
                health[f"{path} {status}"] += 1
            time.sleep(0.5)

    def sampler() -> None:
        t0 = time.monotonic()
        while not stop.is_set():
            # One walk of the process tree per sample: the total is the sum of the roles.
            sample = rss_by_process(pid)
            rss.append((time.monotonic() - t0, sum(sample.values())))
            by_role.append(sample)
            time.sleep(1.0)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    threads += [threading.Thread(target=prober, daemon=True), threading.Thread(target=sampler, daemon=True)]
    before = sum(rss_by_process(pid).values())
    started = time.monotonic()
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join(timeout=180)
    elapsed = time.monotonic() - started
    recovery_started = time.perf_counter()
    recovery = call(port, "/answer", {"question": "And section 3?", "max_new_tokens": 4})[0]
    recovery_s = time.perf_counter() - recovery_started
    values = [v for _, v in rss]
    # Growth: the last quarter's mean against the first quarter's, after the load began.
    quarter = max(1, len(values) // 4)
    first, last = sum(values[:quarter]) / quarter, sum(values[-quarter:]) / quarter
    # The trend, not only its ends: a pool that fills and stops shows flat late quarters.
    def quarter_means_mb(series: list[int]) -> list[float]:
        return [round(sum(series[i * quarter:(i + 1) * quarter]) / quarter / 2**20, 1) for i in range(4)] if len(series) >= 4 else []

    quarters = quarter_means_mb(values)
    role_mb = {r: quarter_means_mb([s.get(r, 0) for s in by_role]) for r in sorted({r for s in by_role for r in s})}
    served = statuses.get("200", 0)
    latencies.sort()
    return {
        "seconds": round(elapsed, 1), "max_concurrency": max_concurrency, "clients": clients, "load_factor": factor,
        "statuses": dict(statuses), "requests": sum(statuses.values()), "served_per_s": round(served / elapsed, 2),
        "shed_fraction": round(1 - served / max(1, sum(statuses.values())), 3),
        "p50_served_s": round(latencies[len(latencies) // 2], 3) if latencies else None,
        "undesigned": len(undesigned), "undesigned_examples": undesigned[:5], "health": dict(health),
        "rss_mb_before": round(before / 2**20, 1), "rss_mb_max": round(max(values) / 2**20, 1),
        "rss_mb_first_quarter": round(first / 2**20, 1), "rss_mb_last_quarter": round(last / 2**20, 1),
        "rss_growth_pct": round(100 * (last - first) / first, 1), "rss_samples": len(values),
        "rss_mb_quarters": quarters, "rss_mb_quarters_by_process": role_mb,
        "recovery_status": recovery, "recovery_s": round(recovery_s, 2),
    }


def redeploy_under_load(root: Path, tiny_llama: str, tiny_embedding_model: str, switches: int, clients: int = 4,
                        bundle=None, max_concurrency: int | None = None) -> dict:
    """With `max_concurrency`, each backend sheds past that many requests in flight and the
    clients exceed it: then a 429 or a 503 "overloaded" is a designed answer, and only
    anything else (a 502, a connection error) is a lost request."""
    from serving_helpers import make_bundle

    from driftloop.serving.bento import build_bento, serve_command, serve_env
    from driftloop.serving.bundle import build_bundle
    from driftloop.serving.supervisor.client import ensure_supervisor
    from driftloop.serving.supervisor.processes import free_port

    bundle = bundle or make_bundle(root, tiny_llama, tiny_embedding_model)
    base_only = build_bundle(root / "bundles", base_model=bundle.spec["base_model"], adapter=None, adapter_version=None,
                             index_folder=bundle.index_dir, embedding_model=tiny_embedding_model, prompt_version="rag.v1",
                             settings=bundle.spec["settings"])
    bentos = [(build_bento(b, root), b.model_version) for b in (bundle, base_only)]
    port = free_port()
    supervisor = ensure_supervisor(port, free_port(), root / "supervisor-load")
    limits = {"DRIFTLOOP_MAX_CONCURRENCY": str(max_concurrency)} if max_concurrency else {}
    env = serve_env(root, {"DRIFTLOOP_API_KEY": KEY, "DRIFTLOOP_WARMUP_REQUESTS": "2", **limits})
    stop, lock = threading.Event(), threading.Lock()
    seen: Counter = Counter()
    shed: Counter = Counter()
    failures: list[str] = []
    deploys: list[dict] = []

    def client() -> None:
        while not stop.is_set():
            try:
                status, body = call(port, "/answer", {"question": "What does section 1 say?", "max_new_tokens": 4})
            except OSError as err:
                status, body = None, repr(err)
            with lock:
                if status == 200:
                    seen[json.loads(body)["model_version"]] += 1
                elif max_concurrency and _designed(status, body):
                    shed[str(status)] += 1
                else:
                    failures.append(f"{status} {body[:200]}")
            if status in (429, 503):
                time.sleep(SHED_BACKOFF_S)

    started = time.monotonic()
    try:
        backend = free_port()
        supervisor.deploy(bentos[0][0], serve_command(bentos[0][0], backend), backend, env=env, cwd=str(root))
        threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
        for thread in threads:
            thread.start()
        time.sleep(2)
        for i in range(switches):
            tag, version = bentos[(i + 1) % 2]
            backend = free_port()
            outcome = supervisor.deploy(tag, serve_command(tag, backend), backend, env=env, cwd=str(root))
            with lock:
                count_before = sum(seen.values())
            time.sleep(1.5)
            for _ in range(100):  # under overload the probe waits its turn like any client
                status, body = call(port, "/answer", {"question": "Which version?", "max_new_tokens": 2})
                if status not in (429, 503):
                    break
                time.sleep(0.1)
            deploys.append({"to": version, "action": outcome["action"], "seconds": outcome.get("seconds"), "drained": outcome.get("drained"),
                            "serving_after": json.loads(body)["model_version"] if status == 200 else status, "requests_before": count_before})
        stop.set()
        for thread in threads:
            thread.join(timeout=150)
    finally:
        stop.set()
        supervisor.shutdown()
    return {"switches": switches, "clients": clients, "max_concurrency": max_concurrency, "requests_ok": sum(seen.values()),
            "requests_shed": dict(shed), "requests_failed": len(failures),
            "failure_examples": failures[:5], "answers_per_version": dict(seen), "deploys": deploys,
            "seconds": round(time.monotonic() - started, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--overload-s", type=float, default=180)
    parser.add_argument("--max-concurrency", type=int, default=2)
    parser.add_argument("--factor", type=int, default=4)
    parser.add_argument("--switches", type=int, default=6)
    parser.add_argument("--overload-switches", type=int, default=3,
                        help="switches with the clients at --factor times each backend's --max-concurrency")
    args = parser.parse_args()
    os.environ.setdefault("DRIFTLOOP_RELIABILITY_REPORT", str(ROOT / "artifacts" / "reliability"))
    from serving_helpers import build_tiny_models, make_bundle, record_figures, serve

    work = Path(tempfile.mkdtemp(prefix="driftloop-load-"))
    llama, embedder = build_tiny_models(work / "models")
    bundle = make_bundle(work, llama, embedder)
    ok = True
    if args.overload_s:
        with serve(work, bundle, {"DRIFTLOOP_MAX_CONCURRENCY": str(args.max_concurrency), "DRIFTLOOP_WARMUP_REQUESTS": "2"}) as running:
            figures = record_figures("overload", overload(running["port"], running["proc"].pid, args.overload_s, args.max_concurrency, args.factor))
        ok &= figures["undesigned"] == 0 and figures["recovery_status"] == 200 and set(figures["health"]) == {"/livez 200", "/readyz 200"}
    if args.switches:
        figures = record_figures("redeploy_under_load", redeploy_under_load(work, llama, embedder, args.switches, bundle=bundle))
        ok &= figures["requests_failed"] == 0
    if args.overload_switches:
        figures = record_figures("redeploy_under_overload", redeploy_under_load(
            work, llama, embedder, args.overload_switches, clients=args.max_concurrency * args.factor, bundle=bundle,
            max_concurrency=args.max_concurrency))
        ok &= figures["requests_failed"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
