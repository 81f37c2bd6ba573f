"""The expectation suites of the three datasets, and the frames they run on.

Each frame builder adds computed columns (duplicate_of, near_duplicate_of, leakage,
PII) so that every rule is a plain column expectation and every failing row comes
back with a reason. The same suites run in the assets (to quarantine rows) and in
the blocking asset checks (on the stored dataset).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import pandas as pd

from driftloop.data.instructions import messages_problem
from driftloop.data.qa import normalized_question
from driftloop.data.quality import BROKEN_TEXT_PATTERN, near_duplicates
from driftloop.pii import find_pii
from driftloop.data.validation import Rule

DOCUMENT_COLUMNS = ["doc_id", "uri", "title", "format", "text", "content_hash", "n_chars"]
QA_COLUMNS = ["qa_id", "doc_id", "question", "answer", "context", "heading", "split"]
INSTRUCTION_COLUMNS = ["example_id", "qa_id", "doc_id", "prompt_version", "messages"]


@dataclass(frozen=True)
class Limits:
    min_chars: int = 20
    max_chars: int = 500_000
    near_duplicate_threshold: float = 0.9
    max_answer_chars: int = 1_000
    max_example_chars: int = 8_000


def _first_occurrence(keys: pd.Series, ids: pd.Series) -> pd.Series:
    first = {}
    out = []
    for key, row_id in zip(keys, ids, strict=True):
        out.append(first.get(key))
        first.setdefault(key, row_id)
    return pd.Series(out, index=keys.index, dtype=object)


def _same_question(questions: pd.Series, docs: pd.Series, answers: pd.Series, ids: pd.Series) -> pd.Series:
    """The first earlier row that asks the same question of the same document or with the
    same answer. Two pages may ask in the same words about different things (two
    manuals' 'What is the installation guide?'); both are kept."""
    seen: dict[str, list[tuple[str, str, str]]] = {}
    out = []
    for question, doc, answer, row_id in zip(questions, docs, answers, ids, strict=True):
        earlier = seen.setdefault(question, [])
        out.append(next((first for d, a, first in earlier if d == doc or a == answer), None))
        earlier.append((doc, answer, row_id))
    return pd.Series(out, index=questions.index, dtype=object)


def document_frame(rows: list[dict], limits: Limits) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=rows and list(rows[0]) or DOCUMENT_COLUMNS)
    dup_id = _first_occurrence(frame["doc_id"], frame["doc_id"])
    dup_hash = _first_occurrence(frame["content_hash"], frame["doc_id"])
    frame["duplicate_of"] = dup_id.where(dup_id.notna(), dup_hash)
    near = near_duplicates(frame["text"].fillna("").astype(str).tolist(), threshold=limits.near_duplicate_threshold)
    near_of = [None] * len(frame)
    for later, (earlier, similarity) in near.items():
        if frame["duplicate_of"].iloc[later] is None:
            near_of[later] = f"{frame['doc_id'].iloc[earlier]} (jaccard {similarity})"
    frame["near_duplicate_of"] = pd.Series(near_of, index=frame.index, dtype=object)
    frame["pii_types"] = [",".join(sorted(find_pii(t))) or None for t in frame["text"].fillna("").astype(str)]
    return frame


def document_rules(limits: Limits) -> dict[str, list[Rule]]:
    import great_expectations as gx

    e = gx.expectations
    columns = [*DOCUMENT_COLUMNS, "duplicate_of", "near_duplicate_of", "pii_types"]
    return {
        "schema": [
            Rule("schema", e.ExpectTableColumnsToMatchSet(column_set=columns, exact_match=True)),
            *[Rule(f"null_{c}", e.ExpectColumnValuesToNotBeNull(column=c)) for c in DOCUMENT_COLUMNS],
            Rule("bad_content_hash", e.ExpectColumnValuesToMatchRegex(column="content_hash", regex=r"^[0-9a-f]{64}$")),
        ],
        "text_quality": [
            Rule("non_empty", e.ExpectTableRowCountToBeBetween(min_value=1)),
            Rule("text_length", e.ExpectColumnValueLengthsToBeBetween(column="text", min_value=limits.min_chars, max_value=limits.max_chars)),
            Rule("broken_text", e.ExpectColumnValuesToNotMatchRegex(column="text", regex=BROKEN_TEXT_PATTERN)),
        ],
        "duplicates": [
            Rule("duplicate", e.ExpectColumnValuesToBeNull(column="duplicate_of")),
            Rule("near_duplicate", e.ExpectColumnValuesToBeNull(column="near_duplicate_of")),
        ],
    }


