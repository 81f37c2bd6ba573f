"""What every dataset asset does at the end: quarantine, gate on the bad share,
write atomically, version with DVC, and describe itself in the UI."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg

from driftloop.atomic import write_jsonl
from driftloop.data.records import Rejected, excerpt, read_jsonl
from resources.dvc import DvcStore

OWNERS = ["team:ml-platform"]

# A step that needs a GPU says so on its own op: the k8s_job_executor builds each step's pod
# from the op's tags only, never from job or run tags, and runs started from the asset UI, a
# backfill or automation use the implicit asset job, where job tags do not exist (dagster
# issues 33430 and 26720). The profile's executor config (per_step_k8s_config) can change the
# node pool per op without touching code. Ignored by the local executor.
GPU_POD = {
    "dagster-k8s/config": {
        "container_config": {"resources": {"requests": {"nvidia.com/gpu": "1"}, "limits": {"nvidia.com/gpu": "1"}}},
        "pod_spec_config": {
            "node_selector": {"nvidia.com/gpu.present": "true"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        },
    }
}


def write_quarantine(dvc: DvcStore, name: str, run_id: str, rejected: Sequence[Rejected]) -> Path | None:
    if not rejected:
        return None
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = dvc.quarantine_dir / name / f"{stamp}_{run_id[:8]}.jsonl"
    write_jsonl(path, (r.to_row() for r in rejected))
    return path


def _reason_counts(rejected: Sequence[Rejected]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in rejected:
        for reason in row.reason.split(","):
            counts[reason] = counts.get(reason, 0) + 1
    return dict(sorted(counts.items()))


def quarantine_metadata(path: Path | None, rejected: Sequence[Rejected], seen: int) -> dict:
    meta = {
        "quarantined": dg.MetadataValue.int(len(rejected)),
        "bad_fraction": dg.MetadataValue.float(round(len(rejected) / seen, 4) if seen else 0.0),
        "quarantine_reasons": dg.MetadataValue.json(_reason_counts(rejected)),
    }
    if path is not None:
        meta["quarantine_path"] = dg.MetadataValue.path(str(path))
        rows = "\n".join(
            f"| {excerpt(r.source, 60)} | {r.reason} | {excerpt(r.detail, 120).replace('|', '/')} |" for r in rejected[:20]
        )
        meta["quarantine_preview"] = dg.MetadataValue.md(f"| source | reason | detail |\n|---|---|---|\n{rows}")
    return meta


def gate_bad_share(name: str, rejected: Sequence[Rejected], seen: int, max_bad_fraction: float, meta: dict) -> None:
    share = len(rejected) / seen if seen else 1.0
    if seen and share <= max_bad_fraction:
        return
    reasons = ", ".join(f"{k}={v}" for k, v in _reason_counts(rejected).items())
    raise dg.Failure(
        description=(
            f"{name}: {len(rejected)} of {seen} rows ({share:.0%}) failed validation, more than "
            f"max_bad_fraction={max_bad_fraction:.0%} ({reasons}). The previous version is kept; "
            f"see the quarantine file for each row's reason."
        ),
        metadata=meta,
    )


def preview_table(rows: Sequence[dict], columns: Sequence[str], limit: int = 10) -> dg.MetadataValue:
    head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns)
    body = "\n".join(
        "| " + " | ".join(excerpt(str(row.get(c, "")), 80).replace("|", "/") for c in columns) + " |" for row in rows[:limit]
    )
    return dg.MetadataValue.md(f"{head}\n{body}")


def publish_dataset(
    context: dg.AssetExecutionContext,
    dvc: DvcStore,
    name: str,
    rows: Sequence[dict],
    rejected: Sequence[Rejected],
    seen: int,
    max_bad_fraction: float,
    preview_columns: Sequence[str],
    extra_metadata: dict | None = None,
    gated: Callable[[Rejected], bool] | None = None,
) -> dg.MaterializeResult:
    """`gated` picks the rejections that count against `max_bad_fraction` of the `seen`
    rows (by default all); the others are quarantined and reported all the same."""
    quarantine_path = write_quarantine(dvc, name, context.run.run_id, rejected)
    meta = quarantine_metadata(quarantine_path, rejected, seen)
    for row in rejected[:50]:
        context.log.warning(f"{name}: quarantined {row.source}: {row.reason} ({excerpt(row.detail, 200)})")
    gate_bad_share(name, [r for r in rejected if gated is None or gated(r)], seen, max_bad_fraction, meta)
    if not rows:
        raise dg.Failure(description=f"{name}: no valid rows remain; nothing was written", metadata=meta)

    path = dvc.dataset_path(name)
    write_jsonl(path, rows)
    version = dvc.commit(name)
    columns = list(rows[0])
    meta.update(
        {
            "dagster/row_count": dg.MetadataValue.int(len(rows)),
            "dagster/column_schema": dg.TableSchema(columns=[dg.TableColumn(c, type(rows[0][c]).__name__) for c in columns]),
            "rows_seen": dg.MetadataValue.int(seen),
            "bytes": dg.MetadataValue.int(version.size),
            "path": dg.MetadataValue.path(str(path)),
            "dvc_md5": dg.MetadataValue.text(version.md5),
            "dvc_remote": dg.MetadataValue.text(version.remote),
            "dvc_restore": dg.MetadataValue.md(f"`driftloop data restore {name} {version.md5}`"),
            "preview": preview_table(rows, preview_columns),
        }
    )
    meta.update(extra_metadata or {})
    context.log.info(f"{name}: {len(rows)} rows, {len(rejected)} quarantined, DVC md5 {version.md5}")
    return dg.MaterializeResult(data_version=dg.DataVersion(version.md5), metadata=meta)


def load_dataset(dvc: DvcStore, name: str) -> list[dict]:
    path = dvc.dataset_path(name)
    if not path.is_file():
        raise dg.Failure(description=f"dataset {name} has not been materialized yet (no file at {path})")
    return list(read_jsonl(path))


def suite_check_results(reports: dict, asset_key: dg.AssetKey, blocking_names: Sequence[str]) -> list[dg.AssetCheckResult]:
    results = []
    for name, report in reports.items():
        results.append(
            dg.AssetCheckResult(
                asset_key=asset_key,
                check_name=name,
                passed=report.success,
                severity=dg.AssetCheckSeverity.ERROR if name in blocking_names else dg.AssetCheckSeverity.WARN,
                description=report.failure_message() or f"all {len(report.outcomes)} expectations passed",
                metadata={
                    "expectations": dg.MetadataValue.int(len(report.outcomes)),
                    "failed_expectations": dg.MetadataValue.json(report.summary()),
                    "great_expectations_suite": dg.MetadataValue.text(report.suite),
                },
            )
        )
    return results


def energy_metadata(measured) -> dict:
    """A step's energy and emissions (driftloop/energy.py) as metadata: the two numbers are
    plotted over the asset's materializations in the UI; `energy` says how they were measured,
    or why they could not be."""
    reading = measured.reading
    if reading is None:
        return {"energy": json_meta({"unavailable": measured.error or "not measured"})}
    return {"energy_kwh": dg.MetadataValue.float(float(f"{reading.kwh:.6g}")),
            "emissions_kg_co2e": dg.MetadataValue.float(float(f"{reading.kg_co2e:.6g}")),
            "energy": json_meta({k: (float(f"{v:.6g}") if isinstance(v, float) else v) for k, v in reading.to_dict().items()})}


def json_meta(value) -> dg.MetadataValue:
    return dg.MetadataValue.json(json.loads(json.dumps(value, default=str)))


def champion_moved(event: dict, key: dg.AssetKey) -> dg.AssetMaterialization:
    """A registry event that moved the champion alias outside evaluation/champion's own runs (a
    rollback by hand or by the canary decision) as that asset's materialization, so the asset,
    its data version and its history in the UI name the champion that serves."""
    return dg.AssetMaterialization(
        asset_key=key, description=f"{event['action']} to {event['version']}: {event.get('reason') or 'no reason given'}",
        tags={"dagster/data_version": event["version"]},
        metadata={"champion": dg.MetadataValue.text(event["version"]), "previous": dg.MetadataValue.text(str(event["previous"])),
                  "action": dg.MetadataValue.text(event["action"]), "reason": dg.MetadataValue.text(event.get("reason") or ""),
                  "by": dg.MetadataValue.text(str(event.get("by"))), "at": dg.MetadataValue.text(str(event.get("at")))})
