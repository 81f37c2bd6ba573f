"""Evaluation answers kept between reports, so no answer is generated twice.

An entry is keyed by everything the answer and its reference NLL depend on: the model
(base weights hash, and the adapter's content-addressed version), the index version and
prompt version by name, the exact prompt text the model saw (question, retrieved
contexts and chat template, so a changed index or template misses even if a version name
were reused), the reference answer, and the generation settings (max new tokens, dtype,
device). Batch size is left out: greedy answers do not depend on it.

One small file per entry, written atomically (write_jsonl), so readers in other
processes see a whole entry or none, and two writers of one key write the same bytes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from driftloop.atomic import write_jsonl
from driftloop.data.records import read_jsonl


@dataclass(frozen=True)
class CachedAnswer:
    answer: str
    latency_s: float
    new_tokens: int
    nll: float
    nll_tokens: int


def answer_key(model_id: str, index_version: str, prompt_version: str, question_id: str, prompt_text: str, reference: str,
               settings: dict) -> str:
    payload = json.dumps({"model": model_id, "index": index_version, "prompt": prompt_version, "question_id": question_id,
                          "prompt_text": prompt_text, "reference": reference, "settings": settings}, sort_keys=True)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class AnswerCache:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> CachedAnswer | None:
        try:
            return CachedAnswer(**next(read_jsonl(self._path(key))))
        except FileNotFoundError:
            return None

    def put(self, key: str, entry: CachedAnswer) -> None:
        write_jsonl(self._path(key), [asdict(entry)])