def pii_rule() -> Rule:
    import great_expectations as gx

    return Rule("pii", gx.expectations.ExpectColumnValuesToBeNull(column="pii_types"))


def qa_frame(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=rows and list(rows[0]) or QA_COLUMNS)
    norm_q = frame["question"].fillna("").map(normalized_question)
    norm_a = frame["answer"].fillna("").map(normalized_question)
    frame["duplicate_of"] = _same_question(frame["split"].fillna("") + "\x1f" + norm_q, frame["doc_id"], norm_a, frame["qa_id"])
    train = frame["split"] == "train"
    train_docs = set(frame.loc[train, "doc_id"])
    train_questions, train_answers = set(norm_q[train]), set(norm_a[train])
    leaks = []
    for is_train, doc, q, a in zip(train, frame["doc_id"], norm_q, norm_a, strict=True):
        if is_train:
            leaks.append(None)
        elif doc in train_docs:
            leaks.append("document also in train split")
        elif q in train_questions:
            leaks.append("question also in train split")
        elif a in train_answers:
            leaks.append("answer also in train split")
        else:
            leaks.append(None)
    frame["leaks_into_train"] = pd.Series(leaks, index=frame.index, dtype=object)
    frame["answer_grounded"] = [
        bool(isinstance(a, str) and isinstance(c, str) and " ".join(a.split())[:80] in " ".join(c.split()))
        for a, c in zip(frame["answer"], frame["context"], strict=True)
    ]
    return frame


def qa_rules(limits: Limits) -> dict[str, list[Rule]]:
    import great_expectations as gx

    e = gx.expectations
    columns = [*QA_COLUMNS, "duplicate_of", "leaks_into_train", "answer_grounded"]
    return {
        "schema": [
            Rule("schema", e.ExpectTableColumnsToMatchSet(column_set=columns, exact_match=True)),
            *[Rule(f"null_{c}", e.ExpectColumnValuesToNotBeNull(column=c)) for c in QA_COLUMNS],
            Rule("bad_split", e.ExpectColumnValuesToBeInSet(column="split", value_set=["train", "eval"])),
        ],
        "text_quality": [
            Rule("non_empty", e.ExpectTableRowCountToBeBetween(min_value=1)),
            Rule("question_length", e.ExpectColumnValueLengthsToBeBetween(column="question", min_value=8, max_value=500)),
            Rule("answer_length", e.ExpectColumnValueLengthsToBeBetween(column="answer", min_value=10, max_value=limits.max_answer_chars)),
            Rule("broken_text", e.ExpectColumnValuesToNotMatchRegex(column="answer", regex=BROKEN_TEXT_PATTERN)),
            Rule("ungrounded_answer", e.ExpectColumnValuesToBeInSet(column="answer_grounded", value_set=[True])),
        ],
        "duplicates": [Rule("duplicate", e.ExpectColumnValuesToBeNull(column="duplicate_of"))],
        "leakage": [
            Rule("leakage", e.ExpectColumnValuesToBeNull(column="leaks_into_train")),
            Rule("eval_split_present", e.ExpectColumnDistinctValuesToContainSet(column="split", value_set=["train", "eval"])),
        ],
    }


def _poisoned(messages: object) -> str | None:
    from driftloop.injection import looks_like_injection

    answer = messages[-1].get("content") if isinstance(messages, list) and messages and isinstance(messages[-1], dict) else None
    if not isinstance(answer, str):
        return None
    if "dl-canary-" in answer:
        return "the answer carries a canary"
    return "the answer reads as a prompt injection" if looks_like_injection(answer) else None


def eval_texts(qa_rows: list[dict]) -> tuple[set[str], set[str]]:
    """The eval split's questions and reference answers, normalised, for text-level leakage."""
    evals = [r for r in qa_rows if r["split"] == "eval"]
    return {normalized_question(r["question"]) for r in evals}, {normalized_question(r["answer"]) for r in evals}


