"""Embedding throughput: driftloop's path against plain SentenceTransformer.encode.

Same model, same chunk texts, same process. Also recall@10 of eval questions with
both sets of vectors, so a faster path that loses quality shows it.

    .venv/bin/python bench/embeddings.py [--chunks 1000] [--precision auto]
"""

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import corpus_chunks, eval_questions, machine, timer  # noqa: E402

from driftloop.models.embedding import load_embedder, resolve_embedding_model  # noqa: E402
from driftloop.retrieval.chunking import embed_text  # noqa: E402
from driftloop.retrieval.quality import relevant_sets, retrieval_metrics  # noqa: E402


def recall_at_10(vectors: np.ndarray, queries: np.ndarray, questions, chunks) -> float:
    ranked = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    relevant, _ = relevant_sets(questions, chunks)
    return retrieval_metrics(ranked, relevant, 10)["recall_at_10"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--chunks", type=int, default=1000)
    parser.add_argument("--model", default="all-MiniLM-L6-v2")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()

    from sentence_transformers import SentenceTransformer

    path = resolve_embedding_model(args.model)
    ours = load_embedder(args.model, "cpu", args.precision)
    docs, chunks = corpus_chunks(ours.tokenizer)
    # An even spread over the corpus, and every eval question's document kept in it.
    step = max(1, len(chunks) // args.chunks)
    chunks = chunks[::step][: args.chunks]
    kept_docs = {c["doc_id"] for c in chunks}
    questions = [q for q in eval_questions(docs, 2000) if q["doc_id"] in kept_docs][:300]
    texts = [embed_text(c["title"], c["text"]) for c in chunks]
    print(f"machine: {machine()}; {len(texts)} chunks, {len(questions)} questions; our precision: {ours.precision}")

    baseline = SentenceTransformer(path, device="cpu")
    baseline.encode(texts[:32])
    ours.encode(texts[:32], batch_size=args.batch_size)
    times = {}
    with timer(times, "baseline"):
        base_vectors = baseline.encode(texts, normalize_embeddings=True)
    with timer(times, "ours"):
        our_vectors = ours.encode(texts, batch_size=args.batch_size)
    base_rate, our_rate = len(texts) / times["baseline"], len(texts) / times["ours"]
    base_q = baseline.encode([q["question"] for q in questions], normalize_embeddings=True)
    our_q = ours.encode([q["question"] for q in questions], batch_size=args.batch_size)
    base_recall = recall_at_10(base_vectors, base_q, questions, chunks)
    our_recall = recall_at_10(our_vectors, our_q, questions, chunks)
    cosine = float((base_vectors * our_vectors).sum(axis=1).mean())
    print(f"baseline SentenceTransformer.encode: {base_rate:.1f} chunks/s, recall@10 {base_recall:.3f}")
    print(f"driftloop ({ours.precision}, batch {args.batch_size}): {our_rate:.1f} chunks/s, recall@10 {our_recall:.3f}, mean cosine to baseline {cosine:.4f}")
    print(f"recall@10 difference: {100 * (our_recall - base_recall):+.1f} points")
    print(f"RESULT embed_chunks_per_s={our_rate:.1f} baseline={base_rate:.1f} ratio={our_rate / base_rate:.2f}")


if __name__ == "__main__":
    main()
