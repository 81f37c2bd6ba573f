"""Data stage: source documents, QA pairs and instruction examples, each validated
by Great Expectations, quarantined row by row, and versioned with DVC."""


import json
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Literal

import dagster as dg
from pydantic import Field

from assets.common import OWNERS, json_meta, load_dataset, publish_dataset, suite_check_results
from assets.keys import INSTRUCTION_DATASET, QA_PAIRS, SOURCE_DOCUMENTS, VECTOR_INDEX
from driftloop.data.corpus import SourceError, fingerprint, ingest_with_inbox, resolve_source
from driftloop.data.instructions import TrainingContexts, build_examples, training_contexts
from driftloop.data.qa import derive
from driftloop.data.records import Document, Rejected, excerpt
from driftloop.data.suites import (
    Limits,
    document_frame,
    document_rules,
    eval_texts,
    instruction_frame,
    instruction_rules,
    pii_rule,
    qa_frame,
    qa_rules,
)
from driftloop.data.validation import DatasetError, run_suite, screen
from driftloop.prompts import CONTEXT_CHUNKS, load_prompt
from driftloop.settings import Settings
from assets.stage import Stage
from resources.dvc import DvcStore
from resources.lineage import Lineage
from resources.models import ModelCatalog
from resources.vector_store import VectorStore

BLOCKING = ("schema", "text_quality", "duplicates", "leakage")
KINDS = {"dvc", "great_expectations", "pandas"}
stage = Stage()


class SourceDocumentsConfig(dg.Config):
    source: str | None = Field(
        default=None,
        description="A folder of .md/.rst/.txt/.html/.pdf/.docx files or a .jsonl file (fields id, text; optional title, uri, format). "
        "Unset: $DRIFTLOOP_SOURCE_DIR, else 'python-docs' (the interpreter's own documentation).",
    )
    inbox: str | None = Field(
        default=None,
        description="A folder whose documents are ingested beside the source (ids prefixed inbox/); the new_documents sensor "
        "watches it. Unset: $DRIFTLOOP_INBOX_DIR, else <DRIFTLOOP_HOME>/data/inbox.",
    )
    max_file_bytes: int = Field(default=5_000_000, gt=0, description="Larger files are quarantined as too_large.")
    min_chars: int = Field(default=20, ge=1)
    max_chars: int = Field(default=500_000, gt=0)
    near_duplicate_threshold: float = Field(default=0.9, gt=0.0, le=1.0, description="Jaccard similarity of 5-word shingles.")
    max_bad_fraction: float = Field(default=0.2, ge=0.0, le=1.0, description="Fail the run when a larger share of rows is bad.")
    pii_action: Literal["report", "quarantine"] = "report"


class QAPairsConfig(dg.Config):
    eval_fraction: float = Field(default=0.2, gt=0.0, lt=1.0, description="Share of documents whose questions form the eval split.")
    min_answer_chars: int = Field(default=40, ge=1)
    max_answer_chars: int = Field(default=600, gt=0)
    max_context_chars: int = Field(default=2000, gt=0)
    max_bad_fraction: float = Field(default=0.2, ge=0.0, le=1.0)
    min_questions: int = Field(
        default=20, ge=1,
        description="Fail the run when fewer usable questions (after quarantine) can be derived: the retrieval gate, "
        "fine-tuning and evaluation all read them.",
    )


class InstructionDatasetConfig(dg.Config):
    prompt_version: str = Field(default="rag.v1", description="A template under driftloop/prompts/.")
    contexts: Literal["retrieved", "gold"] = Field(
        default="retrieved",
        description="retrieved: each question is shown the top-k chunks the served index returns for it, as evaluation and "
        "serving show them, with the chunk that answers it swapped in where retrieval missed (RAFT); gold: its own section.",
    )
    k: int = Field(default=CONTEXT_CHUNKS, ge=1, le=20, description="Retrieved contexts per example; the same k as evaluation and serving.")
    search_depth: int = Field(default=20, ge=1, description="Chunks ranked per question, so that chunks of eval documents can be skipped.")
    max_example_chars: int = Field(default=8000, gt=0)
    include_feedback: bool = Field(default=True, description="Corrected answers from the request log become examples, validated like the rest.")
    feedback_max_rating: int = Field(default=2, ge=1, le=5, description="Only corrections given with a rating of at most this (1 bad .. 5 good) train.")
    max_bad_fraction: float = Field(default=0.2, ge=0.0, le=1.0)


