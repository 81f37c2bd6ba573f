"""Dense, BM25 and hybrid retrieval on each corpus shape, by the retrieval gate's measure.

    python bench/corpora/retrieval.py [--build DIR] [shape ...]

For each corpus assembled by assemble.py: the product's chunks (retrieval/chunks'
defaults) embedded with the default model, one index built by the product's store, and
the eval split's derived questions searched three ways: FAISS alone (what most RAG
templates ship, and this product before hybrid search), BM25 alone (bm25s), and the
product's hybrid (both rankings fused by reciprocal rank). A hit is a top-5 chunk
holding the reference answer's opening, as in the retrieval_quality check; recall@5 and
MRR@5 are over all shapes' questions together. Hand-written questions (hit@3 by page)
are in run.py's full runs.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHAPES = ["reference", "faq", "tutorial", "manpages", "markdown"]


def one_shape(shape: str, build: Path, embedder) -> dict:
    from driftloop.data.corpus import read_directory
    from driftloop.data.qa import derive_qa_pairs
    from driftloop.retrieval.chunking import chunk_document, embed_text
    from driftloop.retrieval.index import VectorIndex, choose_spec
    from driftloop.retrieval.lexical import pad
    from driftloop.retrieval.quality import relevant_sets, retrieval_metrics
    from driftloop.retrieval.store import RetrievalStore

    documents = read_directory(build / shape, 5_000_000).documents
    chunks = [c.to_row() for d in documents for c in chunk_document(d.to_row(), embedder.tokenizer, 200, 40, 2_000_000, embedder.max_seq_length)[0]]
    questions = [p.to_row() for p in derive_qa_pairs(documents) if p.split == "eval"]
    with tempfile.TemporaryDirectory() as tmp:
        store = RetrievalStore(Path(tmp))
        vectors, _ = store.embed([c["chunk_id"] for c in chunks], [c["content_hash"] for c in chunks],
                                 [embed_text(c["title"], c["text"]) for c in chunks], embedder, 32)
        folder, _ = store.build_index(vectors, chunks, choose_spec(len(chunks)))
        index = VectorIndex(folder)
        texts = [q["question"] for q in questions]
        queries = embedder.encode(texts)
        ranked = {"dense": index.search(queries, 5)[1], "bm25": pad(index.lexical.search(texts, 5), 5), "hybrid": index.search(queries, 5, texts)[1]}
    relevant, _ = relevant_sets(questions, index.chunks)
    out = {"shape": shape, "chunks": len(chunks), "questions": len(questions)}
    for mode, ids in ranked.items():
        metrics = retrieval_metrics(ids, relevant, 5)
        out[mode] = (metrics["recall_at_5"], metrics["mrr_at_5"])
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("shapes", nargs="*", default=SHAPES)
    parser.add_argument("--build", type=Path, default=HERE / "build")
    args = parser.parse_args()
    from driftloop.models.embedding import load_embedder

    embedder = load_embedder("all-MiniLM-L6-v2", "cpu", "auto")
    results = [one_shape(s, args.build, embedder) for s in args.shapes]
    print("| shape | chunks | eval questions | dense recall@5 / MRR | BM25 | hybrid |")
    print("|---|---|---|---|---|---|")
    for r in results:
        cells = " | ".join(f"{r[m][0]:.3f} / {r[m][1]:.3f}" for m in ("dense", "bm25", "hybrid"))
        print(f"| {r['shape']} | {r['chunks']} | {r['questions']} | {cells} |")
    n = sum(r["questions"] for r in results)
    pooled = {m: sum(r[m][0] * r["questions"] for r in results) / n for m in ("dense", "bm25", "hybrid")}
    print(f"RESULT recall_at_5={pooled['hybrid']:.3f} baseline={pooled['dense']:.3f} ratio={pooled['hybrid'] / pooled['dense']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
