"""Answers by meaning: a question whose embedding is within `threshold` (cosine) of one
already answered gets that answer back without retrieval or generation.

Embeddings alone conflate questions that differ in one name: with all-MiniLM-L6-v2,
"What does `BaseEventLoop.set_task_factory` do?" and "... `get_task_factory` do?" score
0.981. So by default (`match="words"`) a hit also needs the same content words, any order,
case and punctuation aside, without articles, auxiliaries and pronouns: rewordings of that
kind are served from the cache, a paraphrase with other words is answered afresh, and a
question about another name never gets that name's answer. `match="embedding"` trusts the
similarity alone, for embeddings and traffic where that was checked.

Entries live in the service's memory, keyed by everything that decides an answer: the model
version (base and adapter), the index version, the prompt version and the request's `k` and
token limit. A new bundle is a new process with an empty cache, and within one process an
entry is only ever found under its own key, so an answer is never served for another
model, index or prompt. Only deterministic requests are cached (greedy decoding, no client
system prompt or history), and only answers that passed the output guardrails. Memory is
bounded by `max_entries` (least recently used out first) and, when set, by age (`ttl_s`).
"""

from __future__ import annotations

import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np


# Words whose presence or absence does not change what is asked.
FILLER = frozenset("a an the do does did is are was were be i me my we our you your please".split())
WORD = re.compile(r"[a-z0-9_]+(?:[.:/-][a-z0-9_]+)*")


def wording(question: str) -> str:
    """The question's words in order, case and punctuation aside: two questions with the same
    wording are the same question, found without embedding it."""
    return " ".join(WORD.findall(question.lower()))


def content_words(question: str) -> frozenset[str]:
    """The question's words that decide what it asks: names kept whole (`os.path.join`),
    case and punctuation dropped, filler words out."""
    return frozenset(w for w in WORD.findall(question.lower()) if w not in FILLER)


@dataclass(frozen=True)
class Hit:
    result: dict
    similarity: float
    request_id: str


class SemanticCache:
    def __init__(self, threshold: float, max_entries: int = 10_000, ttl_s: float = 0.0, match: str = "words") -> None:
        if match not in ("words", "embedding"):
            raise ValueError(f"semantic cache match {match!r}: words or embedding")
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"semantic cache threshold {threshold!r}: a cosine similarity in (0, 1]")
        if max_entries < 1:
            raise ValueError(f"semantic cache max_entries {max_entries!r}: at least 1")
        self.threshold, self.max_entries, self.ttl_s, self.match = float(threshold), int(max_entries), float(ttl_s), match
        self._lock = threading.Lock()
        self._order: OrderedDict[int, tuple] = OrderedDict()  # id -> (key, stored at), least recently used first
        self._spaces: dict[tuple, dict] = {}
        self._worded: dict[tuple, int] = {}  # (key, wording) -> entry: a repeat is found without its embedding  # key -> {"ids": [...], "vectors": (n, d) array, "results": {id: (result, request_id)}}
        self._next = 0

    def __len__(self) -> int:
        return len(self._order)

    def repeat(self, key: tuple, question: str) -> Hit | None:
        """The answer to a question asked before in the same words (case, spacing and
        punctuation aside), found before any embedding is computed."""
        with self._lock:
            entry = self._worded.get((key, wording(question)))
            if entry is None:
                return None
            return self._take(key, entry, 1.0)

    def _take(self, key: tuple, entry: int, similarity: float) -> Hit | None:
        if self.ttl_s and time.monotonic() - self._order[entry][1] > self.ttl_s:
            self._drop(entry)
            return None
        self._order.move_to_end(entry)
        result, request_id, _, _ = self._spaces[key]["results"][entry]
        return Hit(result, similarity, request_id)

    def get(self, key: tuple, vector: np.ndarray, question: str = "") -> Hit | None:
        """The most similar answer at or above the threshold (with the same content words as
        `question`, under match="words"), or None."""
        vector, words = _unit(vector), content_words(question)
        with self._lock:
            space = self._spaces.get(key)
            if not space or not space["ids"]:
                return None
            similarities = space["vectors"] @ vector
            for best in np.argsort(-similarities):
                if similarities[best] < self.threshold:
                    return None
                entry = space["ids"][int(best)]
                if self.match == "words" and space["results"][entry][2] != words:
                    continue
                return self._take(key, entry, float(similarities[best]))
            return None

    def put(self, key: tuple, vector: np.ndarray, result: dict, request_id: str, question: str = "") -> None:
        vector = _unit(vector)
        with self._lock:
            space = self._spaces.setdefault(key, {"ids": [], "vectors": np.zeros((0, vector.shape[0]), dtype=np.float32), "results": {}})
            entry, self._next = self._next, self._next + 1
            space["ids"].append(entry)
            space["vectors"] = np.vstack([space["vectors"], vector[None, :]])
            space["results"][entry] = (result, request_id, content_words(question), wording(question))
            self._worded[(key, wording(question))] = entry
            self._order[entry] = (key, time.monotonic())
            while len(self._order) > self.max_entries:
                self._drop(next(iter(self._order)))

    def _drop(self, entry: int) -> None:
        key, _ = self._order.pop(entry)
        space = self._spaces[key]
        at = space["ids"].index(entry)
        del space["ids"][at]
        space["vectors"] = np.delete(space["vectors"], at, axis=0)
        worded = space["results"].pop(entry)[3]
        if self._worded.get((key, worded)) == entry:
            del self._worded[(key, worded)]
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
