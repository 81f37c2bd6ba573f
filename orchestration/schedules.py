"""Schedules. The cron expressions are settings (DRIFTLOOP_RETRAIN_CRON, DRIFTLOOP_DRIFT_CRON,
DRIFTLOOP_TIMEZONE), so a deployment changes them without a code change."""

import dagster as dg

from driftloop.settings import Settings
from orchestration.jobs import drift_check_job, inference_log_job, pipeline_job


def build_schedules(settings: Settings) -> list[dg.ScheduleDefinition]:
    weekly_retrain = dg.ScheduleDefinition(
        name="weekly_retrain",
        job=pipeline_job,
        cron_schedule=settings.retrain_cron,
        execution_timezone=settings.timezone,
        description="Refresh the data, retrain the adapter, evaluate it and promote it only past the gate.",
        tags={"driftloop/trigger": "schedule"},
        # Off until someone turns it on in the UI: retraining costs real compute.
        default_status=dg.DefaultScheduleStatus.STOPPED,
    )
    nightly_drift_check = dg.ScheduleDefinition(
        name="nightly_drift_check",
        job=drift_check_job,
        cron_schedule=settings.drift_cron,
        execution_timezone=settings.timezone,
        description="Drift of the day's traffic; a drifted report makes the drift_retrain sensor start one retrain.",
        tags={"driftloop/trigger": "schedule"},
        default_status=dg.DefaultScheduleStatus.STOPPED,
    )
    # Each night, yesterday's partition of the request log.
    daily_inference_log = dg.build_schedule_from_partitioned_job(
        inference_log_job, name="daily_inference_log", hour_of_day=0, minute_of_hour=15,
        default_status=dg.DefaultScheduleStatus.STOPPED,
    )
    return [weekly_retrain, nightly_drift_check, daily_inference_log]
