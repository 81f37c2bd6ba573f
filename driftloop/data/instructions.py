"""Chat-format fine-tuning examples (question + context -> answer) from the train split."""

from __future__ import annotations

from collections.abc import Iterable

from driftloop.data.records import stable_id
from driftloop.prompts import PromptTemplate


def build_examples(qa_rows: Iterable[dict], prompt: PromptTemplate) -> list[dict]:
    examples = []
    for row in qa_rows:
        if row["split"] != "train":
            continue
        messages = prompt.messages(question=row["question"], context=row["context"])
        messages.append({"role": "assistant", "content": row["answer"]})
        examples.append(
            {
                "example_id": stable_id(row["qa_id"], prompt.version),
                "qa_id": row["qa_id"],
                "doc_id": row["doc_id"],
                "prompt_version": prompt.version,
                "messages": messages,
            }
        )
    return examples


def messages_problem(messages: object) -> str | None:
    """Why a messages value is not a valid chat example, or None when it is."""
    if not isinstance(messages, list) or len(messages) < 2:
        return "messages must be a list of at least two turns"
    roles = []
    for turn in messages:
        if not isinstance(turn, dict) or set(turn) != {"role", "content"}:
            return "each turn must be an object with exactly 'role' and 'content'"
        if not isinstance(turn["content"], str) or not turn["content"].strip():
            return f"turn with role {turn.get('role')!r} has empty content"
        roles.append(turn["role"])
    if roles[-1] != "assistant":
        return "the last turn must be the assistant's answer"
    if "user" not in roles:
        return "no user turn"
    if any(r not in {"system", "user", "assistant"} for r in roles):
        return f"unknown role in {roles}"
    return None
