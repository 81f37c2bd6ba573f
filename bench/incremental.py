"""Incremental retrieval refresh: after 1% of documents change, driftloop's refresh (chunk,
embed only what changed, index) against what a user without it runs: the whole edited corpus
re-embedded by sentence-transformers at its best CPU setting, then the same index build.

Setup of the peer venv: see bench/embeddings.py. Run, from the repository root, offline:

    flock /tmp/driftloop-bench.lock .venv/bin/python bench/incremental.py [--changed 0.01] [--peer-setting openvino-default]

Ours: `RetrievalStore.embed` + `build_index` with the product's embedder (`auto`), first on the
original corpus from an empty cache (the run that fills it; reported, not the baseline), then on
the edited corpus. Peer: a fresh store, every chunk of the edited corpus embedded by
bench/peers/embed_peer.py at --peer-setting (by default OpenVINO at its CPU default, which
bench/embeddings.py measured level with the fastest setting, static int8, and which needs no
calibration set), the same index build. Both sides are timed from the edited
documents to a published index, chunking included, after a warm-up encode on each side; median
of --repeats alternating runs. The two indexes must hold the same chunks in the same order,
with vectors at a mean cosine of at least 0.99.
"""

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import EmbedPeer, machine  # noqa: E402

from driftloop.data.pydocs import python_docs  # noqa: E402
from driftloop.data.records import content_hash  # noqa: E402
from driftloop.models.embedding import load_embedder, resolve_embedding_model  # noqa: E402
from driftloop.retrieval.chunking import chunk_document, embed_text  # noqa: E402
from driftloop.retrieval.store import RetrievalStore  # noqa: E402


class PeerEncoder:
    """The peer process behind the store's encoder interface (fingerprint, precision, encode)."""

    def __init__(self, peer: EmbedPeer, setting: str, dimension: int, workdir: Path) -> None:
        self.peer, self.setting, self.dimension, self.workdir = peer, setting, dimension, workdir
        self.fingerprint, self.precision = f"peer-{setting}", setting
        self.encode_seconds = 0.0

    def encode(self, texts, batch_size: int, progress=None) -> np.ndarray:
        (self.workdir / "texts.json").write_text(json.dumps({"chunks": list(texts)}))
        reply = self.peer.ask(cmd="encode", setting=self.setting, what="chunks", batch_size=batch_size,
                              save=str(self.workdir / "out.npy"), texts=str(self.workdir / "texts.json"))
        self.encode_seconds = reply["seconds"]
        return np.load(self.workdir / "out.npy")

    def describe(self) -> dict:
        return {"peer": self.setting}


def chunk_rows(docs, tokenizer) -> list[dict]:
    chunks = []
    for doc in docs:
        cs, _ = chunk_document(doc, tokenizer)
        chunks += [c.to_row() for c in cs]
    return chunks


