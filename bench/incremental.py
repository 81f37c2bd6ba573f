"""Incremental retrieval refresh: after 1% of documents change, re-chunking, embedding
and indexing cost against a full run from an empty cache, in the same process.

    .venv/bin/python bench/incremental.py [--docs 0 (all)] [--changed 0.01]
"""

import argparse
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, timer  # noqa: E402

from driftloop.data.pydocs import python_docs  # noqa: E402
from driftloop.data.records import content_hash  # noqa: E402
from driftloop.models.embedding import load_embedder  # noqa: E402
from driftloop.retrieval.chunking import chunk_document, embed_text  # noqa: E402
from driftloop.retrieval.store import RetrievalStore  # noqa: E402


def refresh(store: RetrievalStore, docs, embedder) -> tuple[int, int]:
    chunks = []
    for doc in docs:
        cs, _ = chunk_document(doc, embedder.tokenizer)
        chunks += [c.to_row() for c in cs]
    embeddings, stats = store.embed(
        [c["chunk_id"] for c in chunks], [c["content_hash"] for c in chunks],
        [embed_text(c["title"], c["text"]) for c in chunks], embedder, batch_size=16,
    )
    store.build_index(embeddings, chunks)
    return stats.embedded, stats.total


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--docs", type=int, default=0, help="0: the whole default corpus")
    parser.add_argument("--changed", type=float, default=0.01)
    args = parser.parse_args()
    embedder = load_embedder("all-MiniLM-L6-v2", "cpu", "auto")
    embedder.encode(["warm up"])
    docs = [d.to_row() for d in python_docs()]
    docs = docs[: args.docs] if args.docs else docs
    rng = random.Random(0)
    changed = rng.sample(range(len(docs)), max(1, round(len(docs) * args.changed)))
    edited = [dict(d) for d in docs]
    for i in changed:
        edited[i]["text"] += "\n\nThis paragraph was added to the document after the first run."
        edited[i]["content_hash"] = content_hash(edited[i]["text"])

    times = {}
    with tempfile.TemporaryDirectory() as root:
        store = RetrievalStore(Path(root))
        with timer(times, "full"):
            full_embedded, total = refresh(store, docs, embedder)
        with timer(times, "incremental"):
            inc_embedded, _ = refresh(store, edited, embedder)
    share = times["incremental"] / times["full"]
    print(f"machine: {machine()}; {len(docs)} documents, {len(changed)} changed ({args.changed:.0%})")
    print(f"full run: {full_embedded}/{total} chunks embedded in {times['full']:.1f}s")
    print(f"incremental: {inc_embedded} chunks embedded in {times['incremental']:.2f}s = {share:.1%} of the full run (goal: at most 5%)")
    print(f"RESULT incremental_refresh_s={times['incremental']:.2f} baseline={times['full']:.1f} ratio={times['full'] / times['incremental']:.1f}")


if __name__ == "__main__":
    main()
