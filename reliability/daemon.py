"""The Dagster daemon and webserver killed and restarted, on a temporary DAGSTER_HOME
(SQLite, the instance settings of orchestration/dagster.yaml) and the tiny code location
reliability/daemon_defs.py, which carries the product's drift_retrain sensor.

sensor_storm(): drift reports for many windows are written (each window: a report without
drift, then two drifted reports, as repeated checks produce) while the daemon is SIGKILLed
at random points and restarted; afterwards every drifted window must have exactly one
retrain run and no other window any.

restart_storage(): a run finished, a sensor cursor set, then a long run in flight; the
daemon, the webserver and the run worker are SIGKILLed together; after the restart the run
history, the materializations and the cursor read back through the webserver, and the
interrupted run is marked failed and retried by run retries.

    python reliability/daemon.py --kills 15 --windows 12"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
BIN = Path(sys.executable).parent

from driftloop.serving.supervisor.processes import free_port  # noqa: E402
from serving_helpers import record_figures  # noqa: E402


class Dagster:
    def __init__(self, home: Path, queue_limit: int | None = None) -> None:
        self.home = Path(home)
        self.home.mkdir(parents=True, exist_ok=True)
        settings = yaml.safe_load((ROOT / "orchestration" / "dagster.yaml").read_text())
        if queue_limit is not None:
            settings["run_coordinator"]["config"]["max_concurrent_runs"] = queue_limit
        (self.home / "dagster.yaml").write_text(yaml.safe_dump(settings))
        self.env = {**os.environ, "DAGSTER_HOME": str(self.home), "DRIFTLOOP_SENSORS": "running", "DRIFTLOOP_SENSOR_INTERVAL_S": "1",
                    "DRIFTLOOP_HOME": str(self.home / "project"), "PYTHONPATH": str(ROOT)}
        os.environ["DAGSTER_HOME"] = str(self.home)
        self.procs: dict[str, subprocess.Popen] = {}
        self.ui_port = free_port()
        import dagster as dg

        self.instance = dg.DagsterInstance.get()

    def start(self, what: str) -> None:
        argv = {"daemon": [str(BIN / "dagster-daemon"), "run"],
                "webserver": [str(BIN / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(self.ui_port)]}[what]
        log = open(self.home / f"{what}.log", "ab")
        self.procs[what] = subprocess.Popen([*argv, "-f", "reliability/daemon_defs.py", "-d", str(ROOT)], cwd=ROOT, env=self.env,
                                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        if what == "webserver":
            deadline = time.time() + 120
            while True:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{self.ui_port}/server_info", timeout=5)
                    return
                except OSError:
                    assert time.time() < deadline and self.procs[what].poll() is None, "the webserver did not come up"
                    time.sleep(0.5)

    def kill(self, what: str) -> None:
        """SIGKILL the process and every process of its session (its code server too)."""
        proc = self.procs.pop(what)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)

    def stop_all(self) -> None:
        for what in list(self.procs):
            self.kill(what)

    def write_report(self, window: str, drifted: bool) -> None:
        from reliability.daemon_defs import defs

        config = {"ops": {"monitoring__drift_report": {"config": {"window_start": window, "drifted": drifted}}}}
        assert defs().resolve_job_def("write_drift_report").execute_in_process(run_config=config, instance=self.instance).success

    def sensor_state(self):
        return next((s for s in self.instance.all_instigator_state() if s.name == "drift_retrain"), None)

    def cursor(self) -> dict:
        state = self.sensor_state()
        cursor = state.instigator_data.cursor if state is not None and state.instigator_data is not None else None
        return json.loads(cursor) if cursor else {}

    def runs_per_window(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for run in self.instance.get_runs():
            window = run.tags.get("driftloop/drift_window")
            if window and run.job_name == "retrain_and_redeploy":
                counts[window] = counts.get(window, 0) + 1
        return counts

    def ticks(self) -> dict[str, int]:
        state = self.sensor_state()
        if state is None:
            return {}
        counts: dict[str, int] = {}
        for tick in self.instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=100000):
            counts[tick.status.value] = counts.get(tick.status.value, 0) + 1
        return counts

    def graphql(self, query: str) -> dict:
        request = urllib.request.Request(f"http://127.0.0.1:{self.ui_port}/graphql", data=json.dumps({"query": query}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())["data"]


def last_report_id(lab: Dagster) -> int:
    import dagster as dg

    records = lab.instance.fetch_materializations(dg.AssetKey(["monitoring", "drift_report"]), limit=1, ascending=False).records
    return records[0].storage_id if records else 0


def wait_caught_up(lab: Dagster, timeout: float = 180) -> float:
    started, target = time.time(), last_report_id(lab)
    while lab.cursor().get("seen") != target:
        assert time.time() - started < timeout, f"the sensor never caught up: cursor {lab.cursor()}, last report {target}"
        time.sleep(0.5)
    return time.time() - started


def sensor_storm(work: Path, windows: int, kills: int, seed: int = 0) -> dict:
    rng = random.Random(seed)
    lab = Dagster(work / "storm", queue_limit=0)
    plan = [(f"2026-01-01T{i:02d}:00:00+00:00", drifted) for i in range(windows) for drifted in (False, True, True)]
    drifted_windows = {w for w, d in plan if d}
    writer_done = threading.Event()

    def writer() -> None:
        for window, drifted in plan:
            lab.write_report(window, drifted)
            time.sleep(rng.uniform(0.2, 1.5))
        writer_done.set()

    started = time.time()
    thread = threading.Thread(target=writer, daemon=True)
    lab.start("daemon")
    thread.start()
    delays = []
    try:
        for _ in range(kills):
            # The daemon boots in a few seconds and then evaluates the sensor every second.
            delay = rng.uniform(4.0, 12.0)
            time.sleep(delay)
            delays.append(round(delay, 1))
            lab.kill("daemon")
            lab.start("daemon")
        thread.join(timeout=600)
        catch_up = wait_caught_up(lab)
        time.sleep(3)
    finally:
        lab.stop_all()
    counts = lab.runs_per_window()
    return {"windows": windows, "reports": len(plan), "drifted_windows": len(drifted_windows), "daemon_kills": kills,
            "kill_after_s": delays, "runs_per_window": counts, "windows_with_one_run": sum(1 for w in drifted_windows if counts.get(w) == 1),
            "windows_with_two_or_more": sum(1 for c in counts.values() if c > 1), "lost_windows": sorted(drifted_windows - set(counts)),
            "runs_for_undrifted_windows": sorted(set(counts) - drifted_windows), "ticks": lab.ticks(),
            "catch_up_s": round(catch_up, 1), "seconds": round(time.time() - started, 1)}


def restart_storage(work: Path, run_seconds: int = 60) -> dict:
    lab = Dagster(work / "storage")
    lab.start("webserver")
    lab.start("daemon")
    out: dict = {}
    try:
        window = "2026-02-01T00:00:00+00:00"
        lab.write_report(window, True)
        deadline = time.time() + 180
        while not any(r.is_success for r in lab.instance.get_runs() if r.job_name == "retrain_and_redeploy"):
            assert time.time() < deadline, "the drift sensor's run never succeeded"
            time.sleep(1)
        cursor_before = lab.cursor()
        launched = lab.graphql("""mutation { launchRun(executionParams: {
            selector: {repositoryLocationName: "daemon_defs.py", repositoryName: "__repository__", jobName: "long_work"},
            runConfigData: "{\\"ops\\": {\\"reliability__work\\": {\\"config\\": {\\"seconds\\": %d}}}}"}) {
            __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } } }""" % run_seconds)["launchRun"]
        assert launched["__typename"] == "LaunchRunSuccess", launched
        run_id = launched["run"]["runId"]
        deadline = time.time() + 180
        while True:
            logs = lab.instance.all_logs(run_id)
            if any(e.user_message.startswith("working 3/") for e in logs):
                break
            assert time.time() < deadline, "the long run never got going"
            time.sleep(0.5)
        worker_pids = {e.dagster_event.pid for e in logs if e.dagster_event is not None and e.dagster_event.pid}
        history_before = len(lab.instance.get_runs())
        # Everything at once: the webserver, the daemon (with their code servers) and the run worker and its step.
        lab.kill("webserver")
        lab.kill("daemon")
        for pid in worker_pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        status_after_kill = lab.instance.get_run_by_id(run_id).status.value
        lab.start("webserver")
        lab.start("daemon")
        restarted = time.time()
        read_back = lab.graphql("""{ runsOrError { ... on Runs { results { runId status jobName } } }
            assetNodes { assetKey { path } assetMaterializations(limit: 5) { runId } }
            sensorOrError(sensorSelector: {repositoryLocationName: "daemon_defs.py", repositoryName: "__repository__", sensorName: "drift_retrain"}) {
              ... on Sensor { sensorState { status typeSpecificData { ... on SensorData { lastCursor } } } } } }""")
        runs = read_back["runsOrError"]["results"]
        cursor_after = json.loads(read_back["sensorOrError"]["sensorState"]["typeSpecificData"]["lastCursor"] or "{}")
        materialized = {"/".join(n["assetKey"]["path"]): len(n["assetMaterializations"]) for n in read_back["assetNodes"]}
        out.update(runs_before=history_before, runs_read_back=len(runs), cursor_before=cursor_before, cursor_after=cursor_after,
                   materializations_read_back=materialized, interrupted_run=run_id, status_right_after_kill=status_after_kill)
        # Then: is the interrupted run marked failed and retried by run retries?
        deadline, retried, failed_after = time.time() + 240, None, None
        while time.time() < deadline:
            run = lab.instance.get_run_by_id(run_id)
            if failed_after is None and run.is_finished:
                failed_after = round(time.time() - restarted, 1)
            retried = next((r for r in lab.instance.get_runs() if r.tags.get("dagster/parent_run_id") == run_id), None)
            if retried is not None and retried.is_finished:
                break
            time.sleep(2)
        out.update(interrupted_status_later=lab.instance.get_run_by_id(run_id).status.value,
                   retry_run=retried.run_id if retried else None, retry_status=retried.status.value if retried else None,
                   retry_number=retried.tags.get("dagster/retry_number") if retried else None,
                   finished_after_restart_s=failed_after, retry_done_after_restart_s=round(time.time() - restarted, 1))
    finally:
        lab.stop_all()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=15)
    parser.add_argument("--windows", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-storage", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("DRIFTLOOP_RELIABILITY_REPORT", str(ROOT / "artifacts" / "reliability"))
    work = Path(tempfile.mkdtemp(prefix="driftloop-daemon-"))
    storm = record_figures("daemon_kills", sensor_storm(work, args.windows, args.kills, args.seed))
    ok = storm["windows_with_one_run"] == storm["drifted_windows"] and not storm["windows_with_two_or_more"]
    if not args.skip_storage:
        storage = record_figures("storage_restart", restart_storage(work))
        ok &= storage["runs_read_back"] >= storage["runs_before"] and storage["cursor_after"] == storage["cursor_before"]
        ok &= storage["interrupted_status_later"] == "FAILURE" and storage["retry_status"] == "SUCCESS"
    shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
