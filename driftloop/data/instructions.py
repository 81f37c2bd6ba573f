"""Chat-format fine-tuning examples (question + context -> answer) from the train split.

The context of an example is what the model will be shown when it answers: the chunks
retrieval returns for the question, in their order, not the question's own section. A
model trained on clean gold sections learns to copy the first thing it is shown, which
at serving time is often the wrong chunk (a man page's SYNOPSIS). Where retrieval missed
the chunk that holds the answer, that chunk takes the place of one retrieved chunk, at
a position drawn from the question's id, so the answer is never where the model can
learn to expect it (RAFT, Zhang et al. 2024).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from driftloop.data.records import stable_id
from driftloop.prompts import PromptTemplate, join_contexts
from driftloop.retrieval.quality import answer_chunks, holds_answer


@dataclass
class TrainingContexts:
    texts: dict[str, list[str]] = field(default_factory=dict)  # qa_id -> chunk texts as the prompt shows them
    retrieved_hits: int = 0  # retrieval's top-k already held the answering chunk
    answer_inserted: int = 0
    section_fallback: int = 0  # no chunk holds the answer's opening: the question's own section instead
    eval_chunks_skipped: int = 0


def training_contexts(train_rows: Sequence[dict], chunks: Sequence[dict], ranked: Sequence[Sequence[int]], k: int,
                      exclude_docs: set[str]) -> TrainingContexts:
    """The k contexts of each train question from its ranked chunk ids (deeper than k, so
    that chunks of eval documents, which training must not see, can be skipped)."""
    out = TrainingContexts()
    for row, ids, (exact, _) in zip(train_rows, ranked, answer_chunks(train_rows, chunks), strict=True):
        kept = []
        for i in ids:
            if i < 0:
                continue
            if chunks[i]["doc_id"] in exclude_docs:
                out.eval_chunks_skipped += 1
                continue
            kept.append(i)
            if len(kept) == k:
                break
        retrieved = [chunks[i]["text"] for i in kept]
        # A hit counts only where the answer survives the prompt's context limit.
        if exact & set(kept) and holds_answer(join_contexts(retrieved), row["answer"]):
            out.retrieved_hits += 1
            out.texts[row["qa_id"]] = retrieved
            continue
        if exact:
            answer = chunks[min(exact)]["text"]
            out.answer_inserted += 1
        else:
            answer = row["context"]
            out.section_fallback += 1
        others = [t for t, i in zip(retrieved, kept, strict=True) if i not in exact][: k - 1]
        start = int(hashlib.sha256(row["qa_id"].encode()).hexdigest(), 16)
        for shift in range(len(others) + 1):
            texts = [*others]
            texts.insert((start + shift) % (len(others) + 1), answer)
            if holds_answer(join_contexts(texts), row["answer"]):
                break
        else:
            texts = [answer, *others]
        out.texts[row["qa_id"]] = texts
    return out


def build_examples(qa_rows: Iterable[dict], prompt: PromptTemplate, contexts: Mapping[str, Sequence[str]] | None = None) -> list[dict]:
    """Examples from the train split; with `contexts` (qa_id -> texts) each is shown those,
    else its own section."""
    examples = []
    for row in qa_rows:
        if row["split"] != "train":
            continue
        context = join_contexts(contexts[row["qa_id"]]) if contexts is not None else row["context"]
        messages = prompt.messages(question=row["question"], context=context)
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


def feedback_examples(requests: Iterable[dict], feedback: Iterable[dict], chunk_texts: dict[str, str], prompt: PromptTemplate,
                      max_rating: int = 5) -> tuple[list[dict], int]:
    """Corrected answers from users as training examples: the question as it was asked
    (PII already redacted by the service), the chunks it was answered from, and the
    correction as the assistant's turn. The latest feedback on a request wins, and only a
    correction given with a rating of at most `max_rating` teaches: a user who rated the
    served answer good and still typed something else has not said the answer was wrong.
    Requests whose chunks are no longer in the index get no context rather than a wrong
    one. Returns the examples and how many corrections their rating left out."""
    asked = {r["request_id"]: r for r in requests if r.get("request_id") and r.get("question")}
    latest = {}
    for f in feedback:
        if f.get("correction") and f.get("request_id") in asked:
            latest[f["request_id"]] = f
    corrected = {request_id: f for request_id, f in latest.items() if int(f.get("rating", 1)) <= max_rating}
    examples = []
    for request_id, f in sorted(corrected.items()):
        request = asked[request_id]
        context = "\n\n".join(chunk_texts[c] for c in request.get("chunk_ids", []) if c in chunk_texts)
        messages = prompt.messages(question=request["question"], context=context)
        messages.append({"role": "assistant", "content": f["correction"]})
        examples.append({"example_id": stable_id(request_id, prompt.version), "qa_id": request_id, "doc_id": f"feedback/{request_id}",
                         "prompt_version": prompt.version, "messages": messages})
    return examples, len(latest) - len(corrected)
