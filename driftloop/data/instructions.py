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


def feedback_examples(requests: Iterable[dict], feedback: Iterable[dict], chunk_texts: dict[str, str], prompt: PromptTemplate) -> list[dict]:
    """Corrected answers from users as training examples: the question as it was asked
    (PII already redacted by the service), the chunks it was answered from, and the
    correction as the assistant's turn. The latest correction of a request wins; requests
    whose chunks are no longer in the index get no context rather than a wrong one."""
    asked = {r["request_id"]: r for r in requests if r.get("request_id") and r.get("question")}
    corrected = {}
    for f in feedback:
        if f.get("correction") and f.get("request_id") in asked:
            corrected[f["request_id"]] = f
    examples = []
    for request_id, f in sorted(corrected.items()):
        request = asked[request_id]
        context = "\n\n".join(chunk_texts[c] for c in request.get("chunk_ids", []) if c in chunk_texts)
        messages = prompt.messages(question=request["question"], context=context)
        messages.append({"role": "assistant", "content": f["correction"]})
        examples.append({"example_id": stable_id(request_id, prompt.version), "qa_id": request_id, "doc_id": f"feedback/{request_id}",
                         "prompt_version": prompt.version, "messages": messages})
    return examples
