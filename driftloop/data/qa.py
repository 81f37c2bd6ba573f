"""Derive evaluation questions, reference answers and contexts from a corpus.

Each heading with prose under it becomes one question that names the page and the
section it comes from, because real manuals repeat the same headings on every page
(Synopsis, Parameters, Examples): API headings ask what the API does, module headings
what the module is for, a section whose opening sentence defines the page's subject
asks for that definition, well-known reference sections get their own phrasing, and
any other section is asked about by its path under the document's title. The answer
is the section's opening prose, the reference context is the section. Splits are by
document, so no document feeds both train and eval.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

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


# Phrasings for the sections that reference manuals repeat on every page.
_SECTION_FORMS = {
    "synopsis": "What is the syntax of {title}?",
    "syntax": "What is the syntax of {title}?",
    "description": "What is {title}?",
    "overview": "What is {title}?",
    "introduction": "What is {title}?",
    "parameters": "What parameters does {title} take?",
    "arguments": "What arguments does {title} take?",
    "options": "What options does {title} have?",
    "outputs": "What does {title} output?",
    "output": "What does {title} output?",
    "return value": "What does {title} return?",
    "returns": "What does {title} return?",
    "notes": "What notes does the documentation give on {title}?",
    "examples": "What examples of {title} does the documentation give?",
    "example": "What example of {title} does the documentation give?",
    "compatibility": "What does the documentation say about the compatibility of {title}?",
    "see also": "What is related to {title}?",
    "history": "What is the history of {title}?",
}
_DEFINITION = re.compile(r"^(?:(?:An?|The)\s+)?(?P<subject>[\w`'\-. ]{2,60}?)\s+(?P<verb>is|are)\s+(?:an?|the|one|used)\b")
_NOT_A_SUBJECT = {"it", "this", "these", "that", "there", "they", "which", "what", "here", "each", "all", "both", "such"}


def _words(text: str) -> set[str]:
    return {w.rstrip("s") for w in re.findall(r"[a-z0-9]+", text.lower()) if len(w) > 2}


def _definition_question(title: str, answer: str) -> str | None:
    """'What are assert statements?' when the section opens by defining the page's subject."""
    match = _DEFINITION.match(answer)
    if not match:
        return None
    subject = match.group("subject").strip()
    if len(subject.split()) > 6 or subject.split()[0].lower() in _NOT_A_SUBJECT or not _words(subject) & _words(title):
        return None
    subject = subject if subject.isupper() or "`" in subject else subject[0].lower() + subject[1:]
    return f"What {match.group('verb')} {subject}?"


_NUMBERING = re.compile(r"^(?:\d+\.)+\d*\s+")
# Callouts inside a section, not sections of their own: asked about under their parent.
_ADMONITIONS = {"note", "caution", "tip", "warning", "important", "danger", "attention", "hint"}


def normalized_question(question: str) -> str:
    return " ".join(re.findall(r"\w+", question.lower()))


def _bare(title: str) -> str:
    """A title as a question names it: without a leading article or section numbering."""
    return re.sub(r"^the\s+", "", _NUMBERING.sub("", title.strip().rstrip(":.")), flags=re.I)


def question_for(heading: str, title: str | None = None, parents: tuple[str, ...] = (), answer: str = "") -> str:
    """The question a section answers; `title` and `parents` (the headings above it,
    below the title) make it specific to its page."""
    module = _MODULE.match(heading)
    if module:
        return f"What is the Python module `{module.group(1)}` for?"
    api = _API.match(heading)
    if api:
        name, args = api.group(1), api.group(2)
        if heading.startswith("Class"):
            return f"What is the class `{name}` used for?"
        return f"What does `{name}` do?" if args is not None else f"What is `{name}`?"
    subject = _NUMBERING.sub("", heading.strip().rstrip(":."))
    if not title or normalized_question(heading) == normalized_question(title):
        return _definition_question(subject, answer) or f"What does the documentation say about {subject}?"
    page = _bare(title)
    if subject.lower() in _ADMONITIONS:
        about = f" about {_bare(parents[-1])}" if parents else ""
        return f"What {subject.lower()} does the {page} documentation give{about}?"
    form = _SECTION_FORMS.get(subject.lower())
    if form and not parents:
        return form.format(title=page)
    under = f" under {_bare(parents[-1])}" if parents else ""
    return f"What does the {page} documentation say about {subject}{under}?"


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


@dataclass
class Derivation:
    """The pairs, and why the documents gave no more: the figures a too-small dataset is explained by."""

    pairs: list[QAPair] = field(default_factory=list)
    documents: int = 0
    documents_without_headings: int = 0
    sections: int = 0
    sections_without_prose: int = 0
    sections_with_short_prose: int = 0

    def explanation(self, min_answer_chars: int) -> str:
        return (
            f"{self.documents} documents; {self.documents_without_headings} have no heading; "
            f"{self.sections} headed sections, of which {self.sections_without_prose} have no prose under the heading "
            f"(code, tables or lists only, or empty) and {self.sections_with_short_prose} have prose shorter than "
            f"min_answer_chars={min_answer_chars}"
        )


def derive(
    documents: Iterable[Document],
    eval_fraction: float = 0.2,
    min_answer_chars: int = 40,
    max_answer_chars: int = 600,
    max_context_chars: int = 2000,
) -> Derivation:
    result = Derivation()
    for doc in documents:
        result.documents += 1
        split = split_of(doc.doc_id, eval_fraction)
        headed = [(level, heading, body) for level, heading, body in sections(doc.text) if heading]
        if not headed:
            result.documents_without_headings += 1
        title = doc.title.strip() if doc.title and normalized_question(doc.title) != normalized_question(doc.doc_id) else headed[0][1] if headed else ""
        stack: list[tuple[int, str]] = []
        for level, heading, body in headed:
            while stack and stack[-1][0] >= level:
                stack.pop()
            parents = tuple(h for _, h in stack if normalized_question(h) != normalized_question(title))
            if heading.lower().rstrip(":.") not in _ADMONITIONS:
                stack.append((level, heading))
            result.sections += 1
            answer = _answer(body, min_answer_chars, max_answer_chars)
            if answer is None:
                if paragraphs(body):
                    result.sections_with_short_prose += 1
                else:
                    result.sections_without_prose += 1
                continue
            own = [] if title and normalized_question(heading) == normalized_question(title) else [heading]
            path = " > ".join([title, *parents, *own] if title else [*parents, *own])
            result.pairs.append(
                QAPair(
                    qa_id=stable_id(doc.doc_id, heading, body),
                    doc_id=doc.doc_id,
                    question=question_for(heading, title, parents, answer),
                    answer=answer,
                    context=f"{heading}\n\n{body}"[:max_context_chars],
                    heading=path,
                    split=split,
                )
            )
    return result


def derive_qa_pairs(documents: Iterable[Document], **options) -> list[QAPair]:
    return derive(documents, **options).pairs
