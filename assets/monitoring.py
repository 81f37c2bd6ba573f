"""Monitoring stage: the service's request log as daily partitions, and the drift of live
traffic against what the serving champion was trained and evaluated on.

`monitoring/drift_report` decides nothing by itself: it records `drifted` and
`enough_data` in its metadata, and the drift sensor turns a drifted report into one
retrain per drift window.
"""

import json
from collections import Counter
from datetime import timedelta
from pathlib import Path

import dagster as dg
import numpy as np
from pydantic import Field

from assets.common import OWNERS, json_meta, load_dataset
from assets.keys import DEPLOYMENT, DRIFT_REPORT, INFERENCE_LOG, QA_PAIRS
from assets.stage import Stage
from driftloop.atomic import write_bytes
from resources.dvc import DvcStore
from resources.lineage import Lineage
from resources.models import ModelCatalog

daily = dg.DailyPartitionsDefinition(start_date="2026-01-01", end_offset=1, timezone="UTC")
stage = Stage()


def log_root(lineage: Lineage | None = None) -> Path:
    """Where the lineage's service writes its request log (the default lineage: DRIFTLOOP_REQUEST_LOG, else under its home)."""
    return (lineage or Lineage()).layout().request_log


# The schedules refresh both daily; a day and two hours without one means the daemon or
# the schedule is off, and the UI should say so before anyone trusts a stale "no drift".
DAILY = dg.FreshnessPolicy.time_window(fail_window=timedelta(hours=26), warn_window=timedelta(hours=25))


@stage.asset(key=INFERENCE_LOG, partitions_def=daily, group_name="monitoring", kinds={"json"}, owners=OWNERS, code_version="1",
          tags={"stage": "monitoring"}, freshness_policy=DAILY,
          # A backfill of a month (late feedback joined in, or the log rebuilt after a redaction
          # fix) is one run that reads each day once, not thirty runs of process start-up;
          # `dg launch --assets monitoring/inference_log --partition-range A...B` needs it.
          backfill_policy=dg.BackfillPolicy.single_run())
