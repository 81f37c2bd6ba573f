"""Chunking, the embedding cache, index artifacts and retrieval metrics, without Dagster."""


import numpy as np
import pytest
from transformers import AutoTokenizer

from driftloop.models.embedding import load_embedder, resolve_embedding_model
from driftloop.artifacts import ArtifactError
from driftloop.retrieval.chunking import chunk_document
from driftloop.retrieval.index import VectorIndex, choose_spec
from driftloop.retrieval.quality import relevant_sets, retrieval_metrics
from driftloop.retrieval.store import RetrievalStore


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(resolve_embedding_model("all-MiniLM-L6-v2"))


def doc(text, doc_id="d1", title="Title"):
    return {"doc_id": doc_id, "title": title, "text": text}


def test_chunks_respect_the_token_window_and_cover_the_text(tokenizer):
    text = "\n\n".join(f"Paragraph {i}. " + "The quick brown fox jumps over the lazy dog. " * 6 for i in range(40))
    chunks, problem = chunk_document(doc(text), tokenizer, chunk_tokens=64, overlap_tokens=16, max_seq_length=128)
    assert problem is None and len(chunks) > 10
    for c in chunks:
        assert len(tokenizer(c.embed_text)["input_ids"]) <= 128
        assert c.n_tokens <= 64
        assert text[c.start_char : c.end_char].strip() == c.text
    assert chunks[0].start_char == 0 and chunks[-1].end_char == len(text.rstrip())
    assert all(b.start_char < a.end_char for a, b in zip(chunks, chunks[1:])), "consecutive chunks overlap"


def test_chunk_ids_are_stable_and_content_derived(tokenizer):
    text = "Alpha beta gamma. " * 200
    first, _ = chunk_document(doc(text), tokenizer, 50, 10)
    again, _ = chunk_document(doc(text), tokenizer, 50, 10)
    assert [c.chunk_id for c in first] == [c.chunk_id for c in again]
    assert len({c.chunk_id for c in first}) == len(first)
    edited, _ = chunk_document(doc(text + " Omega."), tokenizer, 50, 10)
    assert first[0].chunk_id == edited[0].chunk_id and first[-1].chunk_id != edited[-1].chunk_id


def test_bad_documents_are_named(tokenizer):
    _, problem = chunk_document(doc("x" * 100), tokenizer, max_doc_chars=50)
    assert problem.reason == "too_large" and "max_doc_chars=50" in problem.detail
    _, problem = chunk_document(doc("\u200b\u200b\u200b"), tokenizer)
    assert problem.reason == "no_tokens"
    with pytest.raises(ValueError, match="overlap_tokens"):
        chunk_document(doc("text"), tokenizer, chunk_tokens=10, overlap_tokens=10)


def test_embedding_cache_reuses_unchanged_chunks(tiny_embedding_model, tmp_path):
    embedder = load_embedder(tiny_embedding_model, "cpu", "fp32")
    store = RetrievalStore(tmp_path)
    texts = [f"chunk number {i} about topic {i % 7}" for i in range(30)]
    hashes = [f"h{i}" for i in range(30)]
    ids = [f"c{i}" for i in range(30)]
    first, stats = store.embed(ids, hashes, texts, embedder, batch_size=8)
    assert (stats.embedded, stats.reused) == (30, 0)
    np.testing.assert_allclose(np.linalg.norm(first.vectors, axis=1), 1.0, rtol=1e-5)
    second, stats = store.embed([*ids, "c30"], [*hashes, "h30"], [*texts, "a brand new chunk"], embedder, batch_size=8)
    assert (stats.embedded, stats.reused) == (1, 30)
    np.testing.assert_allclose(second.vectors[:30], first.vectors, rtol=1e-6)
    np.testing.assert_allclose(second.vectors[30], embedder.encode(["a brand new chunk"])[0], rtol=1e-4, atol=1e-6)


def test_index_is_versioned_verified_and_refuses_corruption(tiny_embedding_model, tmp_path):
    embedder = load_embedder(tiny_embedding_model, "cpu", "fp32")
    store = RetrievalStore(tmp_path)
    rows = [{"chunk_id": f"c{i}", "doc_id": f"d{i}", "title": "", "text": f"text {i} " * 5, "start_char": 0, "end_char": 10} for i in range(20)]
    emb, _ = store.embed([r["chunk_id"] for r in rows], [f"h{i}" for i in range(20)], [r["text"] for r in rows], embedder, 8)
    folder, spec = store.build_index(emb, rows)
    assert spec.kind == "flat"
    index = VectorIndex(folder)
    _, ids = index.search(np.asarray(emb.vectors[:3]), 1)
    assert ids[:, 0].tolist() == [0, 1, 2]
    with pytest.raises(ArtifactError, match="no index has passed"):
        store.current_index_folder()
    store.promote_index(folder, {"recall": 1.0})
    assert store.current_index_folder() == folder
    blob = bytearray((folder / "index.faiss").read_bytes())
    blob[-1] ^= 0xFF
    (folder / "index.faiss").write_bytes(bytes(blob))
    with pytest.raises(ArtifactError, match="corrupt"):
        VectorIndex(folder)
    rebuilt, _ = store.build_index(emb, rows)  # a corrupt version folder is rebuilt, not reused
    assert VectorIndex(rebuilt).index.ntotal == 20
    (rebuilt / "chunks.jsonl").unlink()
    with pytest.raises(ArtifactError, match="missing"):
        VectorIndex(rebuilt)


