"""Read a corpus from a folder of docs, a JSONL file, or Python's own documentation.

Every file or line either becomes a Document or a Rejected row with its reason:
nothing is skipped silently, so a smaller dataset always has an explanation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from driftloop.data.extract import ExtractError, Extracted, docx_document, html_document, pdf_document
from driftloop.data.markup import to_markdown
from driftloop.data.pydocs import python_docs
from driftloop.data.records import Document, Rejected, excerpt, normalize_text

DEFAULT_SOURCE = "python-docs"
SUPPORTED_SUFFIXES = {
    ".md": "md", ".markdown": "md", ".rst": "rst", ".txt": "txt", ".html": "html", ".htm": "html", ".xhtml": "html",
    ".pdf": "pdf", ".docx": "docx",
}
BINARY_FORMATS = {"pdf": pdf_document, "docx": docx_document}
JSONL_REQUIRED = ("id", "text")
JSONL_OPTIONAL = ("title", "uri", "format")


class SourceError(ValueError):
    """The source as a whole cannot be read: missing, empty or of an unknown kind."""


@dataclass
class IngestResult:
    source: str
    documents: list[Document] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    ignored_files: list[str] = field(default_factory=list)

    @property
    def seen(self) -> int:
        return len(self.documents) + len(self.rejected)


def _looks_binary(raw: bytes) -> bool:
    sample = raw[:8192]
    if b"\x00" in sample:
        return True
    control = sum(1 for b in sample if b < 32 and b not in (9, 10, 12, 13))
    return len(sample) > 0 and control / len(sample) > 0.1


class _NotText(ValueError):
    def __init__(self, reason: str, detail: str, excerpt: str = "") -> None:
        super().__init__(detail)
        self.reason, self.detail, self.excerpt = reason, detail, excerpt


def _extract(raw: bytes, fmt: str) -> Extracted:
    """The file's title and markdown; PDF and DOCX are binary by nature, the rest must be UTF-8 text."""
    if fmt in BINARY_FORMATS:
        return BINARY_FORMATS[fmt](raw)
    if _looks_binary(raw):
        raise _NotText("binary", "file holds binary data (NUL or control bytes)")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        detail = f"not valid UTF-8: byte 0x{raw[err.start]:02x} at offset {err.start}"
        raise _NotText("not_utf8", detail, excerpt(raw[: err.start + 40].decode("utf-8", "backslashreplace"))) from err
    if fmt == "html":
        return html_document(text)
    return Extracted(title=None, markdown=to_markdown(text, fmt))


def read_directory(root: Path, max_file_bytes: int) -> IngestResult:
    result = IngestResult(source=str(root))
    files = sorted(p for p in root.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts))
    for path in files:
        rel = path.relative_to(root).as_posix()
        fmt = SUPPORTED_SUFFIXES.get(path.suffix.lower())
        if fmt is None:
            result.ignored_files.append(rel)
            continue
        size = path.stat().st_size
        if size > max_file_bytes:
            result.rejected.append(Rejected(rel, "too_large", f"{size} bytes exceeds max_file_bytes={max_file_bytes}", "ingest", rel))
            continue
        raw = path.read_bytes()
        if not raw.strip():
            result.rejected.append(Rejected(rel, "empty", "file is empty or whitespace only", "ingest", rel))
            continue
        try:
            extracted = _extract(raw, fmt)
        except ExtractError as err:
            result.rejected.append(Rejected(rel, "unparseable", str(err), "ingest", rel))
            continue
        except _NotText as err:
            result.rejected.append(Rejected(rel, err.reason, err.detail, "ingest", rel, err.excerpt))
            continue
        text = normalize_text(extracted.markdown)
        if not text:
            result.rejected.append(Rejected(rel, "empty", "no text left after removing markup", "ingest", rel))
            continue
        title = extracted.title or next((ln.lstrip("# ").strip() for ln in text.split("\n") if ln.strip()), rel)
        result.documents.append(Document(doc_id=rel, uri=path.resolve().as_uri(), title=title[:200], format=fmt, text=text))
    if not files:
        raise SourceError(f"source directory {root} holds no files; expected {', '.join(sorted(SUPPORTED_SUFFIXES))} documents")
    if not result.seen:
        raise SourceError(
            f"source directory {root} holds no supported documents ({', '.join(sorted(SUPPORTED_SUFFIXES))}); "
            f"found {len(result.ignored_files)} other files, e.g. {result.ignored_files[:3]}"
        )
    return result