def inference_log(context: dg.AssetExecutionContext, lineage: Lineage) -> dg.MaterializeResult:
    """Each day of served requests (PII already redacted by the service) with their
    feedback joined in; corrupt lines are counted and skipped; shadow answers compared with
    the answers that were served. A run may cover a range of days (a backfill): each day's
    file is written, and the metadata covers the range with one row per day."""
    from driftloop.monitoring.traffic import join_feedback, read_day, served
    from driftloop.serving.shadow import compare_shadow

    out, days, all_rows, all_requests, corrupt = lineage.layout().inference_log, [], [], [], 0
    for day in context.partition_keys:
        requests, feedback = read_day(log_root(lineage), "requests", day), read_day(log_root(lineage), "feedback", day)
        rows = join_feedback(served(requests.rows), feedback.rows)
        if requests.corrupt or feedback.corrupt:
            context.log.warning(f"{day}: skipped {requests.corrupt} corrupt request lines and {feedback.corrupt} corrupt feedback lines")
        write_bytes(out / f"date={day}.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode())
        corrupt += requests.corrupt + feedback.corrupt
        all_rows += rows
        all_requests += requests.rows
        days.append({"day": day, **_day_figures(rows), "corrupt_lines": requests.corrupt + feedback.corrupt})
    metadata = {**_traffic_metadata(all_rows), "corrupt_lines": dg.MetadataValue.int(corrupt),
                "shadow": json_meta(compare_shadow(all_requests))}
    if len(days) > 1:
        metadata["days"] = dg.MetadataValue.md(_days_table(days))
    return dg.MaterializeResult(metadata=metadata)


def _day_figures(rows: list[dict]) -> dict:
    return {"requests": len(rows), "errors": sum(int(r.get("status") or 0) >= 500 for r in rows),
            "feedback": sum(r.get("rating") is not None for r in rows)}


def _traffic_metadata(rows: list[dict]) -> dict:
    latencies = sorted(r["latency_s"] for r in rows if r.get("status") == 200 and r.get("latency_s") is not None)
    rated = [r["rating"] for r in rows if r.get("rating") is not None]
    figures = _day_figures(rows)
    return {
        "dagster/row_count": dg.MetadataValue.int(figures["requests"]),
        "errors": dg.MetadataValue.int(figures["errors"]),
        "blocked": dg.MetadataValue.int(sum(bool(r.get("guardrail")) for r in rows)),
        "cache_hits": dg.MetadataValue.int(sum(bool((r.get("cache") or {}).get("hit")) for r in rows)),
        # The router's path per answered request (rag where no router ran).
        "routes": json_meta(dict(Counter((r.get("route") or {}).get("path", "rag") for r in rows if r.get("status") == 200))),
        "feedback": dg.MetadataValue.int(figures["feedback"]),
        "corrections": dg.MetadataValue.int(sum(bool(r.get("correction")) for r in rows)),
        "mean_rating": dg.MetadataValue.float(round(float(np.mean(rated)), 3) if rated else float("nan")),
        "p50_latency_s": dg.MetadataValue.float(latencies[len(latencies) // 2] if latencies else float("nan")),
        "p95_latency_s": dg.MetadataValue.float(latencies[int(0.95 * (len(latencies) - 1))] if latencies else float("nan")),
        "cost": dg.MetadataValue.float(round(float(sum(r.get("cost") or 0.0 for r in rows)), 6)),
        "model_versions": json_meta(sorted({r.get("model_version") for r in rows if r.get("model_version")})),
    }


def _days_table(days: list[dict]) -> str:
    lines = ["| day | requests | errors | feedback | corrupt lines |", "|---|---|---|---|---|"]
    lines += [f"| {d['day']} | {d['requests']} | {d['errors']} | {d['feedback']} | {d['corrupt_lines']} |" for d in days]
    return "\n".join(lines)


class DriftCheckConfig(dg.Config):
    policy: str = Field(default="both", pattern="^(both|either|mmd|classifier)$",
                        description="Query drift when both embedding tests agree (default), either, or one of them.")
    min_queries: int = Field(default=50, ge=10, description="Fewer live queries than this: 'not enough data', no retrain.")
    max_queries: int = Field(default=2000, ge=10, description="The most recent queries of the window that are compared.")
    reference_queries: int = Field(default=1000, ge=10, description="Reference questions sampled from data/qa_pairs.")
    permutations: int = Field(default=200, ge=20)
    classifier_auc_threshold: float = Field(default=0.55, gt=0.5, lt=1.0)
    seed: int = 0


@stage.asset(key=DRIFT_REPORT, deps=[QA_PAIRS, DEPLOYMENT], group_name="monitoring", kinds={"scikitlearn"}, owners=OWNERS, code_version="1",
          tags={"stage": "monitoring"}, freshness_policy=DAILY)
def drift_report(context: dg.AssetExecutionContext, config: DriftCheckConfig, models: ModelCatalog, dvc: DvcStore,
                 lineage: Lineage) -> dg.MaterializeResult:
    """Drift of the traffic served since the current version went live. Queries: MMD
    permutation test and a domain classifier's ROC AUC on their embeddings, against the
    questions of data/qa_pairs. Serving signals (prompt and answer length, latency, top
    retrieval score, ratings; guardrail, refusal and error rates): KS and PSI against the
    traffic before this version went live. Too little traffic says 'not enough data'."""
    from driftloop.monitoring.drift import DriftConfig
    from driftloop.monitoring.report import check_drift, reference_embeddings
    from driftloop.plots import markdown_image

    layout, embedder = lineage.layout(), models.embedder()
    settings = DriftConfig(policy=config.policy, seed=config.seed, embedding_min_samples=config.min_queries,
                           mmd_permutations=config.permutations, classifier_auc_threshold=config.classifier_auc_threshold)
    questions = [r["question"] for r in load_dataset(dvc, "qa_pairs")]
    ref_vectors, ref_questions = reference_embeddings(questions, dvc.version("qa_pairs").md5, embedder, models.embedding_model,
                                                      layout.drift_reference, limit=config.reference_queries, seed=config.seed,
                                                      batch_size=models.embedding_batch_size)
    checked = check_drift(layout, embedder, ref_vectors, ref_questions, settings, max_queries=config.max_queries,
                          batch_size=models.embedding_batch_size, run_id=context.run.run_id)
    report, window = checked.report, checked.window
    (context.log.warning if report.drifted else context.log.info)(report.summary())
    return dg.MaterializeResult(metadata={
        "drifted": dg.MetadataValue.bool(report.drifted),
        "enough_data": dg.MetadataValue.bool(report.enough_data),
        "summary": dg.MetadataValue.text(report.summary()),
        "reasons": json_meta(report.reasons),
        "window_start": dg.MetadataValue.text(window["start"]),
        "window_end": dg.MetadataValue.text(window["end"]),
        "serving": dg.MetadataValue.text(str(window["serving"])),
        "retrained_for_window": dg.MetadataValue.text(window["retrained_for"] or ""),
        "n_current": dg.MetadataValue.int(report.n_current),
        "n_reference": dg.MetadataValue.int(report.n_reference),
        "corrupt_lines": dg.MetadataValue.int(checked.corrupt_lines),
        "signals": dg.MetadataValue.md(report.to_markdown()),
        "plot": dg.MetadataValue.md(markdown_image(checked.plot, "reference vs live queries")),
        "report": dg.MetadataValue.path(str(checked.report_path)),
    })


def build(lineage: Lineage | None = None, config: dict[str, dict] | None = None) -> list[dg.AssetsDefinition]:
    built = stage.build(lineage or Lineage(), config)
    return [built["inference_log"], built["drift_report"]]


monitoring_assets = build()
inference_log, drift_report = monitoring_assets