def source_locations(source: str | None = None, inbox: str | None = None, lineage: Lineage | None = None,
                     settings: Settings | None = None) -> list[str]:
    """The source and the inbox as run config, the lineage, the settings or the defaults name them."""
    lineage = lineage or Lineage()
    default = lineage.source or (settings or Settings.from_env()).source_dir
    return [resolve_source(source, default), inbox or str(lineage.layout().inbox)]


def _feedback_examples(prompt, vector_store: VectorStore, max_rating: int) -> tuple[list[dict], int]:
    from datetime import UTC, datetime

    from driftloop.artifacts import ArtifactError
    from driftloop.data.instructions import feedback_examples
    from driftloop.monitoring.traffic import read_window
    from driftloop.serving.requestlog import default_root

    requests, feedback = read_window(default_root(), datetime(2026, 1, 1, tzinfo=UTC), max_days=366)
    if not feedback.rows:
        return [], 0
    texts = {}
    try:
        with (vector_store.store().current_index_folder() / "chunks.jsonl").open(encoding="utf-8") as handle:
            texts = {row["chunk_id"]: row["text"] for row in map(json.loads, handle)}
    except (OSError, ValueError, ArtifactError):
        pass  # no index yet: the examples go without context
    return feedback_examples(requests.rows, feedback.rows, texts, prompt, max_rating)


def _retrieved_contexts(qa_rows: list[dict], config: "InstructionDatasetConfig", models: ModelCatalog, vector_store: VectorStore):
    from driftloop.artifacts import ArtifactError
    from driftloop.retrieval.index import VectorIndex

    try:
        index = VectorIndex(vector_store.store().current_index_folder())
    except ArtifactError as err:
        raise dg.Failure(description=f"data/instruction_dataset: contexts 'retrieved' needs the served index: {err} "
                                     "(or set contexts: gold)") from err
    train = [r for r in qa_rows if r["split"] == "train"]
    if not train:
        return TrainingContexts(), index.version
    eval_docs = {r["doc_id"] for r in qa_rows if r["split"] == "eval"}
    questions = [r["question"] for r in train]
    depth = min(max(config.search_depth, config.k), len(index.chunks))
    _, ranked = index.search(models.embedder().encode(questions, batch_size=models.embedding_batch_size), depth, questions)
    return training_contexts(train, index.chunks, [[int(i) for i in row] for row in ranked], config.k, eval_docs), index.version


def _pii_summary(frame) -> dict:
    flagged = frame[frame["pii_types"].notna()]
    kinds = Counter(k for value in flagged["pii_types"] for k in value.split(","))
    return {"documents_with_pii": len(flagged), "by_type": dict(kinds), "doc_ids": flagged["doc_id"].head(20).tolist()}


def _changes(previous: list[dict], current: list[dict]) -> dict:
    before = {r["doc_id"]: r["content_hash"] for r in previous}
    after = {r["doc_id"]: r["content_hash"] for r in current}
    return {
        "added": sorted(set(after) - set(before)),
        "changed": sorted(k for k in set(after) & set(before) if after[k] != before[k]),
        "removed": sorted(set(before) - set(after)),
    }


