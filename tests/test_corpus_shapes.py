"""Real corpus shapes through the data and retrieval stages, on tiny models.

tests/data/corpora/ holds a few trimmed real pages of each shape that bench/corpora
runs in full (see its README.md): a reference manual whose pages share their section
headings, an FAQ, tutorial prose, man pages and a project's markdown docs. A corpus of
one of these shapes must never again fail the data stage, flood the quarantine with
duplicate questions, or carry a page's navigation bars into its text.
"""

import html
import re
from pathlib import Path

import dagster as dg
import pytest

from assets.data import QA_PAIRS, data_assets, data_checks
from assets.retrieval import VECTOR_INDEX, retrieval_assets
from driftloop.data.corpus import SUPPORTED_SUFFIXES
from driftloop.data.qa import normalized_question
from driftloop.data.records import read_jsonl
from test_evaluation_assets import tiny_resources

CORPORA = Path(__file__).parent / "data" / "corpora"
SHAPES = ["reference", "faq", "tutorial", "manpages", "markdown"]
# DocBook (PostgreSQL, the Debian FAQ) writes Prev/Up/Home/Next bars above and below
# every page; Git's asciidoc and mandoc write none. A bar's title row repeats the page's
# own heading, which the text rightly keeps.
NAV_BLOCK = re.compile(r'<div class="nav(?:header|footer)">(.*?)</div>', re.S)
TITLE_ROW = re.compile(r"<tr>\s*<th colspan.*?</tr>", re.S)


def nav_texts(page: Path) -> list[str]:
    """The text of each navigation bar on an HTML page (links to the previous, next and
    parent pages), whitespace collapsed."""
    texts = []
    for block in NAV_BLOCK.findall(page.read_text(encoding="utf-8")):
        text = " ".join(html.unescape(re.sub(r"<[^>]+>", " ", TITLE_ROW.sub("", block))).split())
        if len(text) > 12:
            texts.append(text)
    return texts


def materialize(shape: str, resources: dict) -> dg.ExecuteInProcessResult:
    config = {"ops": {
        "data__source_documents": {"config": {"source": str(CORPORA / shape)}},
        # The small versions hold 6-8 pages; the default floor (20) is set for whole corpora.
        "data__qa_pairs": {"config": {"min_questions": 10}},
        "retrieval__chunks": {"config": {"chunk_tokens": 64, "overlap_tokens": 8}},
        # A random tiny embedding model retrieves by chance: the check must run and report, not pass a floor.
        "retrieval__vector_index": {"config": {"min_recall": 0.0, "min_mrr": 0.0}},
    }}
    return dg.materialize([*data_assets, *data_checks, *retrieval_assets], resources=resources, run_config=config, raise_on_error=False)


@pytest.mark.parametrize("shape", SHAPES)
def test_corpus_shape_passes_data_and_retrieval(shape, tmp_path, dvc_store, tiny_llama, tiny_embedding_model):
    _, resources = tiny_resources(tmp_path, dvc_store, tiny_llama, tiny_embedding_model)
    result = materialize(shape, resources)
    failures = [e.event_specific_data.error.message.strip() for e in result.get_step_failure_events()]
    assert result.success, f"{shape}: {failures}"

    pages = sorted(p for p in (CORPORA / shape).rglob("*") if p.suffix in SUPPORTED_SUFFIXES)
    documents = {r["doc_id"]: r for r in read_jsonl(dvc_store.dataset_path("source_documents"))}
    assert sorted(documents) == [p.relative_to(CORPORA / shape).as_posix() for p in pages]

    qa = list(read_jsonl(dvc_store.dataset_path("qa_pairs")))
    questions = {normalized_question(r["question"]) for r in qa}
    assert len(questions) == len(qa) >= max(10, len(pages)), f"{shape}: {len(qa)} QA pairs, {len(questions)} distinct questions"
    # Every page of a reference manual or a man page set must be asked about, not only the first
    # page that happens to own a shared heading.
    asked = {r["doc_id"] for r in qa}
    assert len(asked) >= 0.75 * len(pages), f"{shape}: questions on {sorted(asked)} of {len(pages)} pages"
    quarantine = result.asset_materializations_for_node(QA_PAIRS.to_python_identifier())[0].metadata
    reasons = quarantine["quarantine_reasons"].value
    dropped = reasons.get("duplicate", 0) + reasons.get("leakage", 0)
    assert dropped <= 0.1 * (len(qa) + quarantine["quarantined"].value), f"{shape}: quarantined {reasons} of {len(qa)} kept"

    for page in pages:
        if page.suffix != ".html":
            continue
        # An FAQ's questions are its headings: an extractor that drops them leaves a chapter of prose.
        document = documents[page.relative_to(CORPORA / shape).as_posix()]["text"]
        in_page = len(re.findall(r"<h[1-6][\s>]", page.read_text(encoding="utf-8")))
        kept = len(re.findall(r"^#{1,6} ", document, re.M))
        assert kept >= 0.8 * in_page, f"{shape}/{page.name}: {kept} of the page's {in_page} headings kept"
        text = " ".join(document.split())
        for nav in nav_texts(page):
            assert nav not in text, f"{shape}/{page.name}: navigation bar in the document text: {nav!r}"

    index = result.asset_materializations_for_node(VECTOR_INDEX.to_python_identifier())[0].metadata
    checks = {c.check_name: c for c in result.get_asset_check_evaluations() if c.asset_key == VECTOR_INDEX}
    assert checks["retrieval_quality"].passed and index["dagster/row_count"].value > len(pages)
    assert index["eval_questions"].value == sum(r["split"] == "eval" for r in qa) > 0
