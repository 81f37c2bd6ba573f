"""Record every failed run where a person sees it: the run log and an alerts file."""


import json
from datetime import UTC, datetime

import dagster as dg

from driftloop.layout import Layout


@dg.run_failure_sensor(
    name="record_run_failures",
    description="Appends each failed run (job, run id, error) to <DRIFTLOOP_HOME>/data/alerts/run_failures.jsonl.",
    default_status=dg.DefaultSensorStatus.RUNNING,
    monitor_all_code_locations=False,
)
def record_run_failures(context: dg.RunFailureSensorContext) -> None:
    run = context.dagster_run
    error = context.failure_event.message or ""
    alerts = Layout.from_env().alerts
    alerts.mkdir(parents=True, exist_ok=True)
    entry = {
        "at": datetime.now(UTC).isoformat(),
        "job": run.job_name,
        "run_id": run.run_id,
        "tags": {k: v for k, v in run.tags.items() if k.startswith(("driftloop/", "dagster/schedule", "dagster/sensor"))},
        "error": error[:2000],
    }
    with (alerts / "run_failures.jsonl").open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(entry) + "\n")
    context.log.error(f"run {run.run_id} of {run.job_name} failed: {error[:500]}")
