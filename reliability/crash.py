"""kill -9 of the step subprocess in the middle of training, embedding and deployment, at
random points, on the product's own assets (reliability/crash_defs.py) with tiny models,
a real SQLite Dagster instance, a real supervisor and real BentoML services.

After every kill: the run is retried (training: the asset's RetryPolicy, in the same run;
embedding and deployment have none, so the failed run is re-executed from its failed step,
as Dagster's run retries would), training resumes from its last checkpoint, every
published version folder of the registry and the retrieval store verifies against its
manifest, and during a killed deployment the stable port keeps answering.

    python reliability/crash.py --train-kills 8 --embed-kills 6 --deploy-kills 6

writes artifacts/reliability/crash_recovery.json (or $DRIFTLOOP_RELIABILITY_REPORT)."""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from serving_helpers import KEY, build_tiny_models, call, make_bundle, record_figures  # noqa: E402

TRAIN = {"max_steps": 120, "batch_size": 4, "max_seq_length": 256, "checkpoint_every": 10, "warmup_steps": 1, "min_examples": 4}


class CrashLab:
    def __init__(self, root: Path, seed: int = 0) -> None:
        import dagster as dg

        from conftest import write_corpus

        self.root, self.rng = Path(root), random.Random(seed)
        self.project, self.dagster_home = self.root / "project", self.root / "dagster_home"
        self.dagster_home.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / "orchestration" / "dagster.yaml", self.dagster_home / "dagster.yaml")
        llama, embedder = build_tiny_models(self.root / "models")
        self.models = {"llama": llama, "embedder": embedder}
        self.corpus = write_corpus(self.root / "corpus", n_docs=64)
        self.env = {**os.environ, "DAGSTER_HOME": str(self.dagster_home), "DRIFTLOOP_HOME": str(self.project),
                    "DRIFTLOOP_CRASH_MODELS": json.dumps(self.models), "PYTHONPATH": str(ROOT), "DRIFTLOOP_API_KEY": KEY,
                    "DRIFTLOOP_WARMUP_REQUESTS": "2", "BENTOML_DO_NOT_TRACK": "true"}
        os.environ["DAGSTER_HOME"] = str(self.dagster_home)
        self.instance = dg.DagsterInstance.get()
        self.config_n = 0
        self.stores: list[Path] = []

    # -- running jobs --------------------------------------------------------------------------
    def config(self, deploy_port: int | None = None, **ops) -> dict:
        store = self.project / "retrieval" / f"store-{len(self.stores)}"
        resources = {"vector_store": {"config": {"root": str(store)}}}
        if deploy_port is not None:
            resources["deployer"] = {"config": {"port": deploy_port, "ready_timeout_s": 300}}
        return {"ops": ops, "resources": resources}

    def launch(self, job: str, run_config: dict | None = None, from_failure: str | None = None) -> subprocess.Popen:
        self.config_n += 1
        path = self.root / f"config-{self.config_n}.json"
        path.write_text(json.dumps(run_config or {}))
        argv = [sys.executable, str(ROOT / "reliability" / "crash_defs.py"), job, str(path)]
        if from_failure:
            argv += ["--from-failure", from_failure]
        log = open(self.root / f"worker-{self.config_n}.log", "wb")
        return subprocess.Popen(argv, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT)

    def finish(self, proc: subprocess.Popen, timeout: float = 600) -> dict:
        proc.wait(timeout=timeout)
        out = (self.root / f"worker-{self.config_n}.log").read_text(errors="replace")
        last = [line for line in out.splitlines() if line.startswith('{"run_id"')]
        assert proc.returncode == 0 and last, out[-3000:]
        return json.loads(last[-1])

    def run(self, job: str, run_config: dict | None = None, from_failure: str | None = None) -> dict:
        return self.finish(self.launch(job, run_config, from_failure))

    def newest_run(self, job: str, since: float, timeout: float = 120) -> str:
        import dagster as dg

        deadline = time.time() + timeout
        while time.time() < deadline:
            records = self.instance.get_run_records(dg.RunsFilter(job_name=job), limit=1)
            if records and records[0].create_timestamp.timestamp() >= since - 1:
                return records[0].dagster_run.run_id
            time.sleep(0.2)
        raise TimeoutError(f"no {job} run started")

    def attempts(self, run_id: str) -> list[tuple[int, list]]:
        """Each attempt of the run's step: its subprocess pid and the events logged after it started."""
        logs = self.instance.all_logs(run_id)
        starts = [i for i, e in enumerate(logs) if e.dagster_event is not None and e.dagster_event.event_type_value in {"STEP_START", "STEP_RESTARTED"}]
        return [(logs[i].dagster_event.pid, logs[i + 1:(starts[n + 1] if n + 1 < len(starts) else len(logs))]) for n, i in enumerate(starts)]

    def wait_attempt(self, run_id: str, n: int, match, proc: subprocess.Popen, timeout: float = 300):
        """(pid, first matching event) of the n-th attempt of the run's step, or None if the run ended first.

        Times out only after `timeout` seconds without a new event: a slow CPU takes longer
        to reach a late training step, but a run that still logs is not stuck."""
        deadline, seen = time.time() + timeout, -1
        while time.time() < deadline:
            attempts = self.attempts(run_id)
            if len(attempts) > n:
                pid, events = attempts[n]
                hit = next((e for e in events if match(e)), None)
                if hit is not None:
                    return pid, hit
                if len(events) > seen:
                    deadline, seen = time.time() + timeout, len(events)
            if proc.poll() is not None:
                return None
            time.sleep(0.1)
        raise TimeoutError(f"run {run_id}: attempt {n} logged nothing for {timeout:.0f} s before the awaited event")

    def kill_at_random(self, pid: int, window_s: float, still_running) -> float | None:
        """SIGKILL `pid` after a random delay within window_s, if it is still at work then."""
        delay = self.rng.uniform(0.2, window_s)
        time.sleep(delay)
        if not still_running():
            return None
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return None
        return delay

    # -- setup ---------------------------------------------------------------------------------
    def setup(self) -> None:
        result = self.run("setup", self.config(**{"data__source_documents": {"config": {"source": str(self.corpus)}},
                                                  "data__qa_pairs": {"config": {"eval_fraction": 0.3}},
                                                  # No index here (the harness kills the embedding step): sections as contexts.
                                                  "data__instruction_dataset": {"config": {"contexts": "gold"}},
                                                  "retrieval__chunks": {"config": {"chunk_tokens": 16, "overlap_tokens": 2}}}))
        assert result["success"], result

    # -- checks --------------------------------------------------------------------------------
    def artifact_problems(self) -> tuple[list[str], int, int]:
        """Published folders that fail their manifest, pointers to a missing or bad version,
        checkpoints without state; and the counts of verified folders and leftover staging."""
        from driftloop.artifacts import ArtifactError, verify

        problems, verified, staging = [], 0, 0
        roots = [self.project / "artifacts" / "registry" / "adapters", *self.stores]
        folders: set[Path] = set()
        for root in roots:
            if not root.is_dir():
                continue
            if root.name == "adapters":
                folders |= {p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}
            for pointer in root.rglob("current.json"):
                folders |= {p for p in pointer.parent.iterdir() if p.is_dir() and not p.name.startswith(".")}
                target = pointer.parent / json.loads(pointer.read_text())["version"]
                if not target.is_dir():
                    problems.append(f"{pointer} names a missing version")
            staging += sum(1 for p in root.rglob(".staging-*"))
        for folder in sorted(folders):
            try:
                verify(folder)
                verified += 1
            except ArtifactError as err:
                problems.append(str(err))
        for step in (self.project / "artifacts" / "registry" / "checkpoints").glob("*/step-*"):
            if not all((step / name).exists() for name in ("state.json", "trainer.pt", "adapter")):
                problems.append(f"incomplete checkpoint {step}")
        return problems, verified, staging

    def checkpoint_step(self) -> int:
        done = [int(p.name.split("-")[1]) for p in (self.project / "artifacts" / "registry" / "checkpoints").glob("*/step-*")
                if (p / "state.json").is_file()]
        return max(done, default=0)

    # -- training --------------------------------------------------------------------------------
    def train_round(self, kills: int, **overrides) -> list[dict]:
        """One training run; its step is killed `kills` times (the asset retries twice).
        `overrides` change TRAIN's settings (fewer steps for a quick check)."""
        started = time.time()
        train = {**TRAIN, **overrides}
        proc = self.launch("train", self.config(training__lora_adapter={"config": train}))
        run_id = self.newest_run("train", started)
        total, outcomes = train["max_steps"], []
        first_step = lambda e: e.user_message.startswith("step ") and "/" in e.user_message  # noqa: E731
        for n in range(kills):
            found = self.wait_attempt(run_id, n, first_step, proc)
            if found is None:
                break
            pid, first = found
            # A random point in the steps still to run (the kill lands right after that step's log).
            start = int(first.user_message.split()[1].split("/")[0])
            target = self.rng.randint(min(start + 1, total - 2), total - 2)
            hit = self.wait_attempt(run_id, n, lambda e, t=target: e.user_message.startswith(f"step {t}/"), proc)
            delay = None
            if hit is not None and hit[0] == pid and not any(e.user_message.startswith(f"step {total}/") for e in self.attempts(run_id)[n][1]):
                try:
                    os.kill(pid, signal.SIGKILL)
                    delay = target
                except ProcessLookupError:
                    pass
            if delay is None:
                outcomes.append({"stage": "train", "killed": False})
                continue
            time.sleep(0.5)
            at_checkpoint = self.checkpoint_step()
            problems, verified, staging = self.artifact_problems()
            retry = self.wait_attempt(run_id, n + 1, first_step, proc)
            resumed = int(retry[1].user_message.split()[1].split("/")[0]) - 1 if retry is not None else None
            outcomes.append({"stage": "train", "killed": True, "after_step": delay, "checkpoint_at_kill": at_checkpoint,
                             "resumed_from": resumed, "artifact_problems": problems, "verified_folders": verified, "staging_left": staging})
        result = self.finish(proc)
        meta = self._last_materialization(["training", "lora_adapter"], run_id)
        for outcome in outcomes:
            outcome.update(run_success=result["success"], run_id=run_id)
        if outcomes and meta is not None:
            outcomes[-1]["final_resumed_from_step"] = meta.get("resumed_from_step")
        for outcome in outcomes:
            outcome["recovered"] = bool(outcome["killed"] and result["success"] and not outcome["artifact_problems"]
                                        and outcome["resumed_from"] == outcome["checkpoint_at_kill"]
                                        and not self.artifact_problems()[0])
        return outcomes

    def _last_materialization(self, key: list[str], run_id: str) -> dict | None:
        import dagster as dg

        event = self.instance.get_latest_materialization_event(dg.AssetKey(key))
        if event is None or event.run_id != run_id:
            return None
        return {k: v.value for k, v in event.asset_materialization.metadata.items()}

    # -- embedding -------------------------------------------------------------------------------
    def embed_round(self) -> dict:
        self.stores.append(self.project / "retrieval" / f"store-{len(self.stores)}")
        started = time.time()
        config = self.config()
        config["resources"]["vector_store"]["config"]["root"] = str(self.stores[-1])
        proc = self.launch("embed", config)
        run_id = self.newest_run("embed", started)
        found = self.wait_attempt(run_id, 0, lambda e: e.user_message.startswith("embedded "), proc)
        assert found is not None, "the embedding step never started"
        total = int(found[1].user_message.split()[1].split("/")[1])
        # A random point of the pass: right after one of its progress lines (every 20 chunks).
        target = self.rng.randrange(20, max(21, total - 20), 20)
        hit = self.wait_attempt(run_id, 0, lambda e: e.user_message.startswith(f"embedded {target}/"), proc)
        done = any("chunks embedded" in e.user_message for e in self.instance.all_logs(run_id))
        delay = None
        if hit is not None and not done:
            os.kill(found[0], signal.SIGKILL)
            delay = target / total
        first = self.finish(proc)
        problems, verified, staging = self.artifact_problems()
        outcome = {"stage": "embed", "killed": delay is not None, "at_fraction": round(delay or 0, 2), "first_run_success": first["success"],
                   "artifact_problems": problems, "verified_folders": verified, "staging_left": staging}
        if delay is None:
            return outcome
        if first["success"]:
            # The step's retry policy ran it again inside the same run.
            outcome.update(retried_in_run=True, retry_success=True, retry_problems=problems)
            outcome["recovered"] = not problems
            return outcome
        retried = self.run("embed", from_failure=first["run_id"])
        problems = self.artifact_problems()[0]
        meta = self._last_materialization(["retrieval", "embeddings"], retried["run_id"])
        outcome.update(retry_success=retried["success"], retry_problems=problems, embedded=(meta or {}).get("embedded"))
        outcome["recovered"] = bool(retried["success"] and not outcome["artifact_problems"] and not problems)
        return outcome

    # -- deployment ------------------------------------------------------------------------------
    def build_bentos(self) -> list[dict]:
        from driftloop.serving.bento import build_bento
        from driftloop.serving.bundle import build_bundle

        bundle = make_bundle(self.root / "bundle-src", self.models["llama"], self.models["embedder"])
        base_only = build_bundle(self.root / "bundle-src" / "bundles", base_model=bundle.spec["base_model"], adapter=None, adapter_version=None,
                                 index_folder=bundle.index_dir, embedding_model=self.models["embedder"], prompt_version="rag.v1",
                                 settings=bundle.spec["settings"])
        return [{"tag": build_bento(b, self.project), "model_version": b.model_version} for b in (bundle, base_only)]

    def record_bento(self, bento: dict) -> None:
        from reliability.crash_defs import get_job

        result = get_job("bento").execute_in_process(run_config={**self.config(), "ops": {"serving__bento": {"config": bento}}}, instance=self.instance)
        assert result.success

    def deploy_round(self, port: int, bento: dict, window_s: float) -> dict:
        self.record_bento(bento)
        started = time.time()
        proc = self.launch("deploy", self.config(deploy_port=port))
        run_id = self.newest_run("deploy", started)
        deadline = time.time() + 300
        while not self.attempts(run_id):
            assert time.time() < deadline and proc.poll() is None, "the deployment step never started"
            time.sleep(0.1)
        found = self.attempts(run_id)[0]
        done = lambda: any(e.dagster_event is not None and e.dagster_event.event_type_value in {"STEP_SUCCESS", "STEP_FAILURE"}  # noqa: E731
                           for e in self.instance.all_logs(run_id))
        delay = self.kill_at_random(found[0], window_s, lambda: not done())
        first = self.finish(proc)
        outcome = {"stage": "deploy", "killed": delay is not None, "after_s": round(delay or 0, 2), "first_run_success": first["success"],
                   "tag": bento["tag"]}
        if delay is not None and first["success"]:
            # The step's retry policy ran it again inside the same run.
            outcome.update(retried_in_run=True, retry_success=True)
        elif delay is not None:
            retried = self.run("deploy", from_failure=first["run_id"])
            meta = self._last_materialization(["serving", "deployment"], retried["run_id"]) or {}
            outcome.update(retry_success=retried["success"], action=meta.get("action"))
        status, body = call(port, "/answer", {"question": "What does section 1 say?", "max_new_tokens": 2})
        outcome["serving_after"] = json.loads(body).get("model_version") if status == 200 else f"HTTP {status}"
        outcome["recovered"] = bool(delay is not None and outcome.get("retry_success")
                                    and outcome["serving_after"] == bento["model_version"])
        return outcome


