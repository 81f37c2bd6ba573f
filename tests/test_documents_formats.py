"""Documents as users have them: a generated reference manual whose pages share their
section headings and carry a navigation bar, PDF and DOCX files, files that cannot be
parsed, and a corpus too poor to give enough questions."""

import json
import random

import pytest

from conftest import prose
from test_data_assets import materialization, run_stage

from assets.data import QA_PAIRS, SOURCE_DOCUMENTS
from driftloop.data.corpus import ingest
from driftloop.data.qa import derive, normalized_question
from driftloop.data.records import read_jsonl
from driftloop.data.suites import Limits, qa_frame, qa_rules
from driftloop.data.validation import run_suite

COMMANDS = ["CREATE HARBOR", "DROP HARBOR", "ALTER SENSOR", "CREATE ROUTER", "DROP ROUTER", "ALTER LEDGER", "CREATE VECTOR", "DROP VECTOR"]
NAV = ('<div class="navheader"><table><tr><td><a href="prev.html">Prev</a></td><td><a href="up.html">Up</a></td>'
       '<th>Harbor Commands</th><td><a href="index.html">Home</a></td><td><a href="next.html">Next</a></td></tr></table></div>')


def write_manual(root, rng):
    """DocBook-like pages: no <main>, every page with the same h2 sections, nav bars above and below."""
    root.mkdir()
    for name in COMMANDS:
        sections = "".join(
            f'<div class="refsect1"><h2>{heading}</h2><p>{name} {prose(rng, 3)}</p></div>'
            for heading in ("Description", "Parameters", "Notes", "Compatibility")
        )
        page = (f'<?xml version="1.0" encoding="UTF-8"?><html xmlns="http://www.w3.org/1999/xhtml"><head><title>{name}</title></head>'
                f'<body>{NAV}<div class="refentry"><h2>{name}</h2><p>{name} \u2014 manage things</p>'
                f'<div class="refsynopsisdiv"><h2>Synopsis</h2><pre>{name} <em><code>name</code></em> [ OPTION ]\n  [ ... ]</pre></div>'
                f'{sections}</div><div class="navfooter">{NAV}</div></body></html>')
        (root / f"sql-{name.lower().replace(' ', '')}.html").write_text(page, encoding="utf-8")
    return root


def test_a_manual_with_repeated_headings_gives_distinct_page_specific_questions(dvc_store, tmp_path):
    manual = write_manual(tmp_path / "manual", random.Random(0))
    result = run_stage(dvc_store, manual, select=[SOURCE_DOCUMENTS, QA_PAIRS], eval_fraction=0.3)
    assert result.success
    docs = list(read_jsonl(dvc_store.dataset_path("source_documents")))
    assert len(docs) == len(COMMANDS)
    assert {d["title"] for d in docs} == set(COMMANDS)
    for doc in docs:
        assert not any(word in doc["text"] for word in ("Prev", "Home", "Next", "Harbor Commands")), doc["text"][:300]
        assert "## Synopsis" in doc["text"] and "```" in doc["text"] and "[ OPTION ]" in doc["text"]
    qa = list(read_jsonl(dvc_store.dataset_path("qa_pairs")))
    assert len(qa) == 4 * len(COMMANDS), "every prose section of every page gives one question, none quarantined"
    assert len({normalized_question(r["question"]) for r in qa}) == len(qa)
    by_question = {r["question"]: r for r in qa}
    assert by_question["What parameters does DROP ROUTER take?"]["heading"] == "DROP ROUTER > Parameters"
    assert by_question["What is ALTER LEDGER?"]["answer"].startswith("ALTER LEDGER ")
    assert {r["split"] for r in qa} == {"train", "eval"}
    assert materialization(result, QA_PAIRS).metadata["quarantine_reasons"].value == {}


def test_pdf_and_docx_keep_title_and_sections(tmp_path):
    import docx
    from fpdf import FPDF

    rng = random.Random(1)
    root = tmp_path / "formats"
    root.mkdir()
    pdf = FPDF()
    pdf.set_title("Harbor Sensor Manual")
    pdf.set_font("Helvetica", size=11)
    texts = {name: prose(rng, 2) for name in ("Installation", "Calibration", "Maintenance")}
    for level, name in [(0, "Installation"), (1, "Calibration"), (0, "Maintenance")]:
        pdf.add_page()
        pdf.start_section(name, level=level)
        for line in (name, texts[name]):
            pdf.multi_cell(pdf.epw, 6, line, new_x="LMARGIN", new_y="NEXT")
    pdf.output(str(root / "manual.pdf"))
    document = docx.Document()
    document.add_paragraph("Router Guide", style="Title")
    document.add_paragraph("Routing", style="Heading 1")
    document.add_paragraph(texts["Installation"])
    document.add_paragraph("Failover", style="Heading 2")
    document.add_paragraph(texts["Calibration"])
    document.save(str(root / "guide.docx"))

    docs = {d.doc_id: d for d in ingest(str(root)).documents}
    assert docs["manual.pdf"].title == "Harbor Sensor Manual" and docs["manual.pdf"].format == "pdf"
    assert "# Installation" in docs["manual.pdf"].text and "## Calibration" in docs["manual.pdf"].text
    assert docs["guide.docx"].title == "Router Guide"
    assert docs["guide.docx"].text.startswith("# Router Guide\n\n## Routing") and "### Failover" in docs["guide.docx"].text
    questions = {p.heading: p.question for p in derive(docs.values()).pairs}
    assert questions["Harbor Sensor Manual > Installation > Calibration"] == (
        "What does the Harbor Sensor Manual documentation say about Calibration under Installation?")
    assert questions["Router Guide > Routing > Failover"] == "What does the Router Guide documentation say about Failover under Routing?"


