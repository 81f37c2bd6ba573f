"""Backfills from the command line, as an ML engineer runs them: the request log of a range
of past days rebuilt in one run (the asset's single-run backfill policy), each day's
partition materialized and its file written; by `dg launch --partition-range` in process,
and by `driftloop backfill` through the running daemon, listed on the UI's backfills page."""

import json
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pytest

from assets.keys import INFERENCE_LOG
from cli import commands
from driftloop.serving.requestlog import RequestLog
from serving_helpers import dagster_ui

ROOT = Path(__file__).resolve().parents[1]
DAYS = {"2026-03-01": 2, "2026-03-02": 3, "2026-03-03": 4}


@pytest.fixture
def project(tmp_path):
    home, dagster_home = tmp_path / "project", tmp_path / "dagster_home"
    dagster_home.mkdir()
    shutil.copy(ROOT / "orchestration" / "dagster.yaml", dagster_home / "dagster.yaml")
    log = RequestLog(home / "data" / "serving")
    for i in range(max(DAYS.values())):
        log.request(request_id=f"req-{i:020x}", endpoint="answer", question=f"How do I open file number {i}?", answer="With open().",
                    model_version="lora-aaaa", latency_s=0.4, prompt_tokens=50, completion_tokens=10, chunk_ids=["c1"])
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    (written,) = (home / "data" / "serving" / "requests" / f"date={today}").glob("*.jsonl")
    records = [json.loads(line) for line in written.read_text().splitlines()]
    shutil.rmtree(written.parent)
    # Past days' logs as the service left them: the records carry their own day.
    for day, n in DAYS.items():
        folder = home / "data" / "serving" / "requests" / f"date={day}"
        folder.mkdir(parents=True)
        (folder / "part-0.jsonl").write_text("".join(json.dumps({**r, "at": f"{day}T12:00:00+00:00"}) + "\n" for r in records[:n]))
    return {"home": home, "env": {**os.environ, "DRIFTLOOP_HOME": str(home), "DAGSTER_HOME": str(dagster_home)}}


def test_partition_range_backfill_rebuilds_each_day_in_one_run(project, monkeypatch):
    first, last = min(DAYS), max(DAYS)
    done = subprocess.run(commands.launch(assets=INFERENCE_LOG.to_user_string(), partition_range=f"{first}...{last}"),
                          cwd=ROOT, env=project["env"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for day, n in DAYS.items():
        assert len((project["home"] / "artifacts" / "monitoring" / "inference_log" / f"date={day}.jsonl").read_text().splitlines()) == n
    monkeypatch.setenv("DAGSTER_HOME", project["env"]["DAGSTER_HOME"])
    with dg.DagsterInstance.get() as instance:
        assert instance.get_materialized_partitions(INFERENCE_LOG) == set(DAYS)
        (run,) = instance.get_runs()
        assert run.tags["dagster/asset_partition_range_start"] == first and run.tags["dagster/asset_partition_range_end"] == last
        event = instance.get_latest_materialization_event(INFERENCE_LOG).asset_materialization
        assert event.metadata["dagster/row_count"].value == sum(DAYS.values())
        assert all(f"| {day} | {n} |" in event.metadata["days"].value for day, n in DAYS.items())


def test_a_range_outside_the_partitions_is_refused_with_the_key_named(project):
    done = subprocess.run(commands.launch(assets=INFERENCE_LOG.to_user_string(), partition_range="2025-12-30...2026-01-02"),
                          cwd=ROOT, env=project["env"], capture_output=True, text=True, timeout=600)
    assert done.returncode != 0
    assert "2025-12-30" in done.stdout + done.stderr
    assert not (project["home"] / "artifacts" / "monitoring" / "inference_log").exists()


@pytest.mark.integration
@pytest.mark.timeout(900)
def test_driftloop_backfill_is_run_by_the_daemon_and_listed_on_the_backfills_page(project):
    from cli.backfill import graphql

    with dagster_ui(project["env"], ROOT) as port:
        url = f"http://127.0.0.1:{port}"
        refused = subprocess.run([sys.executable, "-m", "cli.main", "backfill", INFERENCE_LOG.to_user_string(), "--from", "2025-12-30",
                                  "--to", "2026-01-02", "--url", url], cwd=ROOT, env=project["env"], capture_output=True, text=True)
        assert refused.returncode == 2 and "2025-12-30" in refused.stdout, refused.stdout + refused.stderr
        done = subprocess.run([sys.executable, "-m", "cli.main", "backfill", INFERENCE_LOG.to_user_string(), "--from", min(DAYS),
                               "--to", max(DAYS), "--url", url, "--wait", "600"], cwd=ROOT, env=project["env"],
                              capture_output=True, text=True, timeout=700)
        assert done.returncode == 0, done.stdout + done.stderr
        listed = graphql(url, "{ partitionBackfillsOrError { ... on PartitionBackfills { results { id status numPartitions "
                              "title runs(limit: 10) { runId } } } } }", {})["partitionBackfillsOrError"]["results"]
        (backfill,) = listed
        assert backfill["status"] in ("COMPLETED", "COMPLETED_SUCCESS") and backfill["numPartitions"] == len(DAYS)
        assert backfill["id"] in done.stdout and len(backfill["runs"]) == 1  # the single-run backfill policy
        for day, n in DAYS.items():
            assert len((project["home"] / "artifacts" / "monitoring" / "inference_log" / f"date={day}.jsonl").read_text().splitlines()) == n
