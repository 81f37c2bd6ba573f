"""Schedules. The cron expressions come from the environment so a deployment changes
them without a code change."""

import os

import dagster as dg

from driftloop.orchestration.jobs import pipeline_job

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

schedules = [weekly_retrain]
