"""Retrieval stage: token-aware chunks, content-cached embeddings, a hybrid FAISS + BM25 index and its quality gate."""

import time

import dagster as dg
import numpy as np
from pydantic import Field, model_validator

from assets.common import GPU_POD, OWNERS, energy_metadata, json_meta, load_dataset, publish_dataset, write_quarantine
from assets.keys import CHUNKS, EMBEDDINGS, QA_PAIRS, SOURCE_DOCUMENTS, VECTOR_INDEX
from assets.stage import Stage
from resources.dvc import DvcStore
from resources.models import ModelCatalog
from resources.lineage import Lineage
from resources.vector_store import VectorStore
from driftloop.artifacts import ArtifactError
from driftloop.data.records import Rejected, read_jsonl
from driftloop.energy import measured
from driftloop.retrieval.chunking import chunk_document, embed_text
from driftloop.retrieval.index import VectorIndex, choose_spec
from driftloop.retrieval.quality import relevant_sets, retrieval_metrics


stage = Stage()


class ChunksConfig(dg.Config):
    chunk_tokens: int = Field(default=200, ge=16, le=8192, description="Tokens per chunk, counted by the embedding model's tokenizer.")
    overlap_tokens: int = Field(default=40, ge=0)
    max_doc_chars: int = Field(default=2_000_000, gt=0, description="Longer documents are quarantined as too_large.")
    max_bad_fraction: float = Field(default=0.2, ge=0.0, le=1.0)
    screen_injection: bool = Field(default=True, description="Screen every chunk for planted instructions (OWASP LLM01, indirect) "
                                   "with the prompt-injection patterns and classifier; flagged chunks are quarantined, never indexed.")
    max_injected_fraction: float = Field(default=0.05, ge=0.0, le=1.0,
                                         description="More flagged chunks than this share stops the run: a poisoned corpus or a classifier "
                                                     "that misreads this corpus, either way for a person to look at.")

    @model_validator(mode="after")
    def _overlap_below_size(self):
        if self.overlap_tokens >= self.chunk_tokens:
            raise ValueError(f"overlap_tokens ({self.overlap_tokens}) must be smaller than chunk_tokens ({self.chunk_tokens})")
        return self


class VectorIndexConfig(dg.Config):
    index_kind: str = Field(default="auto", pattern="^(auto|flat|hnsw|ivf)$", description="auto: exact up to exact_max vectors, HNSW above.")
    exact_max: int = Field(default=50_000, gt=0)
    hnsw_m: int = Field(default=32, ge=4)
    ef_search: int = Field(default=64, ge=1)
    nprobe: int = Field(default=16, ge=1)
    search: str = Field(default="hybrid", pattern="^(hybrid|dense)$",
                        description="hybrid: the vectors' and BM25's rankings fused by reciprocal rank; dense: vectors alone.")
    fusion_depth: int = Field(default=100, ge=1, description="Candidates each side contributes to the fusion.")
    rrf_constant: int = Field(default=60, ge=1, description="Reciprocal rank fusion's constant: larger flattens the weight of the top ranks.")
    k: int = Field(default=5, ge=1, le=100, description="Cut-off for recall@k and MRR@k.")
    min_recall: float = Field(default=0.7, ge=0.0, le=1.0, description="The quality gate's floor for recall@k on the eval split.")
    min_mrr: float = Field(default=0.45, ge=0.0, le=1.0)
    max_eval_questions: int = Field(default=2000, gt=0)


@stage.asset(
    key=CHUNKS, deps=[SOURCE_DOCUMENTS], group_name="retrieval", kinds={"dvc", "transformers"}, owners=OWNERS, code_version="1",
    tags={"stage": "retrieval"},
)
def chunks(context: dg.AssetExecutionContext, config: ChunksConfig, dvc: DvcStore, models: ModelCatalog) -> dg.MaterializeResult:
    """Documents cut into windows of the embedding model's tokens, pulled back to the
    nearest paragraph or sentence break, each with an id derived from its document and
    content so that unchanged text keeps its id (and its cached embedding)."""
    documents = load_dataset(dvc, "source_documents")
    if not documents:
        raise dg.Failure(description="retrieval/chunks: data/source_documents is empty; there is nothing to chunk")
    embedder = models.embedder()
    rows, rejected = [], []
    for doc in documents:
        doc_chunks, problem = chunk_document(
            doc, embedder.tokenizer, config.chunk_tokens, config.overlap_tokens, config.max_doc_chars, embedder.max_seq_length
        )
        rows += [c.to_row() for c in doc_chunks]
        if problem:
            rejected.append(problem)
    screened = {}
    if config.screen_injection and rows:
        rows, rejected, screened = _screen(context, dvc, models, rows, rejected, config.max_injected_fraction)
    tokens = [r["n_tokens"] for r in rows]
    return publish_dataset(
        context, dvc, "chunks", rows, rejected, seen=len(documents), max_bad_fraction=config.max_bad_fraction,
        preview_columns=["chunk_id", "doc_id", "n_tokens", "text"], gated=lambda r: r.reason != "prompt_injection",
        extra_metadata={
            "documents": dg.MetadataValue.int(len(documents) - sum(r.reason != "prompt_injection" for r in rejected)),
            "tokens_per_chunk": json_meta({"mean": round(float(np.mean(tokens)), 1) if tokens else 0, "max": max(tokens, default=0)}),
            **screened,
            "chunk_tokens": dg.MetadataValue.int(config.chunk_tokens),
            "overlap_tokens": dg.MetadataValue.int(config.overlap_tokens),
        },
    )


