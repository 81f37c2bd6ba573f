"""Ingest: every bad input gives a clear error or a quarantined row with its reason."""

import json

import pytest

from driftloop.data.corpus import DEFAULT_SOURCE, SourceError, ingest, resolve_source
from driftloop.data.markup import html_to_markdown, rst_to_markdown, sections


def test_missing_source_names_the_path(tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        ingest(str(tmp_path / "nope"))


def test_empty_directory_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="holds no files"):
        ingest(str(tmp_path / "empty"))


def test_directory_without_supported_files_is_an_error(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "image.png").write_bytes(b"\x89PNG")
    with pytest.raises(SourceError, match="no supported documents"):
        ingest(str(tmp_path / "d"))


def test_bad_files_are_rejected_with_reasons(corpus):
    (corpus / "binary.txt").write_bytes(b"\x00\x01\x02binary\x00" * 50)
    (corpus / "latin1.md").write_bytes("# Caf\u00e9\n\nna\u00efve text".encode("latin-1"))
    (corpus / "empty.md").write_text("   \n")
    (corpus / "huge.txt").write_text("word " * 300_000)
    (corpus / "notes.py").write_text("print('ignored')")
    result = ingest(str(corpus), max_file_bytes=1_000_000)
    reasons = {r.source: r.reason for r in result.rejected}
    assert reasons == {"binary.txt": "binary", "latin1.md": "not_utf8", "empty.md": "empty", "huge.txt": "too_large"}
    assert "0xe9" in next(r.detail for r in result.rejected if r.reason == "not_utf8")
    assert result.ignored_files == ["notes.py"]
    assert len(result.documents) == 16
    assert result.seen == 20


def test_directory_documents_have_stable_ids_and_hashes(corpus):
    first, second = ingest(str(corpus)), ingest(str(corpus))
    assert [d.doc_id for d in first.documents] == [d.doc_id for d in second.documents]
    assert [d.content_hash for d in first.documents] == [d.content_hash for d in second.documents]
    html = next(d for d in first.documents if d.format == "html")
    assert "<p>" not in html.text and html.text.startswith("# Topic")


def test_jsonl_wrong_fields_are_quarantined_per_line(tmp_path):
    path = tmp_path / "docs.jsonl"
    lines = [
        json.dumps({"id": "a", "text": "# A\n\nA valid document with enough text to keep."}),
        json.dumps({"id": "b", "body": "wrong field name"}),
        "{not json",
        json.dumps(["a", "list"]),
        json.dumps({"id": 5, "text": "id is not a string"}),
        json.dumps({"id": "c", "text": ""}),
    ]
    path.write_text("\n".join(lines) + "\n")
    result = ingest(str(path))
    assert [d.doc_id for d in result.documents] == ["a"]
    by_line = {r.source: (r.reason, r.detail) for r in result.rejected}
    assert by_line["docs.jsonl:2"][0] == "wrong_fields" and "missing required field(s) ['text']" in by_line["docs.jsonl:2"][1]
    assert by_line["docs.jsonl:3"][0] == "invalid_json"
    assert by_line["docs.jsonl:4"][0] == "wrong_fields"
    assert by_line["docs.jsonl:5"][0] == "wrong_fields" and "must be strings" in by_line["docs.jsonl:5"][1]
    assert by_line["docs.jsonl:6"][0] == "empty"


def test_empty_jsonl_is_an_error(tmp_path):
    (tmp_path / "e.jsonl").write_text("")
    with pytest.raises(SourceError, match="is empty"):
        ingest(str(tmp_path / "e.jsonl"))


def test_other_file_kinds_are_refused(tmp_path):
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(SourceError, match="not .jsonl"):
        ingest(str(tmp_path / "x.csv"))


def test_source_resolution_order():
    assert resolve_source("/cfg", "/env") == "/cfg"
    assert resolve_source(None, "/env") == "/env"
    assert resolve_source(None, None) == DEFAULT_SOURCE


def test_default_corpus_is_python_documentation():
    result = ingest(DEFAULT_SOURCE)
    ids = {d.doc_id for d in result.documents}
    assert "pydoc-topic/assert" in ids and "stdlib/json" in ids
    assert len(result.documents) > 300
    assert len(ids) == len(result.documents)


def test_markup_normalisation():
    assert rst_to_markdown("Title\n=====\n\nBody\n\nSub\n---\n\nMore").split("\n")[0] == "# Title"
    assert "## Sub" in rst_to_markdown("Title\n=====\n\nBody\n\nSub\n---\n\nMore")
    md = html_to_markdown("<h1>Head</h1><script>x=1</script><p>Para one.</p>")
    assert [(lvl, h) for lvl, h, _ in sections(md)] == [(1, "Head")]
    assert "x=1" not in md
