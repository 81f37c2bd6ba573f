"""Answers by meaning: a question whose embedding is within `threshold` (cosine) of one
already answered gets that answer back without retrieval or generation.

Entries live in the service's memory, keyed by everything that decides an answer: the model
version (base and adapter), the index version, the prompt version and the request's `k` and
token limit. A new bundle is a new process with an empty cache, and within one process an
entry is only ever found under its own key, so an answer is never served for another
model, index or prompt. Only deterministic requests are cached (greedy decoding, no client
system prompt or history), and only answers that passed the output guardrails. Memory is
bounded by `max_entries` (least recently used out first) and, when set, by age (`ttl_s`).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Hit:
    result: dict
    similarity: float
    request_id: str


class SemanticCache:
    def __init__(self, threshold: float, max_entries: int = 10_000, ttl_s: float = 0.0) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"semantic cache threshold {threshold!r}: a cosine similarity in (0, 1]")
        if max_entries < 1:
            raise ValueError(f"semantic cache max_entries {max_entries!r}: at least 1")
        self.threshold, self.max_entries, self.ttl_s = float(threshold), int(max_entries), float(ttl_s)
        self._lock = threading.Lock()
        self._order: OrderedDict[int, tuple] = OrderedDict()  # id -> (key, stored at), least recently used first
        self._spaces: dict[tuple, dict] = {}  # key -> {"ids": [...], "vectors": (n, d) array, "results": {id: (result, request_id)}}
        self._next = 0

    def __len__(self) -> int:
        return len(self._order)

    def get(self, key: tuple, vector: np.ndarray) -> Hit | None:
        vector = _unit(vector)
        with self._lock:
            space = self._spaces.get(key)
            if not space or not space["ids"]:
                return None
            similarities = space["vectors"] @ vector
            best = int(np.argmax(similarities))
            entry = space["ids"][best]
            if similarities[best] < self.threshold:
                return None
            if self.ttl_s and time.monotonic() - self._order[entry][1] > self.ttl_s:
                self._drop(entry)
                return None
            self._order.move_to_end(entry)
            result, request_id = space["results"][entry]
            return Hit(result, float(similarities[best]), request_id)

    def put(self, key: tuple, vector: np.ndarray, result: dict, request_id: str) -> None:
        vector = _unit(vector)
        with self._lock:
            space = self._spaces.setdefault(key, {"ids": [], "vectors": np.zeros((0, vector.shape[0]), dtype=np.float32), "results": {}})
            entry, self._next = self._next, self._next + 1
            space["ids"].append(entry)
            space["vectors"] = np.vstack([space["vectors"], vector[None, :]])
            space["results"][entry] = (result, request_id)
            self._order[entry] = (key, time.monotonic())
            while len(self._order) > self.max_entries:
                self._drop(next(iter(self._order)))

    def _drop(self, entry: int) -> None:
        key, _ = self._order.pop(entry)
        space = self._spaces[key]
        at = space["ids"].index(entry)
        del space["ids"][at]
        space["vectors"] = np.delete(space["vectors"], at, axis=0)
        del space["results"][entry]
        if not space["ids"]:
            del self._spaces[key]


def _unit(vector: np.ndarray) -> np.ndarray:
    vector = np.asarray(vector, dtype=np.float32).reshape(-1)
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 0 else vector


def cacheable(chat) -> bool:
    """Only a request whose answer is decided by its question alone: a plain question, or a
    chat request without client system prompt or history, greedy and not streamed."""
    return chat is None or (not chat.stream and not chat.system and not chat.history and chat.sampling.greedy and not chat.sampling.stop)


def answer_key(spec: dict, model_version: str, k: int, max_new_tokens: int, endpoint: str) -> tuple:
    """Everything besides the question that decides an answer (the endpoint too: a chat
    request's prompt is composed its own way)."""
    return (model_version, spec.get("index_version"), spec.get("prompt_version"), k, max_new_tokens, endpoint)


def served_from(hit: Hit, request_id: str, latency_s: float) -> dict:
    """The cached answer as this request's result: its own id and latency, no tokens spent."""
    return {**hit.result, "request_id": request_id, "latency_s": latency_s, "prompt_tokens": 0, "completion_tokens": 0,
            "cache": {"hit": True, "similarity": round(hit.similarity, 4), "answered_as": hit.request_id}}