@stage.asset(
    key=SOURCE_DOCUMENTS,
    group_name="data",
    kinds=KINDS,
    owners=OWNERS,
    code_version="2",
    tags={"stage": "data"},
)
def source_documents(context: dg.AssetExecutionContext, config: SourceDocumentsConfig, dvc: DvcStore, lineage: Lineage) -> dg.MaterializeResult:
    """The corpus, one row per document: stable id, source URI, SHA-256 content hash and
    text normalised to markdown. Downstream stages key their caches by content hash, so
    adding or changing documents only recomputes what changed."""
    source, inbox = source_locations(config.source, config.inbox, lineage)
    try:
        result = ingest_with_inbox(source, Path(inbox), max_file_bytes=config.max_file_bytes)
    except SourceError as err:
        raise dg.Failure(description=str(err)) from err
    context.log.info(f"ingested {len(result.documents)} documents from {source}; {len(result.rejected)} rejected at ingest")
    if result.ignored_files:
        context.log.warning(f"{len(result.ignored_files)} files with unsupported extensions ignored, e.g. {result.ignored_files[:5]}")

    limits = Limits(min_chars=config.min_chars, max_chars=config.max_chars, near_duplicate_threshold=config.near_duplicate_threshold)
    rows = [d.to_row() for d in result.documents]
    rejected: list[Rejected] = list(result.rejected)
    frame = document_frame(rows, limits)
    suites = document_rules(limits)
    if config.pii_action == "quarantine":
        suites["pii"] = [pii_rule()]
    try:
        screened = screen(rows, frame, suites, "doc_id", "source_documents")
    except DatasetError as err:
        raise dg.Failure(description=str(err)) from err
    rejected += screened.rejected

    previous_path = dvc.dataset_path("source_documents")
    previous = load_dataset(dvc, "source_documents") if previous_path.is_file() else []
    changes = _changes(previous, screened.kept)
    return publish_dataset(
        context, dvc, "source_documents", screened.kept, rejected,
        seen=result.seen, max_bad_fraction=config.max_bad_fraction,
        preview_columns=["doc_id", "title", "format", "n_chars", "content_hash"],
        extra_metadata={
            "source": dg.MetadataValue.text(source),
            "inbox": dg.MetadataValue.path(inbox),
            "source_fingerprint": dg.MetadataValue.text(fingerprint([source, inbox])),
            "ignored_files": dg.MetadataValue.json({"count": len(result.ignored_files), "examples": result.ignored_files[:20]}),
            "pii": json_meta(_pii_summary(frame)),
            "total_chars": dg.MetadataValue.int(sum(r["n_chars"] for r in screened.kept)),
            "changes": json_meta({k: {"count": len(v), "examples": v[:10]} for k, v in changes.items()}),
            LIMITS: json_meta(asdict(limits)),
        },
    )


@stage.asset(
    key=QA_PAIRS,
    deps=[SOURCE_DOCUMENTS],
    group_name="data",
    kinds=KINDS,
    owners=OWNERS,
    code_version="2",
    tags={"stage": "data"},
)
def qa_pairs(context: dg.AssetExecutionContext, config: QAPairsConfig, dvc: DvcStore) -> dg.MaterializeResult:
    """Evaluation questions with reference answers and reference contexts, one per
    documented heading (API, module or topic), each naming its page and section path,
    split train/eval by document so that no document feeds both sides. Fails when fewer
    than min_questions survive, saying what the documents lacked."""
    documents = [
        Document(r["doc_id"], r["uri"], r["title"], r["format"], r["text"], r["content_hash"])
        for r in load_dataset(dvc, "source_documents")
    ]
    derived = derive(
        documents, eval_fraction=config.eval_fraction, min_answer_chars=config.min_answer_chars,
        max_answer_chars=config.max_answer_chars, max_context_chars=config.max_context_chars,
    )
    rows = [p.to_row() for p in derived.pairs]
    limits = Limits(max_answer_chars=config.max_answer_chars)
    screened = None
    if rows:
        try:
            screened = screen(rows, qa_frame(rows), qa_rules(limits), "qa_id", "qa_pairs")
        except DatasetError as err:
            raise dg.Failure(description=str(err)) from err
    usable = len(screened.kept) if screened else 0
    if usable < config.min_questions:
        quarantined = f"; {len(screened.rejected)} derived questions quarantined ({screened.reason_counts()})" if screened else ""
        raise dg.Failure(description=(
            f"qa_pairs: only {usable} usable questions, fewer than min_questions={config.min_questions}: a question needs a heading "
            f"with prose under it. {derived.explanation(config.min_answer_chars)}; {len(rows)} questions derived{quarantined}"
        ))
    splits = Counter(r["split"] for r in screened.kept)
    return publish_dataset(
        context, dvc, "qa_pairs", screened.kept, screened.rejected,
        seen=len(rows), max_bad_fraction=config.max_bad_fraction,
        preview_columns=["split", "question", "answer", "doc_id"],
        extra_metadata={
            "splits": json_meta(dict(splits)),
            "eval_documents": dg.MetadataValue.int(len({r["doc_id"] for r in screened.kept if r["split"] == "eval"})),
            "train_documents": dg.MetadataValue.int(len({r["doc_id"] for r in screened.kept if r["split"] == "train"})),
            LIMITS: json_meta(asdict(limits)),
        },
    )


