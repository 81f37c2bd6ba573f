"""Derive evaluation questions, reference answers and contexts from a corpus.

Each heading with prose under it becomes one question: API headings ask what the
API does, module headings what the module is for, other headings what the docs say
about the subject. The answer is the section's opening prose, the reference context
is the section. Splits are by document, so no document feeds both train and eval.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass

from driftloop.data.markup import paragraphs, sections
from driftloop.data.records import Document, stable_id

_API = re.compile(r"^(?:Class\s+)?`([\w.]+)(\(.*\))?`$")
_MODULE = re.compile(r"^Module\s+`([\w.]+)`$")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@dataclass(frozen=True)
class QAPair:
    qa_id: str
    doc_id: str
    question: str
    answer: str
    context: str
    heading: str
    split: str

    def to_row(self) -> dict:
        return asdict(self)


def question_for(heading: str) -> str:
    module = _MODULE.match(heading)
    if module:
        return f"What is the Python module `{module.group(1)}` for?"
    api = _API.match(heading)
    if api:
        name, args = api.group(1), api.group(2)
        if heading.startswith("Class"):
            return f"What is the class `{name}` used for?"
        return f"What does `{name}` do?" if args is not None else f"What is `{name}`?"
    subject = heading.strip().rstrip(":.")
    return f"What does the documentation say about {subject}?"


def _answer(body: str, min_chars: int, max_chars: int) -> str | None:
    prose = paragraphs(body)
    if not prose:
        return None
    answer = ""
    for sentence in _SENTENCE_END.split(prose[0]):
        if answer and len(answer) + len(sentence) + 1 > max_chars:
            break
        answer = f"{answer} {sentence}".strip()
    answer = answer[:max_chars]
    return answer if len(answer) >= min_chars else None


def split_of(doc_id: str, eval_fraction: float) -> str:
    bucket = int(hashlib.sha256(doc_id.encode("utf-8")).hexdigest()[:8], 16) % 10_000
    return "eval" if bucket < eval_fraction * 10_000 else "train"


def derive_qa_pairs(
    documents: Iterable[Document],
    eval_fraction: float = 0.2,
    min_answer_chars: int = 40,
    max_answer_chars: int = 600,
    max_context_chars: int = 2000,
) -> list[QAPair]:
    pairs: list[QAPair] = []
    for doc in documents:
        split = split_of(doc.doc_id, eval_fraction)
        for _level, heading, body in sections(doc.text):
            if not heading:
                continue
            answer = _answer(body, min_answer_chars, max_answer_chars)
            if answer is None:
                continue
            question = question_for(heading)
            pairs.append(
                QAPair(
                    qa_id=stable_id(doc.doc_id, heading, body),
                    doc_id=doc.doc_id,
                    question=question,
                    answer=answer,
                    context=f"{heading}\n\n{body}"[:max_context_chars],
                    heading=heading,
                    split=split,
                )
            )
    return pairs


def normalized_question(question: str) -> str:
    return " ".join(re.findall(r"\w+", question.lower()))
