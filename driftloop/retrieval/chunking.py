"""Token-aware chunking with the embedding model's own tokenizer.

Windows are measured in the tokens the model will see, so no chunk is silently
truncated at embedding time. A window's end is pulled back to the nearest paragraph,
line or sentence break in its last quarter, so chunks rarely cut a sentence.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

from driftloop.data.records import Rejected, stable_id

_BREAKS = ("\n\n", "\n", ". ", "? ", "! ", "; ", ", ", " ")


@dataclass(frozen=True)
class Chunk:
    chunk_id: str
    doc_id: str
    ordinal: int
    title: str
    text: str
    start_char: int
    end_char: int
    n_tokens: int
    content_hash: str

    def to_row(self) -> dict:
        return asdict(self)

    @property
    def embed_text(self) -> str:
        return embed_text(self.title, self.text)


def embed_text(title: str, text: str) -> str:
    """The title travels with every chunk: a chunk from the middle of a module's docs
    still says which module it belongs to."""
    return f"{title}\n{text}" if title and not text.startswith(title) else text


def _break_before(text: str, start: int, end: int) -> int:
    floor = start + (end - start) * 3 // 4
    for sep in _BREAKS:
        pos = text.rfind(sep, floor, end)
        if pos > floor:
            return pos + len(sep)
    return end


def chunk_document(
    doc: dict,
    tokenizer,
    chunk_tokens: int = 200,
    overlap_tokens: int = 40,
    max_doc_chars: int = 2_000_000,
    max_seq_length: int = 256,
) -> tuple[list[Chunk], Rejected | None]:
    if overlap_tokens >= chunk_tokens:
        raise ValueError(f"overlap_tokens ({overlap_tokens}) must be smaller than chunk_tokens ({chunk_tokens})")
    text, doc_id = doc["text"], doc["doc_id"]
    if len(text) > max_doc_chars:
        return [], Rejected(doc_id, "too_large", f"{len(text)} characters exceeds max_doc_chars={max_doc_chars}", "chunks", doc_id)
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, truncation=False, verbose=False)
    offsets = [o for o in encoding["offset_mapping"] if o[1] > o[0]]
    if not offsets:
        return [], Rejected(doc_id, "no_tokens", "the text tokenizes to nothing with the embedding model's tokenizer", "chunks", doc_id)
    chunks: list[Chunk] = []
    seen: dict[str, int] = {}
    title = doc.get("title", "")
    # The title is embedded with every chunk, plus [CLS]/[SEP]: keep the total within the model's window.
    title_tokens = len(tokenizer(title, add_special_tokens=False, verbose=False)["input_ids"]) + 1 if title else 0
    window = max(16, min(chunk_tokens, max_seq_length - 2 - title_tokens))
    overlap_tokens = min(overlap_tokens, window // 2)
    i = 0
    while i < len(offsets):
        j = min(i + window, len(offsets))
        start = offsets[i][0]
        end = offsets[j - 1][1] if j == len(offsets) else _break_before(text, start, offsets[j - 1][1])
        # Tokens consumed up to the pulled-back end; always at least one, so the loop advances.
        consumed = max(1, sum(1 for o in offsets[i:j] if o[1] <= end))
        body = text[start:end].strip()
        if body:
            digest = hashlib.sha256(embed_text(title, body).encode("utf-8")).hexdigest()
            occurrence = seen.get(digest, 0)
            seen[digest] = occurrence + 1
            chunks.append(
                Chunk(
                    chunk_id=stable_id(doc_id, digest, str(occurrence)),
                    doc_id=doc_id, ordinal=len(chunks), title=title, text=body,
                    start_char=start, end_char=end, n_tokens=consumed, content_hash=digest,
                )
            )
        if i + consumed >= len(offsets):
            break
        i += max(1, consumed - overlap_tokens)
    return chunks, None
