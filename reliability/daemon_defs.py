"""A tiny code location for the daemon checks (reliability/daemon.py): the product's own
drift_retrain sensor, a drift report asset whose materializations the harness writes (the
sensor reads only their metadata), and cheap stand-ins for the jobs the sensor starts."""

import time

import dagster as dg

from driftloop.settings import Settings
from sensors.drift import drift_sensors


class DriftReportConfig(dg.Config):
    window_start: str
    drifted: bool = True
    enough_data: bool = True


@dg.asset(key=["monitoring", "drift_report"], group_name="monitoring")
def drift_report(config: DriftReportConfig) -> dg.MaterializeResult:
    """What monitoring/drift_report records for one check of one drift window."""
    return dg.MaterializeResult(metadata={"window_start": config.window_start, "drifted": config.drifted,
                                          "enough_data": config.enough_data, "summary": "written by reliability/daemon.py",
                                          "reasons": ["mmd"] if config.drifted else []})


class WorkConfig(dg.Config):
    seconds: float = 0.0


@dg.asset(key=["reliability", "work"], group_name="reliability")
def work(context: dg.AssetExecutionContext, config: WorkConfig) -> dg.MaterializeResult:
    """A step that takes `seconds`, logging each one, so a run can be interrupted mid-step."""
    for second in range(int(config.seconds)):
        context.log.info(f"working {second + 1}/{int(config.seconds)}")
        time.sleep(1)
    return dg.MaterializeResult(metadata={"seconds": config.seconds})


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(
        assets=[drift_report, work],
        jobs=[dg.define_asset_job("write_drift_report", [drift_report]), dg.define_asset_job("retrain_and_redeploy", [work]),
              dg.define_asset_job("long_work", [work])],
        sensors=[sensor for sensor in drift_sensors(Settings.from_env()) if sensor.name == "drift_retrain"],
    )
