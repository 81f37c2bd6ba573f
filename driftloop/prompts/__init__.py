"""Versioned prompt templates: a file per version, so a report can name the one it used."""

from __future__ import annotations

import json
from dataclasses import dataclass
from collections.abc import Sequence
from importlib import resources

# Training, evaluation and serving show the generator the same context: this many
# retrieved chunks, cut to this many characters.
CONTEXT_CHUNKS = 3
MAX_CONTEXT_CHARS = 2000


def join_contexts(texts: Sequence[str], max_chars: int = MAX_CONTEXT_CHARS) -> str:
    return "\n\n".join(texts)[:max_chars]


@dataclass(frozen=True)
class PromptTemplate:
    version: str
    system: str
    user: str

    def messages(self, question: str, context: str) -> list[dict[str, str]]:
        return [
            {"role": "system", "content": self.system},
            {"role": "user", "content": self.user.format(question=question, context=context)},
        ]


def load_prompt(version: str = "rag.v1") -> PromptTemplate:
    path = resources.files(__package__) / f"{version}.json"
    if not path.is_file():
        available = sorted(p.name.removesuffix(".json") for p in resources.files(__package__).iterdir() if p.name.endswith(".json"))
        raise FileNotFoundError(f"prompt template {version!r} not found; available: {available}")
    data = json.loads(path.read_text(encoding="utf-8"))
    return PromptTemplate(version=data["version"], system=data["system"], user=data["user"])
