"""Shadow mode: a challenger answers copies of live requests without serving them.

The supervisor hands every inference request to the active backend as usual and, when a
shadow backend is set, sends a copy to it in the background. Both get the same request
id, so the request log holds one primary and one shadow record per request, joined by
`compare_shadow`. The copy never delays, changes or fails the client's answer: it is sent
after the primary request started, it is dropped (and counted) when the shadow already
has its fill of requests in flight, and its answer is read and thrown away.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from typing import Any

log = logging.getLogger("driftloop.serving.shadow")

MIRRORED_PATHS = frozenset({"/answer", "/v1/chat/completions"})
REQUEST_ID_HEADER = "X-Driftloop-Request-Id"
REQUEST_ID = re.compile(r"^req-[0-9a-f]{20}$")


def new_request_id() -> str:
    return f"req-{uuid.uuid4().hex[:20]}"


def request_id_from(headers: Any) -> str | None:
    """The id a caller (the supervisor) assigned, when it is well formed; anything else is ignored."""
    value = headers.get(REQUEST_ID_HEADER) if headers is not None else None
    return value if isinstance(value, str) and REQUEST_ID.match(value) else None


class ShadowMirror:
    def __init__(self, max_in_flight: int = 8, timeout_s: float = 300.0) -> None:
        self.backend: Any = None
        self.max_in_flight, self.timeout_s = max_in_flight, timeout_s
        self.in_flight = 0
        self.sent = self.dropped = self.failed = 0
        self._tasks: set[asyncio.Task] = set()

    def wants(self, method: str, path: str) -> bool:
        return self.backend is not None and method == "POST" and path in MIRRORED_PATHS

    def submit(self, session: Any, path: str, headers: Any, body: bytes) -> None:
        backend = self.backend
        if backend is None:
            return
        if self.in_flight >= self.max_in_flight:
            # A slow challenger must never build a queue that the serving host pays for.
            self.dropped += 1
            return
        self.in_flight += 1
        backend.acquire()
        task = asyncio.create_task(self._send(session, backend, path, headers, body))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, session: Any, backend: Any, path: str, headers: Any, body: bytes) -> None:
        import aiohttp

        try:
            async with session.post(f"http://127.0.0.1:{backend.port}{path}", headers=headers, data=body,
                                    timeout=aiohttp.ClientTimeout(total=self.timeout_s)) as response:
                await response.read()
                if response.status >= 500:
                    self.failed += 1
                else:
                    self.sent += 1
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            self.failed += 1
            log.debug("shadow %s did not answer %s: %s", backend.name, path, exc)
        finally:
            self.in_flight -= 1
            backend.release()

    def describe(self) -> dict | None:
        if self.backend is None:
            return None
        return {**self.backend.describe(), "mirrored": self.sent, "dropped": self.dropped, "failed": self.failed}


def compare_shadow(rows: list[dict]) -> dict:
    """Primary and shadow answers to the same requests, side by side: how often the shadow
    agreed, how its latency, length and guardrail blocks compare."""
    primary = {r["request_id"]: r for r in rows if r.get("role", "primary") == "primary" and r.get("status") == 200}
    pairs = [(primary[r["request_id"]], r) for r in rows if r.get("role") == "shadow" and r.get("request_id") in primary]
    if not pairs:
        return {"pairs": 0}

    def mean(values):
        values = [v for v in values if v is not None]
        return round(sum(values) / len(values), 4) if values else None

    same = sum(p["answer"].strip() == s["answer"].strip() for p, s in pairs)
    return {
        "pairs": len(pairs),
        "primary_versions": sorted({p["model_version"] for p, _ in pairs}),
        "shadow_versions": sorted({s["model_version"] for _, s in pairs}),
        "identical_answers": round(same / len(pairs), 4),
        "primary_latency_s": mean(p.get("latency_s") for p, _ in pairs),
        "shadow_latency_s": mean(s.get("latency_s") for _, s in pairs),
        "primary_answer_chars": mean(p.get("answer_chars") for p, _ in pairs),
        "shadow_answer_chars": mean(s.get("answer_chars") for _, s in pairs),
        "primary_guardrail_blocks": sum(bool(p.get("guardrail")) for p, _ in pairs),
        "shadow_guardrail_blocks": sum(bool(s.get("guardrail")) for _, s in pairs),
        "shadow_errors": sum(s.get("status", 200) != 200 for _, s in pairs),
    }


class AdapterShadow:
    """The bundle's shadow adapter answering copies of live requests in the serving
    process itself: one base model loaded once, the champion and the shadow switched per
    batch (driftloop/serving/engine.py). A copy is generated after its client's answer,
    at the batcher's lowest priority, so it runs only when no client request waits; it is
    dropped (and counted) when `max_in_flight` copies already wait. Both answers go to the
    request log under one request id, as with a shadow process."""

    def __init__(self, version: str, generate, check_output, log_request, max_in_flight: int = 8) -> None:
        self.version, self.generate, self.check_output, self.log_request = version, generate, check_output, log_request
        self.max_in_flight, self.in_flight = max_in_flight, 0
        self.sent = self.dropped = self.failed = 0
        self._tasks: set[asyncio.Task] = set()

    def submit(self, grounded: dict) -> None:
        if self.in_flight >= self.max_in_flight:
            self.dropped += 1
            return
        self.in_flight += 1
        task = asyncio.ensure_future(self._answer(grounded))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, grounded: dict) -> None:
        started = time.perf_counter()
        try:
            generated = await self.generate(prompt=grounded["prompt"], max_new_tokens=grounded["max_new_tokens"], sampling=grounded["sampling"],
                                            adapter="shadow")
            reason = self.check_output(generated["text"])
            chunks = grounded["chunks"]
            # Its own latency, from when its generation was asked for: the client never waited on it.
            self.log_request(request_id=grounded["request_id"], endpoint=grounded["endpoint"], question=grounded["question"],
                             answer="I can't share that answer." if reason else generated["text"], model_version=self.version,
                             latency_s=time.perf_counter() - started, prompt_tokens=generated["prompt_tokens"],
                             completion_tokens=generated["completion_tokens"], chunk_ids=[c["chunk_id"] for c in chunks],
                             scores=[c["score"] for c in chunks], guardrail=reason, role="shadow", chat=grounded["logged"])
            self.sent += 1
        except Exception as exc:  # noqa: BLE001 - a failing shadow is counted, never the client's problem
            self.failed += 1
            log.warning("shadow adapter %s did not answer %s: %r", self.version, grounded["request_id"], exc)
        finally:
            self.in_flight -= 1
