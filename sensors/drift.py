"""The closed loop's triggers.

`drift_check_on_traffic` runs the drift check whenever enough new traffic arrived;
`drift_retrain` turns a drifted report into exactly one retrain per drift window (the
traffic since the serving version went live): the run key is the window, so a window
that stays drifted across many checks, a daemon restart or a re-delivered tick still
starts one run, and a new window opens only when a new version goes live. Both keep
their position in Dagster's sensor cursor, which survives daemon restarts.

A version that a drift retrain put live and whose traffic still drifts is not retrained
again at once: the retrain had that traffic's data and did not cure it, so another one on
the same data would only loop. Such persistent drift is reported (a warning, and the
sensor's skip reason) and starts a retrain only once the version has served for
DRIFTLOOP_DRIFT_RETRAIN_COOLDOWN_S (a day by default), when corrections and documents
will have come in; new documents redeploy through their own sensor, which opens a fresh
window.
"""

import json
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg

from assets.monitoring import DRIFT_REPORT, log_root
from driftloop.monitoring.traffic import INFERENCE_ENDPOINTS
from driftloop.settings import Settings
from resources.lineage import Lineage

FIRED_MEMORY = 50


def sensor_status(settings: Settings) -> dg.DefaultSensorStatus:
    # Off until turned on (UI, or DRIFTLOOP_SENSORS=running): each fires real compute.
    return dg.DefaultSensorStatus.RUNNING if settings.sensors == "running" else dg.DefaultSensorStatus.STOPPED


def _persisting(meta: dict, cooldown_s: float) -> str | None:
    """Why a drifted report must not start a retrain yet, or None: its version was put
    live by a drift retrain less than `cooldown_s` before the report's end."""
    cured_for = meta.get("retrained_for_window")
    if not cured_for:
        return None
    try:
        served_s = (datetime.fromisoformat(meta["window_end"]) - datetime.fromisoformat(meta["window_start"])).total_seconds()
    except (KeyError, TypeError, ValueError):
        served_s = 0.0
    if served_s >= cooldown_s:
        return None
    return (f"drift persists in window {meta.get('window_start')} of {meta.get('serving')}, which the retrain for the drift in window "
            f"{cured_for} put live {served_s / 60:.0f} min before this report: a retrain on the same data would not cure it, so none "
            f"starts before the version has served {cooldown_s / 3600:g} h (DRIFTLOOP_DRIFT_RETRAIN_COOLDOWN_S); new documents, "
            f"corrections, a retrain by hand or a rollback are the ways on ({meta.get('summary', '')})")


def _count_new(folder: Path, offsets: dict) -> tuple[int, dict]:
    """Served requests appended since `offsets` (bytes per file); only whole lines count."""
    new, seen = 0, {}
    for path in sorted(folder.glob("*.jsonl")) if folder.is_dir() else []:
        start = offsets.get(path.name, 0)
        with path.open("rb") as handle:
            handle.seek(start)
            chunk = handle.read()
        whole = chunk[: chunk.rfind(b"\n") + 1]
        for line in whole.splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("role", "primary") == "primary" and record.get("endpoint") in INFERENCE_ENDPOINTS:
                new += 1
        seen[path.name] = start + len(whole)
    return new, seen


def check_on_traffic(context: dg.SensorEvaluationContext, settings: Settings, lineage: Lineage):
    every, idle_s = settings.drift_check_every, settings.drift_check_idle_s
    cursor = json.loads(context.cursor) if context.cursor else {}
    day = datetime.now(UTC).strftime("%Y-%m-%d")
    offsets = cursor.get("offsets", {}) if cursor.get("day") == day else {}
    new, offsets = _count_new(log_root(lineage) / "requests" / f"date={day}", offsets)
    pending, total = cursor.get("pending", 0) + new, cursor.get("total", 0) + new
    now = datetime.now(UTC).timestamp()
    last_new = now if new else cursor.get("last_new_at", now)
    # A tick lands wherever it lands in a burst: without the pause rule, the tail of a burst
    # that ends short of `every` would wait, unchecked, for traffic that may not come.
    paused = pending > 0 and now - last_new >= idle_s
    if pending < every and not paused:
        context.update_cursor(json.dumps({"day": day, "offsets": offsets, "pending": pending, "total": total, "last_new_at": last_new}))
        return dg.SkipReason(f"{pending} new requests since the last drift check; checking every {every}, "
                             f"or after {idle_s:g} s without new requests")
    context.update_cursor(json.dumps({"day": day, "offsets": offsets, "pending": 0, "total": total, "last_new_at": last_new}))
    return dg.RunRequest(run_key=f"drift-check-{total}", run_config=sensor_run_config(context, lineage.job("drift_check"), settings), tags={"driftloop/trigger": "traffic", "driftloop/requests_seen": str(total)})


def sensor_run_config(context: dg.SensorEvaluationContext, job_name: str, settings: Settings) -> dict:
    """Run config for a run this code location's sensors start: DRIFTLOOP_RUN_CONFIG names
    one YAML file of per-op settings shared by every job; each job gets the ops it has
    (Dagster refuses config for ops a job lacks)."""
    if not settings.run_config:
        return {}
    import yaml

    config = yaml.safe_load(Path(settings.run_config).read_text(encoding="utf-8")) or {}
    if context.repository_def is None:
        return config
    return config_for_job(config, context.repository_def.get_job(job_name))


def config_for_job(config: dict, job: dg.JobDefinition) -> dict:
    """`config` with only the ops `job` has: Dagster refuses config for any other op."""
    ops = config.get("ops") or {}
    return {**config, "ops": {name: value for name, value in ops.items() if name in job.graph.node_dict}} if ops else config


def retrain_on_drift(context: dg.SensorEvaluationContext, settings: Settings, lineage: Lineage):
    cursor = json.loads(context.cursor) if context.cursor else {}
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=lineage.key(DRIFT_REPORT), after_storage_id=cursor.get("seen")), limit=100, ascending=True).records
    if not records:
        return dg.SkipReason("no new drift report")
    fired = list(cursor.get("fired", []))
    requests, notes = [], []
    cooldown_s = settings.drift_retrain_cooldown_s
    for record in records:
        meta = {k: v.value for k, v in record.asset_materialization.metadata.items()}
        window = meta.get("window_start", "")
        if not meta.get("enough_data"):
            notes.append(f"not enough data ({meta.get('summary', '')})")
        elif not meta.get("drifted"):
            notes.append("no drift")
        elif window in fired:
            notes.append(f"drift in window {window} already started a retrain")
        elif (persisting := _persisting(meta, cooldown_s)) is not None:
            context.log.warning(persisting)
            notes.append(persisting)
        else:
            fired.append(window)
            requests.append(dg.RunRequest(
                run_key=f"drift-{window}", run_config=sensor_run_config(context, lineage.job("retrain_and_redeploy"), settings),
                tags={"driftloop/trigger": "drift", "driftloop/drift_window": window, "driftloop/drift_report_run": record.run_id,
                      "driftloop/drift_reasons": ",".join(meta.get("reasons") or [])[:200],
                      "driftloop/drift_summary": str(meta.get("summary", ""))[:500]}))
    context.update_cursor(json.dumps({"seen": records[-1].storage_id, "fired": fired[-FIRED_MEMORY:]}))
    return requests or dg.SkipReason("; ".join(notes[-3:]))


def drift_sensors(settings: Settings, lineage: Lineage | None = None) -> list[dg.SensorDefinition]:
    """The lineage's two drift sensors with their tick interval, default status and thresholds:
    they read its own request log and drift reports and start its own jobs only."""
    lineage = lineage or Lineage()
    timing = dict(minimum_interval_seconds=settings.sensor_interval_s, default_status=sensor_status(settings))

    @dg.sensor(name=lineage.job("drift_check_on_traffic"), job_name=lineage.job("drift_check"), **timing,
               description=f"Runs monitoring/drift_report every {settings.drift_check_every} new served requests "
                           f"(DRIFTLOOP_DRIFT_CHECK_EVERY), and on the requests still unchecked once traffic has paused for "
                           f"{settings.drift_check_idle_s:g} s (DRIFTLOOP_DRIFT_CHECK_IDLE_S).")
    def drift_check_on_traffic(context: dg.SensorEvaluationContext):
        return check_on_traffic(context, settings, lineage)

    @dg.sensor(name=lineage.job("drift_retrain"), job_name=lineage.job("retrain_and_redeploy"), **timing,
               description="One retrain (refresh data, train, evaluate, gate, redeploy) per drifted window of live traffic.")
    def drift_retrain(context: dg.SensorEvaluationContext):
        return retrain_on_drift(context, settings, lineage)

    return [drift_check_on_traffic, drift_retrain]