class Traffic:
    """Clients calling the stable port without pause; every non-200 answer or connection error is a failure."""

    def __init__(self, port: int, clients: int = 2) -> None:
        self.port, self.stop, self.ok, self.failures, self.versions = port, threading.Event(), 0, [], {}
        self.threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(clients)]

    def _loop(self) -> None:
        while not self.stop.is_set():
            try:
                status, body = call(self.port, "/answer", {"question": "What does section 2 say?", "max_new_tokens": 2})
            except OSError as err:
                status, body = None, repr(err)
            if status == 200:
                self.ok += 1
                version = json.loads(body)["model_version"]
                self.versions[version] = self.versions.get(version, 0) + 1
            else:
                self.failures.append(f"{status} {body[:200]}")
            time.sleep(0.05)

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=150)


def run_deploy_stage(lab: CrashLab, kills: int, window_s: float = 4.0) -> tuple[list[dict], dict]:
    from driftloop.serving.supervisor.client import SupervisorClient
    from driftloop.serving.supervisor.processes import free_port

    bentos = lab.build_bentos()
    port = free_port()
    while True:
        try:
            __import__("socket").create_connection(("127.0.0.1", port + 1), timeout=0.2).close()
            port = free_port()
        except OSError:
            break
    lab.record_bento(bentos[0])
    first = lab.run("deploy", lab.config(deploy_port=port))
    assert first["success"], first
    outcomes = []
    try:
        with Traffic(port) as traffic:
            for i in range(kills):
                outcomes.append(lab.deploy_round(port, bentos[(i + 1) % 2], window_s))
        stats = {"requests_ok": traffic.ok, "requests_failed": len(traffic.failures), "failures": traffic.failures[:5], "served_versions": traffic.versions}
    finally:
        supervisor = SupervisorClient(f"http://127.0.0.1:{port + 1}")
        if supervisor.alive():
            supervisor.shutdown()
    return outcomes, stats


