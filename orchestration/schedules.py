"""Schedules. The cron expressions are settings (DRIFTLOOP_RETRAIN_CRON, DRIFTLOOP_DRIFT_CRON,
DRIFTLOOP_TIMEZONE, or a lineage's own in its defs.yaml), so a deployment changes them
without a code change."""

import dagster as dg

from driftloop.settings import Settings
from orchestration.jobs import build_jobs
from resources.lineage import Lineage


def build_schedules(settings: Settings, lineage: Lineage | None = None, jobs: dict | None = None,
                    run_config: dict | None = None) -> list[dg.ScheduleDefinition]:
    lineage = lineage or Lineage()
    jobs = jobs or build_jobs(lineage)
    weekly_retrain = dg.ScheduleDefinition(
        name=lineage.job("weekly_retrain"),
        job=jobs["driftloop_pipeline"],
        cron_schedule=settings.retrain_cron,
        execution_timezone=settings.timezone,
        run_config=run_config,
        description="Refresh the data, retrain the adapter, evaluate it and promote it only past the gate.",
        tags={"driftloop/trigger": "schedule"},
        # Off until someone turns it on in the UI: retraining costs real compute.
        default_status=dg.DefaultScheduleStatus.STOPPED,
    )
    nightly_drift_check = dg.ScheduleDefinition(
        name=lineage.job("nightly_drift_check"),
        job=jobs["drift_check"],
        cron_schedule=settings.drift_cron,
        execution_timezone=settings.timezone,
        description="Drift of the day's traffic; a drifted report makes the drift_retrain sensor start one retrain.",
        tags={"driftloop/trigger": "schedule"},
        default_status=dg.DefaultScheduleStatus.STOPPED,
    )
    # Each night, yesterday's partition of the request log.
    daily_inference_log = dg.build_schedule_from_partitioned_job(
        jobs["inference_log"], name=lineage.job("daily_inference_log"), hour_of_day=0, minute_of_hour=15,
        default_status=dg.DefaultScheduleStatus.STOPPED,
    )
    return [weekly_retrain, nightly_drift_check, daily_inference_log]