@stage.asset(
    key=INSTRUCTION_DATASET,
    deps=[QA_PAIRS, VECTOR_INDEX],
    group_name="training",
    kinds=KINDS,
    owners=OWNERS,
    code_version="2",
    tags={"stage": "data"},
)
def instruction_dataset(
    context: dg.AssetExecutionContext, config: InstructionDatasetConfig, dvc: DvcStore, models: ModelCatalog, vector_store: VectorStore
) -> dg.MaterializeResult:
    """Chat-format fine-tuning examples (system, user question + context, assistant
    answer) built from the train split only, each shown the contexts the served index
    retrieves for it (RAFT), with the prompt template and index versions recorded."""
    qa_rows = load_dataset(dvc, "qa_pairs")
    try:
        prompt = load_prompt(config.prompt_version)
    except FileNotFoundError as err:
        raise dg.Failure(description=str(err)) from err
    context_meta = {"contexts": dg.MetadataValue.text(config.contexts)}
    if config.contexts == "retrieved":
        found, index_version = _retrieved_contexts(qa_rows, config, models, vector_store)
        rows = build_examples(qa_rows, prompt, found.texts)
        shown = max(len(found.texts), 1)
        context_meta.update({
            "index_version": dg.MetadataValue.text(index_version),
            "k": dg.MetadataValue.int(config.k),
            "retrieved_answer_rate": dg.MetadataValue.float(round(found.retrieved_hits / shown, 4)),
            "answer_chunk_inserted": dg.MetadataValue.int(found.answer_inserted),
            "section_fallback": dg.MetadataValue.int(found.section_fallback),
            "eval_chunks_skipped": dg.MetadataValue.int(found.eval_chunks_skipped),
        })
    else:
        rows = build_examples(qa_rows, prompt)
    from_feedback, skipped_by_rating = ([], 0)
    if config.include_feedback:
        from_feedback, skipped_by_rating = _feedback_examples(prompt, vector_store, config.feedback_max_rating)
    rows += from_feedback
    eval_docs = {r["doc_id"] for r in qa_rows if r["split"] == "eval"}
    limits = Limits(max_example_chars=config.max_example_chars)
    try:
        screened = screen(rows, instruction_frame(rows, eval_docs, eval_texts(qa_rows)), instruction_rules(limits), "example_id", "instruction_dataset")
    except DatasetError as err:
        raise dg.Failure(description=str(err)) from err
    user_turns = [r["messages"][1]["content"] for r in screened.kept[:10]]
    return publish_dataset(
        context, dvc, "instruction_dataset", screened.kept, screened.rejected,
        seen=len(rows), max_bad_fraction=config.max_bad_fraction,
        preview_columns=["example_id", "doc_id", "prompt_version"],
        extra_metadata={
            **context_meta,
            "prompt_version": dg.MetadataValue.text(prompt.version),
            "feedback_examples": dg.MetadataValue.int(len(from_feedback)),
            "feedback_skipped_by_rating": dg.MetadataValue.int(skipped_by_rating),
            LIMITS: json_meta(asdict(limits)),
            "example_user_turns": dg.MetadataValue.md("\n\n".join(f"- {excerpt(t, 200)}" for t in user_turns)),
        },
    )


LIMITS = "limits"