def _jsonl_row(line_no: int, line: str, label: str) -> Document | Rejected:
    where = f"{label}:{line_no}"
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as err:
        return Rejected(where, "invalid_json", f"line {line_no}: invalid JSON ({err.msg} at column {err.colno})", "ingest", excerpt=excerpt(line))
    if not isinstance(obj, dict):
        return Rejected(where, "wrong_fields", f"line {line_no}: expected a JSON object, got {type(obj).__name__}", "ingest", excerpt=excerpt(line))
    missing = [key for key in JSONL_REQUIRED if key not in obj]
    if missing:
        return Rejected(
            where, "wrong_fields",
            f"line {line_no}: missing required field(s) {missing}; present: {sorted(obj)}; required: {list(JSONL_REQUIRED)}",
            "ingest", str(obj.get("id", "")), excerpt(line),
        )
    wrong = [key for key in (*JSONL_REQUIRED, *JSONL_OPTIONAL) if key in obj and not isinstance(obj[key], str)]
    if wrong:
        return Rejected(where, "wrong_fields", f"line {line_no}: field(s) {wrong} must be strings", "ingest", str(obj.get("id", "")), excerpt(line))
    fmt = obj.get("format", "md")
    try:
        text = normalize_text(to_markdown(obj["text"], fmt))
    except ExtractError as err:
        return Rejected(where, "unparseable", f"line {line_no}: {err}", "ingest", obj["id"], excerpt(line))
    if not text:
        return Rejected(where, "empty", f"line {line_no}: field 'text' is empty", "ingest", obj["id"])
    return Document(
        doc_id=obj["id"],
        uri=obj.get("uri") or f"{label}#{obj['id']}",
        title=(obj.get("title") or text.split("\n", 1)[0].lstrip("# "))[:200],
        format=fmt,
        text=text,
    )


def read_jsonl_source(path: Path, max_file_bytes: int) -> IngestResult:
    result = IngestResult(source=str(path))
    size = path.stat().st_size
    if size == 0:
        raise SourceError(f"JSONL source {path} is empty")
    raw = path.read_bytes()
    label = path.name
    for line_no, raw_line in enumerate(raw.split(b"\n"), start=1):
        if not raw_line.strip():
            continue
        where = f"{label}:{line_no}"
        if len(raw_line) > max_file_bytes:
            result.rejected.append(Rejected(where, "too_large", f"line {line_no}: {len(raw_line)} bytes exceeds max_file_bytes={max_file_bytes}", "ingest"))
            continue
        try:
            line = raw_line.decode("utf-8-sig" if line_no == 1 else "utf-8")
        except UnicodeDecodeError as err:
            result.rejected.append(Rejected(where, "not_utf8", f"line {line_no}: not valid UTF-8 at byte {err.start}", "ingest", excerpt=excerpt(raw_line.decode("utf-8", "backslashreplace"))))
            continue
        row = _jsonl_row(line_no, line, label)
        (result.rejected if isinstance(row, Rejected) else result.documents).append(row)
    if not result.seen:
        raise SourceError(f"JSONL source {path} holds no lines")
    return result


def resolve_source(source: str | None, env_value: str | None) -> str:
    """Run config wins over the environment, which wins over the built-in default."""
    return source or env_value or DEFAULT_SOURCE


def ingest(source: str, max_file_bytes: int = 5_000_000) -> IngestResult:
    if source == DEFAULT_SOURCE:
        return IngestResult(source=source, documents=list(python_docs()))
    path = Path(source).expanduser()
    if not path.exists():
        raise SourceError(f"source {path} does not exist (set run config 'source' or DRIFTLOOP_SOURCE_DIR to a folder of docs or a .jsonl file)")
    if path.is_dir():
        return read_directory(path, max_file_bytes)
    if path.suffix.lower() == ".jsonl":
        return read_jsonl_source(path, max_file_bytes)
    raise SourceError(f"source {path} is a file but not .jsonl; point at a folder of {', '.join(sorted(SUPPORTED_SUFFIXES))} files or a JSONL file")


def ingest_with_inbox(source: str, inbox: Path | None, max_file_bytes: int = 5_000_000) -> IngestResult:
    """The source plus the documents dropped into `inbox` (ids prefixed `inbox/`); an absent
    or empty inbox adds nothing."""
    result = ingest(source, max_file_bytes)
    if inbox is None or not inbox.is_dir() or not any(p.is_file() for p in inbox.rglob("*")):
        return result
    from dataclasses import replace

    extra = read_directory(inbox, max_file_bytes)
    result.documents += [replace(doc, doc_id=f"inbox/{doc.doc_id}") for doc in extra.documents]
    result.rejected += [replace(row, source=f"inbox/{row.source}", record_id=f"inbox/{row.record_id}") for row in extra.rejected]
    result.ignored_files += [f"inbox/{f}" for f in extra.ignored_files]
    return result


def fingerprint(locations: list[str]) -> str:
    """Names, sizes and modification times of every file under `locations` (the packaged
    Python docs: the interpreter's version), hashed: any added, removed or edited document
    changes it, reading no file's content."""
    import hashlib
    import sys

    digest = hashlib.sha256()
    for location in locations:
        if location == DEFAULT_SOURCE:
            digest.update(f"{DEFAULT_SOURCE}:{sys.version}".encode())
            continue
        path = Path(location).expanduser()
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else ([path] if path.is_file() else [])
        for item in files:
            stat = item.stat()
            digest.update(f"{item}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]
