"""The local profile's run launcher: Dagster's DefaultRunLauncher plus a run worker health
check, so run monitoring can fail a run whose worker died (a SIGKILL, an OOM kill, the
machine's code server killed with it) and run retries can retry it. Without the check such
a run stays STARTED forever.

The worker is found by its pid, which every run worker records in its first engine event,
"Started process for run (pid: N)". That pid is only meaningful on the machine that runs
the daemon, which is what the local profile is; production uses the K8sRunLauncher."""

from __future__ import annotations

import psutil

import dagster as dg

# No public export of these in Dagster 1.13; they are the run launcher interface's own types.
from dagster._core.launcher import CheckRunHealthResult, WorkerStatus

STARTED_PROCESS_MESSAGE = "Started process for run (pid: "
# The process start time psutil derives from /proc is rounded to the boot time's whole second.
START_TIME_SLACK_S = 2.0


def recorded_worker(instance: dg.DagsterInstance, run_id: str) -> tuple[int, float] | None:
    """(pid, when it was recorded) of the run's worker, or None when nothing is recorded yet.

    Runs executed in process (`dagster job execute`, `materialize` on a persistent instance)
    have no launcher event; their RUN_START event's pid is the process that runs them."""
    for entry in reversed(instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT)):
        if entry.message.startswith(STARTED_PROCESS_MESSAGE):
            pid = entry.dagster_event.engine_event_data.metadata.get("pid")
            if pid is not None:
                return int(pid.value), entry.timestamp
    starts = instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_START)
    if starts and starts[-1].dagster_event.pid:
        return starts[-1].dagster_event.pid, starts[-1].timestamp
    return None


def worker_health(pid: int, recorded_at: float) -> CheckRunHealthResult:
    try:
        process = psutil.Process(pid)
        alive = process.status() != psutil.STATUS_ZOMBIE
        started = process.create_time()
    except psutil.NoSuchProcess:
        return CheckRunHealthResult(WorkerStatus.FAILED, f"run worker pid {pid} is gone", run_worker_id=str(pid))
    except psutil.AccessDenied:
        # It exists; a process we may not inspect is not evidence of a dead worker.
        return CheckRunHealthResult(WorkerStatus.RUNNING, run_worker_id=str(pid))
    if not alive:
        return CheckRunHealthResult(WorkerStatus.FAILED, f"run worker pid {pid} exited (zombie)", run_worker_id=str(pid))
    if started > recorded_at + START_TIME_SLACK_S:
        # The worker recorded its pid before this process existed: the pid was reused.
        return CheckRunHealthResult(WorkerStatus.FAILED, f"run worker pid {pid} is gone (pid reused)", run_worker_id=str(pid))
    return CheckRunHealthResult(WorkerStatus.RUNNING, run_worker_id=str(pid))


class LocalRunLauncher(dg.DefaultRunLauncher):
    """Launches runs like the DefaultRunLauncher and tells run monitoring whether each
    run's worker process is still alive. A slow worker is alive and never failed."""

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: dg.DagsterRun) -> CheckRunHealthResult:
        recorded = recorded_worker(self._instance, run.run_id)
        if recorded is None:
            return CheckRunHealthResult(WorkerStatus.UNKNOWN, "no run worker pid recorded for this run")
        return worker_health(*recorded)