def recorded_limits(context: dg.AssetCheckExecutionContext, key: dg.AssetKey) -> Limits:
    """The limits the materialization that wrote the stored dataset screened it with, so a
    check holds the data to the run's own config (a raised max_answer_chars keeps rows the
    defaults would fail); the defaults for data written before limits were recorded."""
    event = context.instance.get_latest_materialization_event(key)
    recorded = event.asset_materialization.metadata.get(LIMITS) if event and event.asset_materialization else None
    return Limits(**recorded.value) if recorded is not None else Limits()


def _check_specs(key: dg.AssetKey, names: tuple[str, ...], warn_only: tuple[str, ...] = ()) -> list[dg.AssetCheckSpec]:
    return [
        dg.AssetCheckSpec(name, asset=key, blocking=name not in warn_only, description=f"Great Expectations suite '{name}'")
        for name in names
    ]


@stage.multi_asset_check(
    specs=_check_specs(SOURCE_DOCUMENTS, ("schema", "text_quality", "duplicates", "pii"), warn_only=("pii",)),
    name="source_documents_expectations",
)
def source_documents_checks(context: dg.AssetCheckExecutionContext, dvc: DvcStore, lineage: Lineage):
    """The stored corpus passes its suites, under the limits the run that wrote it applied;
    PII is reported (WARN), not blocking."""
    rows = load_dataset(dvc, "source_documents")
    limits = recorded_limits(context, lineage.key(SOURCE_DOCUMENTS))
    frame = document_frame(rows, limits)
    suites = document_rules(limits)
    reports = {name: run_suite(frame, f"check.source_documents.{name}", rules) for name, rules in suites.items()}
    reports["pii"] = run_suite(frame, "check.source_documents.pii", [pii_rule()])
    yield from suite_check_results(reports, lineage.key(SOURCE_DOCUMENTS), BLOCKING)


@stage.multi_asset_check(
    specs=_check_specs(QA_PAIRS, ("schema", "text_quality", "duplicates", "leakage")),
    name="qa_pairs_expectations",
)
def qa_pairs_checks(context: dg.AssetCheckExecutionContext, dvc: DvcStore, lineage: Lineage):
    """The stored QA pairs pass their suites (under the limits they were written with),
    including no train/eval leakage."""
    rows = load_dataset(dvc, "qa_pairs")
    frame = qa_frame(rows)
    rules = qa_rules(recorded_limits(context, lineage.key(QA_PAIRS)))
    reports = {name: run_suite(frame, f"check.qa_pairs.{name}", suite) for name, suite in rules.items()}
    yield from suite_check_results(reports, lineage.key(QA_PAIRS), BLOCKING)


@stage.multi_asset_check(
    specs=_check_specs(INSTRUCTION_DATASET, ("schema", "text_quality", "duplicates", "leakage")),
    name="instruction_dataset_expectations",
)
def instruction_dataset_checks(context: dg.AssetCheckExecutionContext, dvc: DvcStore, lineage: Lineage):
    """The stored examples are well-formed chats and none comes from an eval document, asks
    an eval question or teaches an eval answer."""
    rows = load_dataset(dvc, "instruction_dataset")
    qa_rows = load_dataset(dvc, "qa_pairs")
    eval_docs = {r["doc_id"] for r in qa_rows if r["split"] == "eval"}
    frame = instruction_frame(rows, eval_docs, eval_texts(qa_rows))
    rules = instruction_rules(recorded_limits(context, lineage.key(INSTRUCTION_DATASET)))
    reports = {name: run_suite(frame, f"check.instruction_dataset.{name}", suite) for name, suite in rules.items()}
    yield from suite_check_results(reports, lineage.key(INSTRUCTION_DATASET), BLOCKING)


def build(lineage: Lineage | None = None, config: dict[str, dict] | None = None) -> tuple[list[dg.AssetsDefinition], list[dg.AssetChecksDefinition]]:
    built = stage.build(lineage or Lineage(), config)
    return ([built[n] for n in ("source_documents", "qa_pairs", "instruction_dataset")],
            [built[n] for n in ("source_documents_checks", "qa_pairs_checks", "instruction_dataset_checks")])


# The default lineage's definitions, as tests and single-lineage users import them.
data_assets, data_checks = build()
source_documents, qa_pairs, instruction_dataset = data_assets
