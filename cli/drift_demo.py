"""`make drift-demo`: the closed loop, unattended, on a home of its own (.drift-demo/).

1. The main job makes a first champion and serves it; the Dagster UI and daemon start
   with the sensors on.
2. In-distribution traffic (questions like the ones the champion was evaluated on): the
   drift checks say "not enough data", then "no drift"; nothing retrains.
3. Documents on a new topic land in the inbox: the new_documents sensor refreshes the
   index incrementally and redeploys, without training.
4. Questions on the new topic: the drift check flags the queries, the drift sensor starts
   one retrain, which refreshes data, trains, evaluates, passes (or fails) the gate and
   redeploys. The champion changes only past the gate.

It prints a timeline and the answer quality on the new topic before the documents came,
after the index refresh, and after the retrain.
"""

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from importlib.resources import files
from pathlib import Path

from cli import commands
from driftloop.layout import Layout

NEW_TOPIC = Path("deploy") / "demo" / "new_topic"
NATURAL = [
    "How does Quokka compact sorted runs?", "What is the default block cache size in Quokka?",
    "How does Quokka elect a new leader after failover?", "Which port does Quokka expose metrics on?",
    "How are deletes handled in Quokka?", "What compression does Quokka use for data blocks?",
    "How often is the Quokka journal fsynced?", "How does a Quokka read use bloom filters?",
    "What does the max_lag_ms option of Quokka do?", "How do I take a backup of Quokka?",
    "What happens when Quokka reaches its memory limit?", "Can Quokka do rolling upgrades?",
    "How big is the Quokka memtable before it is flushed?", "How fast may Quokka compaction write?",
]


def stamp() -> str:
    return datetime.now(UTC).strftime("%H:%M:%S")


class Timeline:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def add(self, what: str) -> None:
        self.events.append((stamp(), what))
        print(f"[{self.events[-1][0]}] {what}", flush=True)


def ask(port: int, question: str) -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/answer", data=json.dumps({"question": question, "max_new_tokens": 48}).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return json.loads(response.read())
    except OSError as err:
        return {"error": str(err)}


def send(port: int, questions: list[str], clients: int = 4) -> list[dict]:
    with ThreadPoolExecutor(clients) as pool:
        return list(pool.map(lambda q: ask(port, q), questions))


def quality(port: int, pairs: list[dict], embedder) -> dict:
    """Mean cosine of answers to reference answers, and how often a new-topic document was cited."""
    answers = send(port, [p["question"] for p in pairs])
    ok = [(a, p) for a, p in zip(answers, pairs, strict=True) if "answer" in a]
    if not ok:
        return {"similarity": float("nan"), "cited_new_docs": float("nan"), "answered": 0}
    vectors = embedder.encode([a["answer"] for a, _ in ok] + [p["answer"] for _, p in ok])
    n = len(ok)
    similarity = float((vectors[:n] * vectors[n:]).sum(axis=1).mean())
    cited = sum(any(str(c.get("doc_id", "")).startswith("inbox/") for c in a.get("chunks", [])) for a, _ in ok) / n
    return {"similarity": round(similarity, 3), "cited_new_docs": round(cited, 2), "answered": n,
            "model": ok[0][0].get("model_version")}


def latest(instance, key_path: list[str]):
    import dagster as dg

    records = instance.fetch_materializations(dg.AssetKey(key_path), limit=1, ascending=False).records
    if not records:
        return None, {}
    return records[0].storage_id, {k: v.value for k, v in records[0].asset_materialization.metadata.items()}


def sensor_verdict(instance, storage_id: int) -> str | None:
    """What the drift_retrain sensor said on the tick that first read the report stored as
    `storage_id`: the runs it requested, or its skip reason. The tick is found by its cursor,
    not its clock: a tick that starts after the report's event time can still run before the
    event is committed, and would then rightly say it saw nothing new."""
    state = next((s for s in instance.all_instigator_state() if s.name == "drift_retrain"), None)
    if state is None:
        return None

    def seen(tick) -> int:
        try:
            return int(json.loads(tick.cursor or "{}").get("seen") or -1)
        except (ValueError, AttributeError):
            return -1

    ticks = [t for t in instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=50)
             if t.is_completed and seen(t) >= storage_id]
    if not ticks:
        return None
    tick = min(ticks, key=lambda t: t.timestamp)
    return f"requested {', '.join(tick.run_keys)}" if tick.run_keys else f"skipped: {tick.skip_reason}"