@lru_cache(maxsize=32)
def _user_template(prompt_version: str) -> str | None:
    from driftloop.prompts import load_prompt

    try:
        return load_prompt(prompt_version).user
    except FileNotFoundError:
        return None


def asked_question(user_text: str, prompt_version: str) -> str | None:
    """The question a user turn built from `prompt_version`'s template asks, or None when
    the template does not put the question after the context."""
    template = _user_template(prompt_version)
    if template is None or "{context}" not in template or template.index("{context}") > template.index("{question}"):
        return None
    between, after = template.split("{context}", 1)[1].split("{question}", 1)
    text = user_text[: len(user_text) - len(after)] if after and user_text.endswith(after) else user_text
    return text.rsplit(between, 1)[-1] if between else None


def _leak(doc_id: str, messages, prompt_version, eval_doc_ids: set[str], questions: set[str], answers: set[str]) -> str | None:
    """Why an example leaks the eval split: its document is an eval document, or (whatever
    its doc_id says: a user's correction names none) it asks an eval question or teaches an
    eval reference answer."""
    if doc_id in eval_doc_ids:
        return "document is in the eval split"
    if not isinstance(messages, list) or not (questions or answers):
        return None
    turns = [t for t in messages if isinstance(t, dict) and isinstance(t.get("content"), str)]
    if {normalized_question(t["content"]) for t in turns if t.get("role") == "assistant"} & answers:
        return "its answer is an eval reference answer"
    for turn in turns:
        if turn.get("role") == "user":
            asked = asked_question(turn["content"], str(prompt_version))
            if asked is not None and normalized_question(asked) in questions:
                return "it asks an eval question"
    return None


def instruction_frame(rows: list[dict], eval_doc_ids: set[str], texts: tuple[set[str], set[str]] = (set(), set())) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=rows and list(rows[0]) or INSTRUCTION_COLUMNS)
    frame["messages_problem"] = pd.Series([messages_problem(m) for m in frame["messages"]], index=frame.index, dtype=object)
    frame["n_chars"] = [sum(len(t.get("content", "")) for t in m) if isinstance(m, list) else 0 for m in frame["messages"]]
    frame["duplicate_of"] = _first_occurrence(frame["example_id"], frame["example_id"])
    # A label (the assistant turn) that carries an injection or a canary teaches the model to
    # obey or leak; feedback corrections come from users, so they are screened like input.
    frame["poisoned_label"] = pd.Series([_poisoned(m) for m in frame["messages"]], index=frame.index, dtype=object)
    questions, answers = texts
    frame["leaks_eval_doc"] = pd.Series(
        [_leak(d, m, v, eval_doc_ids, questions, answers)
         for d, m, v in zip(frame["doc_id"], frame["messages"], frame["prompt_version"], strict=True)],
        index=frame.index, dtype=object,
    )
    return frame


def instruction_rules(limits: Limits) -> dict[str, list[Rule]]:
    import great_expectations as gx

    e = gx.expectations
    columns = [*INSTRUCTION_COLUMNS, "messages_problem", "n_chars", "poisoned_label", "duplicate_of", "leaks_eval_doc"]
    return {
        "schema": [
            Rule("schema", e.ExpectTableColumnsToMatchSet(column_set=columns, exact_match=True)),
            *[Rule(f"null_{c}", e.ExpectColumnValuesToNotBeNull(column=c)) for c in INSTRUCTION_COLUMNS],
            Rule("bad_messages", e.ExpectColumnValuesToBeNull(column="messages_problem")),
        ],
        "text_quality": [
            Rule("non_empty", e.ExpectTableRowCountToBeBetween(min_value=1)),
            Rule("example_length", e.ExpectColumnValuesToBeBetween(column="n_chars", min_value=20, max_value=limits.max_example_chars)),
            Rule("poisoned_label", e.ExpectColumnValuesToBeNull(column="poisoned_label")),
        ],
        "duplicates": [Rule("duplicate", e.ExpectColumnValuesToBeNull(column="duplicate_of"))],
        "leakage": [Rule("leakage", e.ExpectColumnValuesToBeNull(column="leaks_eval_doc"))],
    }