def test_approximate_index_kinds_find_exact_neighbours(tmp_path):
    from driftloop.retrieval.index import build_index

    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(3000, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    for kind in ("hnsw", "ivf"):
        index = build_index(vectors, choose_spec(len(vectors), kind, nprobe=32))
        _, ids = index.search(vectors[:100], 1)
        assert (ids[:, 0] == np.arange(100)).mean() > 0.95, kind
    assert choose_spec(10, "auto").kind == "flat" and choose_spec(100_000, "auto").kind == "hnsw"
    with pytest.raises(ValueError, match="unknown index kind"):
        choose_spec(10, "annoy")


def test_recall_and_mrr():
    chunks = [{"doc_id": "a", "text": "Alpha answer text here"}, {"doc_id": "a", "text": "other"}, {"doc_id": "b", "text": "Beta answer"}]
    qa = [{"doc_id": "a", "answer": "alpha answer text"}, {"doc_id": "b", "answer": "beta answer"}, {"doc_id": "a", "answer": "missing"}]
    relevant, doc_level = relevant_sets(qa, chunks)
    assert relevant == [{0}, {2}, {0, 1}] and doc_level == 1
    metrics = retrieval_metrics(np.array([[1, 0], [2, 0], [2, 2]]), relevant, k=2)
    assert metrics == {"recall_at_2": pytest.approx(2 / 3), "mrr_at_2": pytest.approx((0.5 + 1.0) / 3), "questions": 3}


def _hybrid_fixture(tiny_embedding_model, tmp_path, hybrid=True):
    embedder = load_embedder(tiny_embedding_model, "cpu", "fp32")
    store = RetrievalStore(tmp_path)
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet"]
    rows = [{"chunk_id": f"c{i}", "doc_id": f"d{i}", "title": "Manual", "text": f"The {w} command copies files between hosts.",
             "start_char": 0, "end_char": 10} for i, w in enumerate(words)]
    texts = [f"{r['title']}\n{r['text']}" for r in rows]
    emb, _ = store.embed([r["chunk_id"] for r in rows], [f"h{i}" for i in range(len(rows))], texts, embedder, 8)
    folder, _ = store.build_index(emb, rows, choose_spec(len(rows), "flat", hybrid=hybrid))
    return embedder, folder, words


def test_hybrid_search_ranks_the_chunk_that_names_the_query_term(tiny_embedding_model, tmp_path):
    # Every chunk says the same thing but for one name: vectors of a tiny random model
    # cannot tell them apart, BM25 can.
    embedder, folder, words = _hybrid_fixture(tiny_embedding_model, tmp_path)
    index = VectorIndex(folder)
    assert index.lexical is not None and (folder / "bm25" / "vocab.index.json").is_file()
    questions = [f"Tell me about {w}" for w in words]
    vectors = embedder.encode(questions)
    scores, ids = index.search(vectors, 3, questions)
    assert ids[:, 0].tolist() == list(range(len(words)))
    # The score is the cosine of the chunk the fused ranking chose, not a fusion score.
    chunk_vectors = index.index.reconstruct_n(0, index.index.ntotal)
    np.testing.assert_allclose(scores, np.einsum("qd,qkd->qk", vectors, chunk_vectors[ids]), rtol=1e-5)
    _, dense_ids = index.search(vectors, 3)
    assert dense_ids[:, 0].tolist() != list(range(len(words))), "the tiny model alone should not find them: the test would prove nothing"
    # A query of words no chunk has is ranked by the vectors alone.
    unknown = ["zzqx wwvy"]
    np.testing.assert_array_equal(index.search(embedder.encode(unknown), 3, unknown)[1], index.search(embedder.encode(unknown), 3)[1])
    with pytest.raises(ValueError, match="2 query texts for 1"):
        index.search(vectors[:1], 3, questions[:2])


def test_dense_index_and_a_corrupt_bm25_file(tiny_embedding_model, tmp_path):
    embedder, folder, words = _hybrid_fixture(tiny_embedding_model, tmp_path / "dense", hybrid=False)
    index = VectorIndex(folder)
    assert index.lexical is None and not (folder / "bm25").exists()
    questions = [f"Tell me about {w}" for w in words]
    np.testing.assert_array_equal(index.search(embedder.encode(questions), 3, questions)[1], index.search(embedder.encode(questions), 3)[1])
    _, folder, _ = _hybrid_fixture(tiny_embedding_model, tmp_path / "hybrid")
    (folder / "bm25" / "vocab.index.json").write_text("{}")
    with pytest.raises(ArtifactError, match="bm25/vocab.index.json is corrupt"):
        VectorIndex(folder)


def test_reciprocal_rank_fusion():
    from driftloop.retrieval.lexical import pad, reciprocal_rank_fusion

    # 7, second in both lists, beats 1 and 9, each first in one only; their tie goes to the first list.
    assert reciprocal_rank_fusion([[1, 7, 3], [9, 7, 5]], k=3) == [7, 1, 9]
    # Equal sums: the id the first list ranks higher comes first.
    assert reciprocal_rank_fusion([[1, 2], [2, 1]], k=2) == [1, 2]
    assert reciprocal_rank_fusion([[4, -1], []], k=3) == [4]
    assert pad([[4], [2, 3]], 3).tolist() == [[4, -1, -1], [2, 3, -1]]
