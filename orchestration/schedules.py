"""Schedules. The cron expressions come from the environment so a deployment changes
them without a code change."""

import os

import dagster as dg

from orchestration.jobs import drift_check_job, inference_log_job, pipeline_job

weekly_retrain = dg.ScheduleDefinition(
    name="weekly_retrain",
    job=pipeline_job,
    cron_schedule=os.environ.get("DRIFTLOOP_RETRAIN_CRON", "0 3 * * 0"),
    execution_timezone=os.environ.get("DRIFTLOOP_TIMEZONE", "UTC"),
    description="Refresh the data, retrain the adapter, evaluate it and promote it only past the gate.",
    tags={"driftloop/trigger": "schedule"},
    # Off until someone turns it on in the UI: retraining costs real compute.
    default_status=dg.DefaultScheduleStatus.STOPPED,
)

nightly_drift_check = dg.ScheduleDefinition(
    name="nightly_drift_check",
    job=drift_check_job,
    cron_schedule=os.environ.get("DRIFTLOOP_DRIFT_CRON", "0 2 * * *"),
    execution_timezone=os.environ.get("DRIFTLOOP_TIMEZONE", "UTC"),
    description="Drift of the day's traffic; a drifted report makes the drift_retrain sensor start one retrain.",
    tags={"driftloop/trigger": "schedule"},
    default_status=dg.DefaultScheduleStatus.STOPPED,
)

# Each night, yesterday's partition of the request log.
daily_inference_log = dg.build_schedule_from_partitioned_job(
    inference_log_job, name="daily_inference_log", hour_of_day=0, minute_of_hour=15,
    default_status=dg.DefaultScheduleStatus.STOPPED,
)

schedules = [weekly_retrain, nightly_drift_check, daily_inference_log]