def _screen(context, dvc: DvcStore, models: ModelCatalog, rows: list[dict], rejected: list, max_share: float):
    """Chunks through the injection screen; those the same classifier passed in the last
    version of the dataset are not read again."""
    from driftloop.injection import InjectionScreen, screen_chunks

    screen = InjectionScreen.sharing(models.embedder())
    previous = dvc.dataset_path("chunks")
    cleared = {r["content_hash"] for r in read_jsonl(previous) if r.get("screened_by") == screen.version} if previous.is_file() else set()
    kept, flagged, report = screen_chunks(rows, screen, cleared)
    for row, verdict in flagged:
        rejected.append(Rejected(row["doc_id"], "prompt_injection", f"chunk {row['chunk_id']} ({verdict.by}, score {verdict.score:.3f}): {verdict.window}",
                                 "chunks", row["chunk_id"], row["text"][:300]))
    share = len(flagged) / len(rows)
    meta = {"injection_screen": json_meta({"classifier": screen.version, "screened": report.screened, "reused": report.reused,
                                           "flagged": len(flagged), "seconds": round(report.seconds, 2)})}
    context.log.info(f"injection screen {screen.version}: {report.screened} chunks read, {report.reused} cleared before, "
                     f"{len(flagged)} quarantined, {report.seconds:.1f}s")
    if share > max_share:
        path = write_quarantine(dvc, "chunks", context.run.run_id, rejected)
        meta["quarantine_path"] = dg.MetadataValue.path(str(path))
        raise dg.Failure(description=f"retrieval/chunks: {len(flagged)} of {len(rows)} chunks ({share:.1%}) look like planted instructions, "
                                     f"more than max_injected_fraction={max_share:.0%}; nothing was published. The first: "
                                     f"{flagged[0][0]['chunk_id']}: {flagged[0][1].window[:200]!r}", metadata=meta)
    return kept, rejected, meta


@stage.asset(
    key=EMBEDDINGS, deps=[CHUNKS], group_name="retrieval", kinds={"pytorch", "numpy"}, owners=OWNERS, code_version="1",
    tags={"stage": "retrieval", "driftloop/gpu": "optional"}, op_tags=GPU_POD,
    # A killed worker leaves nothing half-written (a version is published by one rename),
    # so the step is simply retried; it re-embeds what the last published version lacks.
    retry_policy=dg.RetryPolicy(max_retries=2, delay=5),
)
def embeddings(context: dg.AssetExecutionContext, dvc: DvcStore, models: ModelCatalog, vector_store: VectorStore) -> dg.MaterializeResult:
    """Unit-norm chunk vectors from the catalog's embedding model. Cached by content
    hash and model: after documents are added or changed, only their chunks are
    embedded again."""
    rows = load_dataset(dvc, "chunks")
    if not rows:
        raise dg.Failure(description="retrieval/embeddings: retrieval/chunks is empty")
    embedder = models.embedder()
    context.log.info(f"embedding model: {embedder.describe()}")

    def progress(p):
        context.log.info(f"embedded {p.done}/{p.total} chunks, {p.rate:.1f} chunks/s, about {p.eta_s:.0f}s left")

    with measured() as energy:
        result, stats = vector_store.store().embed(
            [r["chunk_id"] for r in rows], [r["content_hash"] for r in rows], [embed_text(r["title"], r["text"]) for r in rows],
            embedder, models.embedding_batch_size, progress,
        )
    context.log.info(f"{stats.embedded} chunks embedded, {stats.reused} reused from the cache, in {stats.seconds:.1f}s")
    return dg.MaterializeResult(
        data_version=dg.DataVersion(result.version),
        metadata={
            "dagster/row_count": dg.MetadataValue.int(stats.total),
            "embedded": dg.MetadataValue.int(stats.embedded),
            "reused_from_cache": dg.MetadataValue.int(stats.reused),
            "chunks_per_second": dg.MetadataValue.float(round(stats.rate, 1)),
            "seconds": dg.MetadataValue.float(round(stats.seconds, 2)),
            "dimension": dg.MetadataValue.int(embedder.dimension),
            "model": json_meta(embedder.describe()),
            "version": dg.MetadataValue.text(result.version),
            "path": dg.MetadataValue.path(str(result.folder)),
            "bytes": dg.MetadataValue.int((result.folder / "vectors.npy").stat().st_size),
            **energy_metadata(energy),
        },
    )


