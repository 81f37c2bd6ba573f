"""The local run launcher's worker health check, without a daemon: run monitoring fails a
run only when its worker process is really gone (tests/test_daemon_restart.py proves the
whole restart-and-retry path)."""

import shutil
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

# EngineEventData has no public export; the test writes the event a run worker writes.
from dagster._core.events import EngineEventData
from dagster._core.launcher import WorkerStatus

from orchestration.launcher import LocalRunLauncher, worker_health

REPO = Path(__file__).resolve().parents[1]


@dg.op
def noop() -> None:
    pass


@dg.job
def one_step():
    noop()


@pytest.fixture
def launcher(tmp_path):
    shutil.copy(REPO / "orchestration" / "dagster.yaml", tmp_path / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        yield instance.run_launcher


def record_worker(instance: dg.DagsterInstance, pid: int) -> dg.DagsterRun:
    run = instance.create_run_for_job(one_step)
    instance.report_engine_event(f"Started process for run (pid: {pid}).", run, EngineEventData.in_process(pid))
    return run


def test_the_instance_yaml_binds_the_local_launcher(launcher):
    assert isinstance(launcher, LocalRunLauncher) and launcher.supports_check_run_worker_health


def test_a_dead_worker_is_failed(launcher):
    gone = subprocess.Popen(["true"])
    gone.wait()
    result = launcher.check_run_worker_health(record_worker(launcher._instance, gone.pid))
    assert result.status == WorkerStatus.FAILED, result


def test_a_live_worker_is_running_however_long_it_takes(launcher):
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        time.sleep(0.2)
        run = record_worker(launcher._instance, worker.pid)
        # A slow worker: checked again much later, it is still alive and still RUNNING.
        assert launcher.check_run_worker_health(run).status == WorkerStatus.RUNNING
        assert worker_health(worker.pid, time.time() + 3600).status == WorkerStatus.RUNNING
    finally:
        worker.kill()
        worker.wait()
    assert launcher.check_run_worker_health(run).status == WorkerStatus.FAILED


def test_a_reused_pid_is_not_taken_for_the_worker(launcher):
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        # The pid was recorded a minute before this process started: someone else's pid now.
        assert worker_health(worker.pid, time.time() - 60).status == WorkerStatus.FAILED
    finally:
        worker.kill()
        worker.wait()


def test_no_recorded_pid_is_unknown(launcher):
    run = launcher._instance.create_run_for_job(one_step)
    assert launcher.check_run_worker_health(run).status == WorkerStatus.UNKNOWN


def test_a_run_executed_in_process_is_judged_by_its_run_start_pid(launcher):
    result = one_step.execute_in_process(instance=launcher._instance)
    assert launcher.check_run_worker_health(result.dagster_run).status == WorkerStatus.RUNNING