def refresh(store: RetrievalStore, docs, embedder, tokenizer, batch_size: int):
    chunks = chunk_rows(docs, tokenizer)
    embeddings, stats = store.embed(
        [c["chunk_id"] for c in chunks], [c["content_hash"] for c in chunks],
        [embed_text(c["title"], c["text"]) for c in chunks], embedder, batch_size=batch_size,
    )
    folder, _ = store.build_index(embeddings, chunks)
    return embeddings, stats, folder


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--docs", type=int, default=0, help="0: the whole default corpus")
    parser.add_argument("--changed", type=float, default=0.01)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--peer-setting", default="openvino-default", help="an embed_peer.py setting (openvino-int8 would calibrate on the warm-up text only)")
    parser.add_argument("--peer-batch", type=int, default=16)
    parser.add_argument("--peer-python", default=".venv-embed-peers/bin/python")
    parser.add_argument("--cache", default="artifacts/bench-embed-peers")
    args = parser.parse_args()
    embedder = load_embedder("all-MiniLM-L6-v2", "cpu", "auto")
    tokenizer = embedder.tokenizer
    embedder.encode(["warm up"] * 16)
    docs = [d.to_row() for d in python_docs()]
    docs = docs[: args.docs] if args.docs else docs
    rng = random.Random(0)
    changed = rng.sample(range(len(docs)), max(1, round(len(docs) * args.changed)))
    edited = [dict(d) for d in docs]
    for i in changed:
        edited[i]["text"] += "\n\nThis paragraph was added to the document after the first run."
        edited[i]["content_hash"] = content_hash(edited[i]["text"])

    work = Path(tempfile.mkdtemp(prefix="bench-incremental-"))
    (work / "texts.json").write_text('{"chunks": ["warm up"]}')
    peer = EmbedPeer(args.peer_python, resolve_embedding_model("all-MiniLM-L6-v2"), work / "texts.json", Path(args.cache).resolve(), work / "peer.log")
    peer.ask(cmd="load", setting=args.peer_setting)
    peer_encoder = PeerEncoder(peer, args.peer_setting, embedder.dimension, work)
    warm = [embed_text(c["title"], c["text"]) for c in chunk_rows(edited[:20], tokenizer)]
    peer_encoder.encode(warm, args.peer_batch)

    ours_s, peer_s, first = [], [], []
    for round_no in range(args.repeats):
        for side in ("ours", "peer") if round_no % 2 == 0 else ("peer", "ours"):
            root = Path(tempfile.mkdtemp(dir=work))
            store = RetrievalStore(root)
            if side == "ours":
                start = time.perf_counter()
                _, full_stats, _ = refresh(store, docs, embedder, tokenizer, 16)
                first.append(time.perf_counter() - start)
                start = time.perf_counter()
                ours_set, ours_stats, ours_index = refresh(store, edited, embedder, tokenizer, 16)
                ours_s.append(time.perf_counter() - start)
            else:
                start = time.perf_counter()
                peer_set, peer_stats, peer_index = refresh(store, edited, peer_encoder, tokenizer, args.peer_batch)
                peer_s.append(time.perf_counter() - start)
    peer.close()

    same_chunks = (ours_index / "chunks.jsonl").read_text() == (peer_index / "chunks.jsonl").read_text()
    a, b = np.asarray(ours_set.vectors, np.float64), np.asarray(peer_set.vectors, np.float64)
    cosine = (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    ours, base = statistics.median(ours_s), statistics.median(peer_s)
    print(f"machine: {machine()}; {len(docs)} documents, {len(changed)} changed ({args.changed:.0%}); ours: {embedder.describe()}; "
          f"peer: sentence-transformers {args.peer_setting}, batch {args.peer_batch}; median of {args.repeats} alternating runs")
    print(f"ours, first run from an empty cache: {full_stats.embedded}/{full_stats.total} chunks embedded, {statistics.median(first):.1f}s")
    print(f"ours, after the change: {ours_stats.embedded}/{ours_stats.total} chunks embedded, {ours:.2f}s (runs {[round(x, 2) for x in ours_s]}) "
          f"= {ours / statistics.median(first):.1%} of our own first run")
    print(f"peer, whole edited corpus re-embedded: {peer_stats.embedded}/{peer_stats.total} chunks, {base:.1f}s "
          f"(runs {[round(x, 1) for x in peer_s]}; encoding alone {peer_encoder.encode_seconds:.1f}s)")
    print(f"same index contents: chunks and order {'identical' if same_chunks else 'DIFFER'}; "
          f"vector cosine ours vs peer mean {cosine.mean():.5f}, min {cosine.min():.5f}")
    if not same_chunks or cosine.mean() < 0.99:
        raise SystemExit("the two indexes differ: the comparison is void")
    print(f"RESULT incremental_refresh_s={ours:.2f} baseline={base:.1f} ratio={base / ours:.1f}")


if __name__ == "__main__":
    main()
