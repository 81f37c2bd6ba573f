"""One drift check as the pipeline runs it: the traffic served since the current version
went live against what came before it and against the questions the champion was trained
and evaluated on, and the report folder (report.json, report.md, drift.png).

The check decides nothing by itself; `DriftCheck.report.drifted` is what a sensor turns
into a retrain.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from driftloop.atomic import write_bytes, write_json, write_text
from driftloop.layout import Layout
from driftloop.monitoring.drift import DriftConfig, DriftReport, drift_report, plot_drift
from driftloop.monitoring.traffic import columns, current_deployment, join_feedback, rate_counts, read_window, served

# The request log's first day: the window before the first deployment starts here.
LOG_START = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class DriftCheck:
    report: DriftReport
    window: dict  # start, end, the serving version and tag, and the drift window it was retrained for
    corrupt_lines: int  # request and feedback lines of the window that could not be read
    folder: Path
    plot: bytes  # drift.png

    @property
    def report_path(self) -> Path:
        return self.folder / "report.json"


def reference_embeddings(questions: Sequence[str], dataset_version: str, embedder, model_name: str, cache_dir: Path, *, limit: int,
                         seed: int, batch_size: int) -> tuple[np.ndarray, list[str]]:
    """A seeded sample of at most `limit` reference questions and their embeddings, cached
    under `cache_dir` by the dataset's version, the embedding model and the sample."""
    questions = list(questions)
    if len(questions) > limit:
        rng = np.random.default_rng(seed)
        questions = [questions[i] for i in sorted(rng.choice(len(questions), limit, replace=False))]
    key = hashlib.sha256(json.dumps([dataset_version, model_name, embedder.describe(), limit, seed],
                                    sort_keys=True, default=str).encode()).hexdigest()[:16]
    cache = cache_dir / f"{key}.npy"
    if cache.is_file():
        return np.load(cache), questions
    vectors = embedder.encode(questions, batch_size=batch_size)
    buffer = io.BytesIO()
    np.save(buffer, vectors)
    write_bytes(cache, buffer.getvalue())
    return vectors, questions


def check_drift(layout: Layout, embedder, ref_vectors: np.ndarray, ref_questions: Sequence[str], config: DriftConfig, *,
                max_queries: int, batch_size: int, run_id: str, now: datetime | None = None) -> DriftCheck:
    """Compare the most recent `max_queries` queries served since the current deployment
    with the reference questions (embeddings), and their serving signals with the last
    `max_queries` served before it; write the report under `layout.drift_reports`."""
    now = now or datetime.now(UTC)
    live = current_deployment(layout.deployments) or {}
    start = datetime.fromisoformat(live["at"]) if live else LOG_START
    requests, feedback = read_window(layout.request_log, start, now)
    before, before_feedback = read_window(layout.request_log, LOG_START, start)
    current = join_feedback(served(requests.rows), feedback.rows)[-max_queries:]
    previous = join_feedback(served(before.rows), before_feedback.rows)[-max_queries:]
    cur_vectors = embedder.encode([r.get("question") or "" for r in current], batch_size=batch_size)
    # Query length is compared with the reference questions, as the query embeddings are;
    # the other serving signals with the traffic before this version.
    ref_columns = {**columns(previous), "prompt_chars": [float(len(q)) for q in ref_questions]}
    cur_columns = columns(current)
    ref_rates, cur_rates = rate_counts(previous), rate_counts(current)
    rates = {name: (*ref_rates[name], *cur_rates[name]) for name in ref_rates}
    report = drift_report(ref_vectors, cur_vectors, ref_columns, cur_columns, rates, config)
    png = plot_drift(ref_vectors, cur_vectors, ref_columns, cur_columns, report, seed=config.seed)

    window = {"start": start.isoformat(), "end": now.isoformat(), "serving": live.get("model_version"), "tag": live.get("tag"),
              "retrained_for": live.get("drift_window")}
    corrupt = requests.corrupt + feedback.corrupt
    folder = layout.drift_reports / f"{now:%Y%m%dT%H%M%S}-{run_id[:8]}"
    write_json(folder / "report.json", {"window": window, "corrupt_lines": corrupt, **report.to_dict()}, indent=2, sort_keys=False)
    write_text(folder / "report.md", report.to_markdown() + "\n")
    write_bytes(folder / "drift.png", png)
    return DriftCheck(report, window, corrupt, folder, png)
