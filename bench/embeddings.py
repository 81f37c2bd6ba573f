"""Embedding throughput: driftloop's embedder against sentence-transformers at its best CPU setting.

Setup, once (the peer stack needs a transformers older than the product's, so it has its own venv):

    python3.11 -m venv .venv-embed-peers
    .venv-embed-peers/bin/pip install torch==2.13.0+cpu
    .venv-embed-peers/bin/pip install --no-deps -r bench/peers/embeddings.txt

Run, from the repository root, offline:

    export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 DO_NOT_TRACK=1
    flock /tmp/driftloop-bench.lock .venv/bin/python bench/embeddings.py [--chunks 1000] [--repeats 3]

Peer settings (bench/peers/embed_peer.py, in that venv): plain ST fp32 (torch), ST bf16
weights, ST backend="onnx" fp32, ONNX O3-optimised, ONNX dynamic int8 (the
export_dynamic_quantized_onnx_model config matching the CPU's flags), ST backend="openvino"
with f32 forced, OpenVINO at its CPU default (bf16 where the CPU has it), and OpenVINO static
int8 (export_static_quantized_openvino_model, calibrated on 300 corpus chunks). Every side
gets the same chunk and query texts (a JSON file), the same 2 threads (each library's default
on 2 cores; reported), a warm-up, its best batch size from a short sweep, and the median of
alternating timed runs of encoding all N chunks. Vectors come back as .npy so recall@10 and
cosine to plain fp32 ST are computed here, the same way for every setting. The baseline is the
fastest peer setting whose recall@10 is within 1 point of plain fp32 ST.
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import EmbedPeer, corpus_chunks, eval_questions, machine  # noqa: E402

from driftloop.models.embedding import load_embedder, resolve_embedding_model  # noqa: E402
from driftloop.retrieval.chunking import embed_text  # noqa: E402
from driftloop.retrieval.quality import relevant_sets, retrieval_metrics  # noqa: E402

PEERS = ("st-fp32", "st-bf16", "onnx-fp32", "onnx-o3", "onnx-int8", "openvino-fp32", "openvino-default", "openvino-int8")
REFERENCE = "st-fp32"


def recall_at_10(vectors: np.ndarray, queries: np.ndarray, relevant) -> float:
    ranked = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    return retrieval_metrics(ranked, relevant, 10)["recall_at_10"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--chunks", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", default="all-MiniLM-L6-v2")
    parser.add_argument("--precision", default="auto", help="driftloop's embedding precision setting")
    parser.add_argument("--batch-sizes", default="8,16,32,64", help="swept per side on --sweep-chunks; the fastest is timed")
    parser.add_argument("--sweep-chunks", type=int, default=128)
    parser.add_argument("--peers", default=",".join(PEERS))
    parser.add_argument("--peer-python", default=".venv-embed-peers/bin/python")
    parser.add_argument("--cache", default="artifacts/bench-embed-peers", help="peer exports' cache (never the model package)")
    args = parser.parse_args()
    peers = args.peers.split(",")
    if REFERENCE not in peers:
        peers.insert(0, REFERENCE)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]

    path = resolve_embedding_model(args.model)
    ours = load_embedder(args.model, "cpu", args.precision)
    docs, chunks = corpus_chunks(ours.tokenizer)
    total = len(chunks)
    # An even spread over the corpus, and every eval question's document kept in it.
    step = max(1, len(chunks) // args.chunks)
    chunks = chunks[::step][: args.chunks]
    kept_docs = {c["doc_id"] for c in chunks}
    questions = [q for q in eval_questions(docs, 2000) if q["doc_id"] in kept_docs][:300]
    texts = [embed_text(c["title"], c["text"]) for c in chunks]
    queries = [q["question"] for q in questions]
    relevant, _ = relevant_sets(questions, chunks)
    # The sweep uses an even spread too, so its lengths match the timed set's.
    sweep = texts[:: max(1, len(texts) // args.sweep_chunks)][: args.sweep_chunks]
    print(f"machine: {machine()}")
    print(f"{len(texts)} of {total} corpus chunks, {len(questions)} questions; ours: driftloop embedder {ours.describe()}; "
          f"torch threads {torch.get_num_threads()}")

    work = Path(tempfile.mkdtemp(prefix="bench-embed-"))
    (work / "texts.json").write_text(json.dumps({"chunks": texts, "queries": queries, "sweep": sweep}))
    cache = Path(args.cache).resolve()
    peer = EmbedPeer(args.peer_python, path, work / "texts.json", cache, work / "peer.log")
    for setting in peers:
        reply = peer.ask(cmd="load", setting=setting)
        print(f"  loaded {setting} in {reply['load_s']:.1f} s: {reply['info']}")

    def run_ours(batch: list[str], batch_size: int) -> tuple[float, np.ndarray]:
        start = time.perf_counter()
        vectors = ours.encode(batch, batch_size=batch_size)
        return time.perf_counter() - start, vectors

    def run_peer(setting: str, what: str, batch_size: int, save: Path | None = None) -> float:
        reply = peer.ask(cmd="encode", setting=setting, what=what, batch_size=batch_size, save=str(save) if save else None)
        return reply["seconds"]

    sides = ["ours", *peers]
    best_batch = {}
    for side in sides:
        seconds = {}
        for batch_size in [batch_sizes[0], *batch_sizes]:  # the first pass is the warm-up
            seconds[batch_size] = run_ours(sweep, batch_size)[0] if side == "ours" else run_peer(side, "sweep", batch_size)
        best_batch[side] = min(seconds, key=seconds.get)
        rates = ", ".join(f"batch {b}: {len(sweep) / s:.1f}/s" for b, s in seconds.items())
        print(f"  sweep {side}: {rates} -> batch {best_batch[side]}")

    times = {side: [] for side in sides}
    vectors, query_vectors = {}, {}
    for round_no in range(args.repeats):
        for side in sides if round_no % 2 == 0 else reversed(sides):
            if side == "ours":
                seconds, out = run_ours(texts, best_batch[side])
                vectors.setdefault(side, out)
            else:
                seconds = run_peer(side, "chunks", best_batch[side], work / f"{side}.npy" if round_no == 0 else None)
            times[side].append(seconds)
    for side in peers:
        vectors[side] = np.load(work / f"{side}.npy")
        run_peer(side, "queries", best_batch[side], work / f"{side}-q.npy")
        query_vectors[side] = np.load(work / f"{side}-q.npy")
    query_vectors["ours"] = ours.encode(queries, batch_size=best_batch["ours"])
    peer.close()

    rate = {side: len(texts) / statistics.median(times[side]) for side in sides}
    recall = {side: recall_at_10(vectors[side], query_vectors[side], relevant) for side in sides}
    unit = {side: v / np.linalg.norm(v.astype(np.float64), axis=1, keepdims=True) for side, v in vectors.items()}
    cosine = {side: float((unit[side] * unit[REFERENCE]).sum(axis=1).mean()) for side in sides}
    print(f"\n{'setting':<18} {'batch':>5} {'chunks/s':>9} {'runs (s)':<22} {'recall@10':>9} {'cos to fp32':>11}")
    for side in sides:
        runs = " ".join(f"{t:.1f}" for t in times[side])
        print(f"{side:<18} {best_batch[side]:>5} {rate[side]:>9.1f} {runs:<22} {recall[side]:>9.3f} {cosine[side]:>11.5f}")
    kept = [s for s in peers if abs(recall[s] - recall[REFERENCE]) <= 0.01]
    best = max(kept, key=rate.get)
    print(f"\nours recall@10 {100 * (recall['ours'] - recall[REFERENCE]):+.1f} points vs plain fp32 ST; "
          f"peer settings within 1 point: {', '.join(kept)}; best: {best}")
    print(f"ours vs plain fp32 ST ({REFERENCE}): ratio={rate['ours'] / rate[REFERENCE]:.2f}")
    print(f"RESULT embed_chunks_per_s={rate['ours']:.1f} baseline={rate[best]:.1f} ratio={rate['ours'] / rate[best]:.2f}")


if __name__ == "__main__":
    main()
