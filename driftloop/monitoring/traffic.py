"""Live traffic as the monitoring stage sees it: the service's request log read back by
day or by time window, feedback joined in, corrupt lines counted (never fatal), and the
columns and rates the drift report compares.

The window that matters is "since the serving version went live": traffic before it was
answered by another model, so it is the reference for the serving signals (latency,
answer length, retrieval scores, ratings, guardrail and refusal rates), while the query
distribution is compared with the questions the champion was trained and evaluated on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from driftloop.evaluation.metrics import REFUSAL

INFERENCE_ENDPOINTS = frozenset({"answer", "chat"})


@dataclass
class LogRead:
    rows: list[dict] = field(default_factory=list)
    corrupt: int = 0
    files: int = 0


def read_day(root: Path, kind: str, day: str) -> LogRead:
    """One day of `kind` records. A line that is not a JSON object (a torn write, a disk
    error, someone's editor) is counted and skipped."""
    out = LogRead()
    for path in sorted((Path(root) / kind / f"date={day}").glob("*.jsonl")):
        out.files += 1
        with path.open("r", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    out.corrupt += 1
                    continue
                if isinstance(record, dict) and isinstance(record.get("at"), str):
                    out.rows.append(record)
                else:
                    out.corrupt += 1
    return out


def _days(start: datetime, end: datetime) -> list[str]:
    day, days = start.date(), []
    while day <= end.date():
        days.append(day.isoformat())
        day += timedelta(days=1)
    return days


def read_window(root: Path, start: datetime, end: datetime | None = None, max_days: int = 31) -> tuple[LogRead, LogRead]:
    """Requests and feedback with start <= at < end (UTC), over at most `max_days` days."""
    end = end or datetime.now(UTC)
    start = max(start, end - timedelta(days=max_days))
    requests, feedback = LogRead(), LogRead()
    for day in _days(start, end):
        for kind, out in (("requests", requests), ("feedback", feedback)):
            part = read_day(root, kind, day)
            out.files += part.files
            out.corrupt += part.corrupt
            out.rows += [r for r in part.rows if start.isoformat() <= r["at"] < end.isoformat()]
    return requests, feedback


def served(rows: list[dict]) -> list[dict]:
    """The user-facing inference requests: shadow copies and feedback calls are not traffic."""
    return [r for r in rows if r.get("role", "primary") == "primary" and r.get("endpoint") in INFERENCE_ENDPOINTS]


def join_feedback(rows: list[dict], feedback: list[dict]) -> list[dict]:
    """Each request with its latest rating and correction, when it got any."""
    latest = {}
    for f in feedback:
        latest[f.get("request_id")] = f
    return [{**r, "rating": latest[r["request_id"]].get("rating"), "correction": latest[r["request_id"]].get("correction")}
            if r.get("request_id") in latest else r for r in rows]


def columns(rows: list[dict]) -> dict[str, list[float]]:
    """The numeric serving signals of answered requests. An answer from the semantic cache
    is a real question but not a new answer: its length, retrieval scores and tokens are the
    first answer's, counted already, and its latency measured no model, so only its question
    counts (a model that turned slow would otherwise hide behind cache hits). The router's
    extracts and refusals generated nothing either and are counted the same way."""
    ok = [r for r in rows if r.get("status") == 200 and generated(r)]
    return {
        "prompt_chars": [float(r.get("question_chars") or len(r.get("question", ""))) for r in rows],
        "answer_chars": [float(r.get("answer_chars") or 0) for r in ok],
        "latency_ms": [1000.0 * float(r["latency_s"]) for r in ok if r.get("latency_s") is not None],
        "top_retrieval_score": [float(max(r["retrieval_scores"])) for r in ok if r.get("retrieval_scores")],
        "completion_tokens": [float(r.get("completion_tokens") or 0) for r in ok],
        "rating": [float(r["rating"]) for r in rows if isinstance(r.get("rating"), int | float)],
    }


def generated(row: dict) -> bool:
    """Whether a model generated the answer: not a semantic-cache hit, nor the router's extract or refusal."""
    return not (row.get("cache") or {}).get("hit") and (row.get("route") or {}).get("path", "rag") == "rag"


def rate_counts(rows: list[dict]) -> dict[str, tuple[int, int]]:
    ok = [r for r in rows if r.get("status") == 200 and generated(r)]  # a cached answer's refusal is counted once, as columns() does
    return {
        "guardrail_rate": (sum(bool(r.get("guardrail")) for r in rows), len(rows)),
        "refusal_rate": (sum(bool(REFUSAL.search(r.get("answer") or "")) for r in ok), len(ok)),
        "error_rate": (sum(int(r.get("status") or 0) >= 500 for r in rows), len(rows)),
    }


def current_deployment(audit_path: Path) -> dict | None:
    """The latest local deployment that went live, from serving/deployment's audit trail."""
    latest = None
    try:
        lines = Path(audit_path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return None
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("target") == "local" and record.get("action") == "deployed":
            latest = record
    return latest