def wait_for(condition, what: str, timeout: float, poll: float = 5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    raise SystemExit(f"drift-demo: gave up waiting {timeout:.0f}s for {what}")


def main() -> int:
    from cli.demo import Group, project_root, stop_all, wait_http

    root = project_root()

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--home", type=Path, default=root / ".drift-demo")
    parser.add_argument("--ui-port", type=int, default=3100)
    parser.add_argument("--port", type=int, default=3101)
    parser.add_argument("--traffic", type=int, default=60, help="requests per traffic phase")
    parser.add_argument("--train-steps", type=int, default=16)
    parser.add_argument("--eval-questions", type=int, default=16, help="at least the gate's min_questions (16)")
    parser.add_argument("--fresh", action="store_true", help="start from an empty home")
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--sensor-interval", type=int, default=15, help="seconds between ticks of each sensor")
    parser.add_argument("--run-config", type=Path, help="YAML merged over the demo's run config (per op), for the main job and every retrain")
    args = parser.parse_args()
    home = args.home.resolve()
    if args.fresh and home.exists():
        shutil.rmtree(home)
    (home / "dagster_home").mkdir(parents=True, exist_ok=True)
    (home / "dagster_home" / "dagster.yaml").write_bytes((files("orchestration") / "dagster.yaml").read_bytes())
    inbox = Layout.at(home, {}).inbox
    if inbox.exists():
        shutil.rmtree(inbox)
    config = {"ops": {
        "training__lora_adapter": {"config": {"max_steps": args.train_steps}},
        "evaluation__eval_report": {"config": {"max_questions": args.eval_questions, "judge": "none"}},
    }}
    if args.run_config:
        import yaml

        for op, extra in (yaml.safe_load(args.run_config.read_text(encoding="utf-8")) or {}).get("ops", {}).items():
            config["ops"].setdefault(op, {"config": {}})["config"].update(extra.get("config", {}))
    config_path = home / "retrain.yaml"
    config_path.write_text(json.dumps(config), encoding="utf-8")
    env = {"DRIFTLOOP_HOME": str(home), "DAGSTER_HOME": str(home / "dagster_home"), "DRIFTLOOP_SERVE_PORT": str(args.port),
           "DRIFTLOOP_SENSORS": "running", "DRIFTLOOP_SENSOR_INTERVAL_S": str(args.sensor_interval), "DRIFTLOOP_DRIFT_CHECK_EVERY": str(args.traffic // 2),
           "DRIFTLOOP_RUN_CONFIG": str(config_path), "DRIFTLOOP_INBOX_DIR": str(inbox)}
    os.environ.update(env)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    import dagster as dg

    from driftloop.data.corpus import read_directory
    from driftloop.data.qa import derive_qa_pairs
    from driftloop.serving.supervisor.client import SupervisorClient
    from orchestration.definitions import defs as load_defs
    from resources.registry import ModelRegistry
    from sensors.drift import config_for_job

    # The sensors give each job the ops it has from the shared file; the main job, run here, likewise.
    pipeline_config = home / "pipeline.yaml"
    defs = load_defs()
    pipeline_config.write_text(json.dumps(config_for_job(config, defs.get_repository_def().get_job("driftloop_pipeline"))), encoding="utf-8")
    timeline = Timeline()
    ui = Group(commands.ui(args.ui_port), home / "dagster-dev.log")
    try:
        wait_http(f"http://127.0.0.1:{args.ui_port}/server_info", ui, timeout=240)
        timeline.add(f"Dagster UI and daemon up: http://127.0.0.1:{args.ui_port} (sensors on)")
        instance = dg.DagsterInstance.get()
        if ModelRegistry().registry().champion() is None:
            timeline.add("no champion yet: running the main job once")
            run = subprocess.run(commands.launch(job="driftloop_pipeline", config=pipeline_config))
            if run.returncode != 0 or ModelRegistry().registry().champion() is None:
                raise SystemExit("drift-demo: the main job did not produce a served champion; see the UI")
        else:
            subprocess.run([sys.executable, "-c", f"from cli.serve import deploy_champion; raise SystemExit(deploy_champion({args.port}))"],
                           check=True)
        first = ModelRegistry().registry().champion().version
        timeline.add(f"champion {first} serving on http://127.0.0.1:{args.port}")

        # The answers are scored with the embedding model the pipeline was configured with.
        resources = defs.resources
        embedder = resources["models"].embedder()
        qa = [json.loads(line) for line in resources["dvc"].dataset_path("qa_pairs").read_text().splitlines()]
        rng = random.Random(0)
        # In-distribution means drawn from what the drift reference is drawn from (every QA
        # question): repeats of the eval split alone are a quarter of the reference's topics,
        # which the MMD and the domain classifier rightly tell apart on a small corpus.
        in_dist = [r["question"] for r in rng.choices(qa, k=args.traffic)]
        topic = [p.to_row() for p in derive_qa_pairs(read_directory(NEW_TOPIC, 10**6).documents)]

        def reports_since(storage_id):
            records = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=dg.AssetKey(["monitoring", "drift_report"]),
                                                                            after_storage_id=storage_id), limit=50, ascending=True).records
            return [{**{k: v.value for k, v in r.asset_materialization.metadata.items()}, "stored_at": r.timestamp, "storage_id": r.storage_id}
                    for r in records]

        mark, _ = latest(instance, ["monitoring", "drift_report"])
        timeline.add(f"sending {len(in_dist)} in-distribution questions")
        send(args.port, in_dist)
        # A tick can fall just short of the phase's end; the traffic sensor then checks the
        # rest once traffic has paused for DRIFTLOOP_DRIFT_CHECK_IDLE_S (900 s), hence 1200.
        checks = wait_for(lambda: [r for r in reports_since(mark) if r["n_current"] >= args.traffic // 2 * 2 - 5] and reports_since(mark),
                          "the drift check on in-distribution traffic", 1200)
        for report in checks:
            timeline.add(f"drift check: {report['summary']}")
        mark, _ = latest(instance, ["monitoring", "drift_report"])

        before = quality(args.port, topic, embedder)
        timeline.add(f"new-topic quality before its documents exist: {before}")
        deployed = lambda: [json.loads(x) for x in Layout.at(home, {}).deployments.read_text().splitlines()  # noqa: E731
                            if json.loads(x).get("action") == "deployed"]
        n_deploys = len(deployed())
        shutil.copytree(NEW_TOPIC, inbox)
        timeline.add(f"{len(list(inbox.iterdir()))} documents on a new topic added to {inbox}")
        wait_for(lambda: len(deployed()) > n_deploys, "the index refresh and redeploy", 1200)
        refresh = [r for r in instance.get_runs(dg.RunsFilter(tags={"driftloop/trigger": "new_documents"}))]
        timeline.add(f"new_documents sensor: refresh run {refresh[0].run_id[:8] if refresh else '?'} redeployed on the new index "
                     f"({deployed()[-1]['tag']}); champion unchanged: {ModelRegistry().registry().champion().version}")
        refreshed = quality(args.port, topic, embedder)
        timeline.add(f"new-topic quality after the index refresh: {refreshed}")

        shifted = [rng.choice(NATURAL + [p["question"] for p in topic]) for _ in range(args.traffic)]
        timeline.add(f"sending {len(shifted)} questions on the new topic")
        shift_at = time.monotonic()
        send(args.port, shifted)
        drifted = wait_for(lambda: [r for r in reports_since(mark) if r["drifted"]], "a drifted report", 1200)
        timeline.add(f"drift detected: {drifted[0]['summary']}")
        retrain = wait_for(lambda: instance.get_runs(dg.RunsFilter(tags={"driftloop/trigger": "drift"})), "the retrain run", 300)
        timeline.add(f"retrain run {retrain[0].run_id[:8]} started by the drift_retrain sensor (window {retrain[0].tags['driftloop/drift_window']})")
        done = wait_for(lambda: [r for r in instance.get_runs(dg.RunsFilter(run_ids=[retrain[0].run_id])) if r.is_finished], "the retrain", args.timeout)
        # The runs the scenario caused, taken now: the quality probe below is traffic on the
        # new topic too, and may itself start drift checks (and, for the new version's own
        # window, a retrain); those are reported apart, not counted as the shift's.
        def runs_by_trigger(exclude: set[str] = frozenset()) -> dict:
            return {trigger: [{"run_id": r.run_id, "status": r.status.value, "tags": dict(r.tags)}
                              for r in instance.get_runs(dg.RunsFilter(tags={"driftloop/trigger": trigger})) if r.run_id not in exclude]
                    for trigger in ("traffic", "new_documents", "drift")}

        runs = runs_by_trigger()
        gate = latest(instance, ["evaluation", "eval_report"])[1]
        champion = ModelRegistry().registry().champion().version
        timeline.add(f"retrain {done[0].status.value}; gate {'passed' if gate.get('gate_passed') else 'failed'} for {gate.get('challenger')}; "
                     f"champion {'changed to ' + champion if champion != first else 'unchanged: ' + champion}")
        active = (SupervisorClient(f"http://127.0.0.1:{args.port + 1}").status().get("active") or {}).get("name")
        serving_model = deployed()[-1]["model_version"]
        shift_to_serving = round(time.monotonic() - shift_at, 1) if serving_model != first else None
        timeline.add(f"serving {active} (model {serving_model})"
                     + (f": {shift_to_serving:.0f} s from the first new-topic question to the new version serving" if shift_to_serving else ""))
        after = quality(args.port, topic, embedder)
        timeline.add(f"new-topic quality after the retrain: {after}")

        print("\nTimeline", flush=True)
        for at, what in timeline.events:
            print(f"  {at}  {what}")
        print("\nNew-topic answers (mean cosine to the reference answer; share citing a new document)")
        for label, q in (("before the documents", before), ("after the index refresh", refreshed), ("after the retrain", after)):
            print(f"  {label:<24} similarity {q['similarity']:.3f}  cited new docs {q['cited_new_docs']:.2f}  model {q.get('model')}")
        persisting = None
        if serving_model != first:
            # The new version's own window: the topic it was retrained for still differs from
            # the reference, and the drift sensor must not answer it with a retrain on the same
            # data (a loop); it reports the drift as persisting instead.
            mark, _ = latest(instance, ["monitoring", "drift_report"])
            timeline.add(f"sending {args.traffic} more questions on the new topic to the new version")
            send(args.port, [rng.choice(NATURAL + [p["question"] for p in topic]) for _ in range(args.traffic)])
            persisting = wait_for(lambda: [r for r in reports_since(mark) if r["enough_data"] and r["serving"] == serving_model],
                                  "a drift check of the new version's traffic", 1200)[-1]
            skip = wait_for(lambda: sensor_verdict(instance, persisting["storage_id"]), "the drift sensor's verdict on it", 300)
            timeline.add(f"new version's window: {'drifted' if persisting['drifted'] else 'no drift'} "
                         f"(retrained for window {persisting.get('retrained_for_window') or '-'}); drift sensor: {skip}")
            persisting = {**persisting, "sensor": skip}
        later = runs_by_trigger({r["run_id"] for group in runs.values() for r in group})
        for r in later["drift"]:
            print(f"  after the new version went live: retrain {r['run_id'][:8]} ({r['status']}) for window "
                  f"{r['tags'].get('driftloop/drift_window')}: {r['tags'].get('driftloop/drift_reasons')}")
        outcome = {"first_champion": first, "champion": champion, "gate_passed": gate.get("gate_passed"), "challenger": gate.get("challenger"),
                   "serving_model": serving_model, "active": active, "shift_to_serving_s": shift_to_serving,
                   "in_distribution_reports": checks, "drifted_report": drifted[0], "runs": runs, "runs_after_new_version": later,
                   "new_version_report": persisting}
        (home / "timeline.json").write_text(json.dumps({"events": timeline.events, "quality": {"before": before, "refresh": refreshed,
                                                                                              "retrain": after}, "outcome": outcome},
                                                       indent=2, default=str))
        return 0
    except KeyboardInterrupt:
        return 130
    finally:
        stop_all(args.port, ui)


if __name__ == "__main__":
    sys.exit(main())