def summarize(outcomes: list[dict]) -> dict:
    by_stage: dict[str, dict] = {}
    for outcome in outcomes:
        stage = by_stage.setdefault(outcome["stage"], {"kills": 0, "recovered": 0, "missed": 0})
        if outcome["killed"]:
            stage["kills"] += 1
            stage["recovered"] += int(outcome["recovered"])
        else:
            stage["missed"] += 1
    return by_stage


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-kills", type=int, default=8)
    parser.add_argument("--embed-kills", type=int, default=6)
    parser.add_argument("--deploy-kills", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="crash_recovery", help="the figures file's name")
    parser.add_argument("--work", default="", help="work folder (default: a fresh temporary one)")
    args = parser.parse_args()
    os.environ.setdefault("DRIFTLOOP_RELIABILITY_REPORT", str(ROOT / "artifacts" / "reliability"))
    import tempfile

    work = Path(args.work or tempfile.mkdtemp(prefix="driftloop-crash-"))
    started = time.time()
    lab = CrashLab(work, seed=args.seed)
    lab.setup()
    outcomes: list[dict] = []
    remaining = args.train_kills
    while remaining > 0:
        outcomes += lab.train_round(min(2, remaining))
        remaining -= 2
    # A pass can outrun its kill point (the watcher polls); such a round is recorded as
    # missed and another is run, so the planned number of kills is delivered.
    delivered = rounds = 0
    while delivered < args.embed_kills and rounds < 2 * args.embed_kills:
        outcomes.append(lab.embed_round())
        delivered += int(outcomes[-1]["killed"])
        rounds += 1
    traffic = {}
    if args.deploy_kills:
        deploy, traffic = run_deploy_stage(lab, args.deploy_kills)
        outcomes += deploy
    stages = summarize(outcomes)
    figures = record_figures(args.name, {
        "stages": stages, "kills": sum(s["kills"] for s in stages.values()), "recovered": sum(s["recovered"] for s in stages.values()),
        "traffic_during_deploy_kills": traffic, "seconds": round(time.time() - started, 1), "outcomes": outcomes,
    })
    ok = figures["kills"] == figures["recovered"] and not traffic.get("requests_failed")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