def test_files_that_cannot_be_parsed_are_quarantined_with_the_parsers_reason(corpus, tmp_path):
    from pypdf import PdfWriter

    writer = PdfWriter()
    writer.add_blank_page(200, 200)
    writer.encrypt("secret")
    with (corpus / "locked.pdf").open("wb") as handle:
        writer.write(handle)
    (corpus / "truncated.pdf").write_bytes(b"%PDF-1.4\n1 0 obj <<")
    (corpus / "notazip.docx").write_bytes(b"this is not a word document")
    (corpus / "comment.html").write_text("<!-- generated page, nothing in it -->")
    result = ingest(str(corpus))
    rejected = {r.source: (r.reason, r.detail) for r in result.rejected}
    assert rejected == {
        "locked.pdf": ("unparseable", "PDF: FileNotDecryptedError: File has not been decrypted"),
        "truncated.pdf": ("unparseable", rejected["truncated.pdf"][1]),
        "notazip.docx": ("unparseable", "DOCX: BadZipFile: File is not a zip file"),
        "comment.html": ("unparseable", "HTML: Document is empty"),
    }
    assert rejected["truncated.pdf"][1].startswith("PDF: PdfStreamError")
    assert len(result.documents) == 16, "the rest of the corpus goes on"

    # The same page as a JSONL line is quarantined the same way, and the other lines go on.
    lines = tmp_path / "docs.jsonl"
    lines.write_text(json.dumps({"id": "empty", "text": "<!-- nothing -->", "format": "html"}) + "\n"
                     + json.dumps({"id": "ok", "text": "# Title\n\nSome prose."}) + "\n")
    from_lines = ingest(str(lines))
    assert [(r.record_id, r.reason, r.detail) for r in from_lines.rejected] == [("empty", "unparseable", "line 1: HTML: Document is empty")]
    assert [d.doc_id for d in from_lines.documents] == ["ok"]


def test_too_few_questions_fails_saying_why(dvc_store, tmp_path):
    rng = random.Random(2)
    poor = tmp_path / "poor"
    poor.mkdir()
    for i in range(4):
        (poor / f"plain{i}.txt").write_text(prose(rng, 4))
    (poor / "code.md").write_text("# Reference\n\n```\nrouter --fast --safe\n```\n\n## Usage\n\nShort.\n\n## Tuning\n\n" + prose(rng, 3))
    result = run_stage(dvc_store, poor, select=[SOURCE_DOCUMENTS, QA_PAIRS], raise_on_error=False)
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    message = failure.step_failure_data.user_failure_data.description
    assert message.startswith("qa_pairs: only 1 usable questions, fewer than min_questions=20")
    assert "5 documents; 4 have no heading; 3 headed sections, of which 1 have no prose" in message
    assert "1 have prose shorter than min_answer_chars=40" in message and "duplicate" not in message


def rows(*specs):
    return [{"qa_id": str(i), "doc_id": doc, "question": q, "answer": a, "context": a, "heading": "h", "split": split}
            for i, (doc, q, a, split) in enumerate(specs)]


@pytest.mark.parametrize("specs, duplicates, leaks", [
    # The same words asked of two pages with different answers: two questions.
    ([("a", "What is the installation guide?", "Unpack the harbor archive first.", "train"),
      ("b", "What is the installation guide?", "Mount the sensor on a pole.", "train")], [None, None], [None, None]),
    # Asked twice of one page, or with one answer: one question.
    ([("a", "What is the installation guide?", "Unpack the harbor archive first.", "train"),
      ("a", "What is the installation guide?", "Mount the sensor on a pole.", "train"),
      ("b", "What is the installation guide?", "Unpack the harbor archive first.", "train")], [None, "0", "0"], [None] * 3),
    # The same question and answer on both sides of the split is still a leak.
    ([("a", "What is the installation guide?", "Unpack the harbor archive first.", "train"),
      ("b", "What is the installation guide?", "Unpack the harbor archive first.", "eval")], [None, None],
     [None, "question also in train split"]),
])
def test_duplicates_are_the_same_question_of_the_same_page_or_answer(specs, duplicates, leaks):
    frame = qa_frame(rows(*specs))
    assert frame["duplicate_of"].tolist() == duplicates
    assert frame["leaks_into_train"].tolist() == leaks
    report = run_suite(frame, "test.qa.duplicates", qa_rules(Limits())["duplicates"])
    assert report.success == all(d is None for d in duplicates)