@stage.asset(
    key=VECTOR_INDEX, deps=[EMBEDDINGS, QA_PAIRS], group_name="retrieval", kinds={"faiss"}, owners=OWNERS, code_version="1",
    tags={"stage": "retrieval"},
    check_specs=[
        dg.AssetCheckSpec("retrieval_quality", asset=VECTOR_INDEX, blocking=True,
                          description="recall@k and MRR@k of the eval split's questions against their floors")
    ],
)
def vector_index(
    context: dg.AssetExecutionContext, config: VectorIndexConfig, dvc: DvcStore, models: ModelCatalog, vector_store: VectorStore
) -> dg.MaterializeResult:
    """A FAISS index over the chunk embeddings (exact for small corpora, HNSW or IVF
    above a size or by config) and a BM25 index over the same chunks, searched
    together (hybrid) unless `search: dense`, written atomically to a versioned folder with the
    chunk rows its ids map to. It becomes the served index only when its retrieval
    quality on the eval split clears the floors."""
    store = vector_store.store()
    rows = load_dataset(dvc, "chunks")
    embedder = models.embedder()
    current = store.current_embeddings(embedder.fingerprint, embedder.precision)
    if current is None or current.chunk_ids != [r["chunk_id"] for r in rows]:
        raise dg.Failure(description="retrieval/vector_index: the embeddings do not match the current chunks; materialize retrieval/embeddings first")
    spec = choose_spec(len(rows), config.index_kind, config.exact_max, hnsw_m=config.hnsw_m, ef_search=config.ef_search, nprobe=config.nprobe,
                       hybrid=config.search == "hybrid", fusion_depth=config.fusion_depth, rrf_constant=config.rrf_constant)
    folder, spec = store.build_index(current, rows, spec)
    try:
        index = VectorIndex(folder)
    except ArtifactError as err:
        raise dg.Failure(description=f"the index just written does not verify: {err}") from err

    eval_rows = [r for r in load_dataset(dvc, "qa_pairs") if r["split"] == "eval"][: config.max_eval_questions]
    meta = {
        "dagster/row_count": dg.MetadataValue.int(index.index.ntotal),
        "index_kind": dg.MetadataValue.text(spec.kind),
        "search": dg.MetadataValue.text("hybrid (vectors + BM25, reciprocal rank fusion)" if spec.hybrid else "dense"),
        "version": dg.MetadataValue.text(index.version),
        "path": dg.MetadataValue.path(str(folder)),
        "embeddings_version": dg.MetadataValue.text(current.version),
    }
    if not eval_rows:
        check = dg.AssetCheckResult(check_name="retrieval_quality", passed=False, description="the eval split of data/qa_pairs is empty: retrieval quality cannot be measured")
        return dg.MaterializeResult(data_version=dg.DataVersion(index.version), metadata=meta, check_results=[check])

    questions = [r["question"] for r in eval_rows]
    queries = embedder.encode(questions, batch_size=models.embedding_batch_size)
    started = time.perf_counter()
    _, ranked = index.search(queries, config.k, questions)
    latency_ms = (time.perf_counter() - started) * 1000 / len(eval_rows)
    relevant, doc_level = relevant_sets(eval_rows, index.chunks)
    metrics = retrieval_metrics(ranked, relevant, config.k)
    recall, mrr = metrics[f"recall_at_{config.k}"], metrics[f"mrr_at_{config.k}"]
    passed = recall >= config.min_recall and mrr >= config.min_mrr
    if passed:
        store.promote_index(folder, {"recall": recall, "mrr": mrr, "k": config.k})
    meta.update({
        f"recall_at_{config.k}": dg.MetadataValue.float(round(recall, 4)),
        f"mrr_at_{config.k}": dg.MetadataValue.float(round(mrr, 4)),
        "eval_questions": dg.MetadataValue.int(len(eval_rows)),
        "doc_level_relevance": dg.MetadataValue.int(doc_level),
        "search_ms_per_query": dg.MetadataValue.float(round(latency_ms, 3)),
        "served": dg.MetadataValue.bool(passed),
    })
    check = dg.AssetCheckResult(
        check_name="retrieval_quality", passed=passed,
        description=f"recall@{config.k}={recall:.3f} (floor {config.min_recall}), MRR@{config.k}={mrr:.3f} (floor {config.min_mrr}) on {len(eval_rows)} eval questions"
        + ("" if passed else "; the previous index keeps serving"),
        metadata={"recall": dg.MetadataValue.float(recall), "mrr": dg.MetadataValue.float(mrr), "k": dg.MetadataValue.int(config.k)},
    )
    return dg.MaterializeResult(data_version=dg.DataVersion(index.version), metadata=meta, check_results=[check])


def build(lineage: Lineage | None = None, config: dict[str, dict] | None = None) -> list[dg.AssetsDefinition]:
    built = stage.build(lineage or Lineage(), config)
    return [built["chunks"], built["embeddings"], built["vector_index"]]


retrieval_assets = build()
chunks, embeddings, vector_index = retrieval_assets
