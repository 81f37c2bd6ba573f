"""The request log: every request and response (PII redacted), latency, tokens, cost,
model version and retrieved chunk ids, appended to JSON-lines files partitioned by day
(`<root>/requests/date=YYYY-MM-DD/<host>-<pid>.jsonl`), which the monitoring stage reads.
Feedback goes to `<root>/feedback/date=.../` the same way.

One file per process and day, opened in append mode and written a whole line at a time,
so concurrent workers never interleave and a crash loses at most the line being written.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from datetime import UTC, datetime
from pathlib import Path

from driftloop.redaction import redact
from driftloop.serving.shadow import new_request_id

__all__ = ["RequestLog", "default_root", "new_request_id", "read_partition"]


def default_root() -> Path:
    """Where the service writes and the monitoring stage reads: DRIFTLOOP_REQUEST_LOG, else
    <DRIFTLOOP_HOME>/data/serving."""
    from driftloop.layout import Layout

    return Layout.from_env().request_log


class RequestLog:
    def __init__(self, root: Path, price_per_1k_prompt: float = 0.0, price_per_1k_completion: float = 0.0) -> None:
        self.root = Path(root)
        self.price_per_1k_prompt, self.price_per_1k_completion = price_per_1k_prompt, price_per_1k_completion
        self._lock = threading.Lock()
        self._name = f"{socket.gethostname()}-{os.getpid()}.jsonl"

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return round(prompt_tokens / 1000 * self.price_per_1k_prompt + completion_tokens / 1000 * self.price_per_1k_completion, 8)

    def _append(self, kind: str, record: dict) -> dict:
        now = datetime.now(UTC)
        record = {"at": now.isoformat(), **record}
        folder = self.root / kind / f"date={now:%Y-%m-%d}"
        line = json.dumps(record, ensure_ascii=False, default=str) + "\n"
        with self._lock:
            folder.mkdir(parents=True, exist_ok=True)
            with (folder / self._name).open("a", encoding="utf-8") as handle:
                handle.write(line)
                handle.flush()
        return record

    def request(self, *, request_id: str, endpoint: str, question: str, answer: str, model_version: str, latency_s: float,
                prompt_tokens: int, completion_tokens: int, chunk_ids: list[str], scores: list[float] | None = None,
                status: int = 200, guardrail: str | None = None, client: str | None = None, role: str = "primary",
                chat: dict | None = None, cache: dict | None = None, route: dict | None = None) -> dict:
        """One served request; `chat` holds what an OpenAI chat request added to the question
        (client system messages, history, sampling), redacted like the question; `cache`, for
        an answer the semantic cache gave, its similarity and the request first answered; `route`,
        the router's path and probabilities."""
        if chat:
            chat = {**chat, "system": [redact(text) for text in chat.get("system", [])],
                    "history": [{"role": turn["role"], "content": redact(turn["content"])} for turn in chat.get("history", [])]}
        return self._append("requests", {
            "request_id": request_id, "endpoint": endpoint, "status": status, "guardrail": guardrail,
            "question": redact(question), "answer": redact(answer), "model_version": model_version,
            "latency_s": round(latency_s, 4), "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "cost": self.cost(prompt_tokens, completion_tokens), "chunk_ids": chunk_ids, "retrieval_scores": scores or [],
            "question_chars": len(question), "answer_chars": len(answer), "client": client, "role": role,
            **({"chat": chat} if chat else {}), **({"cache": cache} if cache else {}), **({"route": route} if route else {}),
        })

    def feedback(self, *, request_id: str, rating: int, correction: str | None = None, comment: str | None = None) -> dict:
        return self._append("feedback", {"request_id": request_id, "rating": rating, "correction": redact(correction or "") or None,
                                         "comment": redact(comment or "") or None})


def read_partition(root: Path, kind: str, day: str) -> list[dict]:
    """Every record of one day, in file order; a torn last line (a crash mid-write) is skipped."""
    rows: list[dict] = []
    for path in sorted((Path(root) / kind / f"date={day}").glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows
