"""Shadow mode on the real models: what a challenger answering a copy of live traffic
costs the requests that are served, and how its answers compare with the champion's.

It needs a home whose registry holds a champion and another adapter version; the drift
demo leaves one (`make drift-demo`: the first champion and the retrained version). Every
step goes through the product: the champion is deployed and the shadow started and
stopped by materializing `serving/deployment` and `serving/shadow` with the dagster CLI,
and the comparison is the `shadow` metadata of today's `monitoring/inference_log`.

The same questions are sent twice by the same closed-loop clients: without a shadow (the
baseline), then with the challenger shadowing.

    python bench/shadow.py --home .drift-demo --requests 48 --clients 4

RESULT primary_p50_s=<with the shadow> baseline=<without> ratio=<without/with, >1 is better>
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cli import commands  # noqa: E402


def ask(port: int, question: str, max_new_tokens: int) -> tuple[int, float]:
    body = json.dumps({"question": question, "max_new_tokens": max_new_tokens}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/answer", data=body, headers={"Content-Type": "application/json"})
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            response.read()
            status = response.status
    except urllib.error.HTTPError as err:
        status = err.code
    except OSError:
        status = 0
    return status, time.perf_counter() - started


def phase(port: int, questions: list[str], clients: int, max_new_tokens: int) -> dict:
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        answers = list(pool.map(lambda q: ask(port, q, max_new_tokens), questions))
    elapsed = time.perf_counter() - started
    latencies = sorted(s for status, s in answers if status == 200)

    def pct(p: float) -> float | None:
        return round(latencies[min(len(latencies) - 1, int(p * len(latencies)))], 3) if latencies else None

    return {"requests": len(answers), "ok": len(latencies), "failed": len(answers) - len(latencies), "seconds": round(elapsed, 1),
            "per_s": round(len(latencies) / elapsed, 3), "p50_s": pct(0.5), "p99_s": pct(0.99)}


def materialize(select: str, config: dict | None = None, partition: str | None = None) -> None:
    command = commands.launch(assets=select, config_json=config or None, partition=partition)
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"bench/shadow: materializing {select} failed:\n{(done.stdout + done.stderr)[-4000:]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, default=ROOT / ".drift-demo")
    parser.add_argument("--port", type=int, default=3201)
    parser.add_argument("--challenger", default="", help="adapter version to shadow; default: the newest one that is not the champion")
    parser.add_argument("--requests", type=int, default=48)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    args = parser.parse_args()
    home = args.home.resolve()
    if not (home / "dagster_home" / "dagster.yaml").is_file():
        raise SystemExit(f"bench/shadow: {home} holds no Dagster home; run `make drift-demo` first (or pass --home)")
    os.environ.update({"DRIFTLOOP_HOME": str(home), "DAGSTER_HOME": str(home / "dagster_home"), "DRIFTLOOP_SERVE_PORT": str(args.port)})

    import dagster as dg

    from bench.common import machine
    from assets.monitoring import INFERENCE_LOG
    from driftloop.serving.supervisor.client import SupervisorClient
    from orchestration.definitions import defs as load_defs
    from resources.registry import ModelRegistry

    defs = load_defs()

    registry = ModelRegistry().registry()
    champion = registry.champion()
    if champion is None:
        raise SystemExit(f"bench/shadow: no champion in {home}; run `make drift-demo` first")
    others = [v for v in registry.versions() if v != champion.version]
    challenger = args.challenger or (others[-1] if others else "")
    if not challenger:
        raise SystemExit(f"bench/shadow: the registry in {home} holds only the champion; a shadow needs a second adapter version")
    dvc = defs.resources["dvc"]
    qa = [json.loads(line) for line in dvc.dataset_path("qa_pairs").read_text().splitlines()]
    questions = [r["question"] for r in qa if r["split"] == "eval"][: args.requests]
    print(f"machine: {machine()}; champion {champion.version}, challenger {challenger}; {len(questions)} questions, "
          f"{args.clients} clients, {args.max_new_tokens} new tokens", flush=True)

    client = SupervisorClient(f"http://127.0.0.1:{args.port + 1}")
    try:
        materialize("serving/bento,serving/deployment", {"resources": {"deployer": {"config": {"port": args.port}}}})
        phase(args.port, questions[: args.clients], args.clients, args.max_new_tokens)  # warm-up, not counted
        alone = phase(args.port, questions, args.clients, args.max_new_tokens)
        print(f"without a shadow: {alone}", flush=True)

        started = datetime.now(UTC)
        materialize("serving/shadow", {"ops": {"serving__shadow": {"config": {"challenger_version": challenger}}}})
        shadow_ready_s = round((datetime.now(UTC) - started).total_seconds(), 1)
        shadowed = phase(args.port, questions, args.clients, args.max_new_tokens)
        print(f"with {challenger} shadowing (ready after {shadow_ready_s} s): {shadowed}", flush=True)
        # The copies still in flight are allowed to finish, so every pair is in the log.
        deadline = time.monotonic() + 600
        mirror, copies, still = {}, -1, 0
        while time.monotonic() < deadline:
            mirror = client.status().get("shadow") or {}
            # A shadow adapter in the serving process: its copies are done when the log stops growing.
            logged = [json.loads(line) for path in (home / "data" / "serving" / "requests").glob("date=*/*.jsonl")
                      for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
            now = sum(r.get("role") == "shadow" and r.get("model_version") == challenger and r["at"] >= started.isoformat() for r in logged)
            still, copies = (still + 1, now) if now == copies else (0, now)
            if mirror.get("in_flight", 0) == 0 and (mirror or now >= len(questions) or still >= 15):
                break
            time.sleep(1)
        print(f"shadow answers logged: {copies} of {len(questions)} requests", flush=True)
        materialize("serving/shadow", {"ops": {"serving__shadow": {"config": {"stop": True}}}})
        day = datetime.now(UTC).strftime("%Y-%m-%d")
        materialize("monitoring/inference_log", partition=day)
        event = dg.DagsterInstance.get().get_latest_materialization_event(INFERENCE_LOG)
        comparison = event.asset_materialization.metadata["shadow"].value if event and event.asset_materialization else {}
    finally:
        if client.alive():
            client.shutdown()

    figures = {"at": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine(), "champion": champion.version,
               "challenger": challenger, "clients": args.clients, "max_new_tokens": args.max_new_tokens, "without_shadow": alone,
               "with_shadow": shadowed, "shadow_ready_s": shadow_ready_s, "mirror": mirror, "comparison": comparison}
    out = ROOT / "artifacts" / "bench" / "shadow.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2))
    print(f"mirror: {mirror}\ncomparison (monitoring/inference_log): {json.dumps(comparison)}")
    ok = alone["failed"] == 0 and shadowed["failed"] == 0 and comparison.get("pairs", 0) > 0
    ratio = alone["p50_s"] / shadowed["p50_s"] if alone["p50_s"] and shadowed["p50_s"] else float("nan")
    print(f"RESULT primary_p50_s={shadowed['p50_s']} baseline={alone['p50_s']} ratio={ratio:.2f}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
