"""Record every failed run where a person sees it: the run log and the lineage's alerts file."""


import json
from collections.abc import Sequence
from datetime import UTC, datetime

import dagster as dg

from resources.lineage import Lineage


def run_failure_sensor(lineage: Lineage | None = None, jobs: Sequence | None = None) -> dg.SensorDefinition:
    """For the default lineage, every failed run of the code location (runs started from the
    asset graph included); for a named one, the failures of its own jobs, in its own home."""
    lineage = lineage or Lineage()

    @dg.run_failure_sensor(
        name=lineage.job("record_run_failures"),
        description=f"Appends each failed run (job, run id, error) {'of the ' + lineage.name + ' lineage' if lineage.name else ''} to "
                    f"{lineage.layout().alerts / 'run_failures.jsonl'}.",
        default_status=dg.DefaultSensorStatus.RUNNING,
        monitor_all_code_locations=False,
        monitored_jobs=list(jobs) if jobs else None,
    )
    def record_run_failures(context: dg.RunFailureSensorContext) -> None:
        run = context.dagster_run
        error = context.failure_event.message or ""
        alerts = lineage.layout().alerts
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

    return record_run_failures
