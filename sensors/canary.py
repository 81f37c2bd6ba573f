"""The canary's watcher: every tick it reads the running canary's live evidence (the
supervisor's counts and the request log) and applies the canary rule
(driftloop.monitoring.canary); when the rule promotes or rolls back, it starts one
serving/canary run pinned to the evidence it saw. The run key is the canary and its start,
so a daemon restart, a re-delivered tick or a slow run never decides one canary twice."""

from datetime import UTC, datetime

import dagster as dg

from assets.keys import CANARY
from driftloop.monitoring.canary import CanaryPolicy, decide, evidence
from driftloop.serving.deploy import DeployError
from driftloop.settings import Settings
from resources.lineage import Lineage
from sensors.drift import sensor_run_config, sensor_status


def decide_on_canary(context: dg.SensorEvaluationContext, settings: Settings, lineage: Lineage, deployer) -> dg.RunRequest | dg.SkipReason:
    try:
        status = deployer.target().serving()
    except DeployError as err:
        return dg.SkipReason(f"no canary: {err}")
    canary = (status or {}).get("canary")
    if not canary:
        return dg.SkipReason("no canary is running")
    until = datetime.now(UTC)
    baseline, candidate, _ = evidence(lineage.layout().request_log, canary, until)
    decision = decide(CanaryPolicy.from_dict(canary.get("policy") or {}), baseline, candidate)
    if decision.verdict == "wait":
        return dg.SkipReason(f"canary {canary['name']}: {decision.reason}")
    job = lineage.job("canary_decision")
    run_config = sensor_run_config(context, job, settings)
    op = lineage.key(CANARY).to_python_identifier()
    pinned = {"canary": canary["name"], "until": until.isoformat(), "sides": canary.get("sides") or {}}
    run_config = {**run_config, "ops": {**run_config.get("ops", {}), op: {"config": pinned}}}
    context.log.info(f"canary {canary['name']}: {decision.verdict} ({decision.reason})")
    return dg.RunRequest(run_key=f"canary-{canary['name']}-{canary['started_at']}", run_config=run_config,
                         tags={"driftloop/trigger": "canary", "driftloop/canary": canary["name"][:200],
                               "driftloop/canary_verdict": decision.verdict, "driftloop/canary_reason": decision.reason[:500]})


def canary_sensor(settings: Settings, lineage: Lineage | None = None) -> dg.SensorDefinition:
    lineage = lineage or Lineage()
    key = lineage.resource_key("deployer")

    @dg.sensor(name=lineage.job("canary_watch"), job_name=lineage.job("canary_decision"), minimum_interval_seconds=settings.sensor_interval_s,
               default_status=sensor_status(settings), required_resource_keys={key},
               description="Promotes a canary that shows no regression once both sides have their requests, and rolls back one that "
                           "regresses at any look (serving/canary states the rule).")
    def canary_watch(context: dg.SensorEvaluationContext, **resources):
        # Dagster hands required resources in as keyword arguments when the sensor is called directly.
        return decide_on_canary(context, settings, lineage, resources.get(key) or getattr(context.resources, key))

    return canary_watch
