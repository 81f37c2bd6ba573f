"""The router in front of the LLM on a mixed replay: how much is answered without
generation, at what quality, in how much time, against the same service unrouted.

Corpus: --docs documents spread over the default corpus (Python's docs) or a folder
(--source, for instance a shape of bench/corpora), chunked and
indexed as the pipeline does (all-MiniLM-L6-v2, FAISS + BM25, k=3); questions derived as
data/qa_pairs derives them, split by document. The router is trained as `serving/router`
trains it (training split, driftloop's written out-of-scope questions) and held out as it
is evaluated. The replay: --in-scope held-out questions and the 60 held-out written
out-of-scope questions, shuffled.

Unrouted: every question retrieved and answered by SmolLM2-135M-Instruct (greedy,
--max-new-tokens, batches of 8, the rag.v1 prompt). Routed: every question retrieved and
routed; the `rag` path generates exactly as unrouted does (the same prompts in the same
batches, timed again), the other two answer without generation. Both timed over the whole
replay, after a warm-up batch. Quality: token F1 and ROUGE-L against the reference answer
on in-scope questions; on out-of-scope questions, the share declined (the router's reply,
or a generated refusal).

    .venv/bin/python bench/router.py [--docs 400] [--in-scope 100] [--max-new-tokens 64] [--source DIR]
"""

import argparse
import hashlib
import os
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
for _key, _value in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "DO_NOT_TRACK": "1",
                     "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(_key, _value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=400)
    parser.add_argument("--in-scope", type=int, default=100)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--source", default="", help="a folder of documents (bench/corpora/build/<shape>) instead of Python's docs")
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "bench-router")
    args = parser.parse_args()

    import numpy as np
    from rouge_score import rouge_scorer

    from common import corpus_chunks, machine
    from driftloop.data.qa import derive_qa_pairs
    from driftloop.data.records import Document
    from driftloop.evaluation.generate import Answerer
    from driftloop.evaluation.metrics import REFUSAL
    from driftloop.models.embedding import load_embedder
    from driftloop.models.generator import resolve_base_model
    from driftloop.prompts import load_prompt
    from driftloop.retrieval.chunking import embed_text
    from driftloop.retrieval.index import VectorIndex
    from driftloop.retrieval.store import RetrievalStore
    from driftloop.routing import OUT_OF_SCOPE_REPLY, evaluate_router, retrieve, token_f1, train_router, written_out_of_scope

    print(f"machine: {machine()}")
    embedder = load_embedder("all-MiniLM-L6-v2", "cpu", "auto")
    if args.source:
        from driftloop.data.corpus import ingest
        from driftloop.retrieval.chunking import chunk_document

        docs = [d.to_row() for d in ingest(args.source).documents]
        chunks = [c.to_row() for d in docs for c in chunk_document(d, embedder.tokenizer)[0]]
    else:
        docs, chunks = corpus_chunks(embedder.tokenizer)
    kept_docs = docs[:: max(1, len(docs) // args.docs)][: args.docs]
    kept = {d["doc_id"] for d in kept_docs}
    chunks = [c for c in chunks if c["doc_id"] in kept]
    store = RetrievalStore(args.work / "retrieval")
    texts = [embed_text(c["title"], c["text"]) for c in chunks]
    embeddings, _ = store.embed([c["chunk_id"] for c in chunks], [hashlib.sha256(t.encode()).hexdigest() for t in texts], texts, embedder, 16)
    index = VectorIndex(store.build_index(embeddings, chunks)[0])
    pairs = derive_qa_pairs(Document(d["doc_id"], d["uri"], d["title"], d["format"], d["text"], d["content_hash"]) for d in kept_docs)
    train = [p for p in pairs if p.split == "train"][:2000]
    held = [p for p in pairs if p.split == "eval"]
    print(f"corpus: {len(kept_docs)} documents, {len(chunks)} chunks; questions: {len(train)} training, {len(held)} held out")

    def seen(questions):
        return retrieve(embedder, index, questions, 3)

    router, counts = train_router(seen([p.question for p in train]), [p.answer for p in train], seen(written_out_of_scope("train")),
                                  "all-MiniLM-L6-v2", 3)
    figures = evaluate_router(router, seen([p.question for p in held]), [p.answer for p in held], seen(written_out_of_scope("eval")))
    print(f"router trained on {counts}; held out: {figures}")

    rng = random.Random(0)
    asked = rng.sample(held, min(args.in_scope, len(held)))
    replay = [(p.question, p.answer) for p in asked] + [(q, None) for q in written_out_of_scope("eval")]
    rng.shuffle(replay)
    base = resolve_base_model("SmolLM2-135M-Instruct", ROOT / "artifacts" / "base_models")
    answerer = Answerer(base.path, "cpu")
    template = load_prompt("rag.v1")

    def generate(items):
        prompts = [answerer.prompt_text(template, q, [c["text"] for c in got]) for q, got in items]
        return [a.answer.strip() for a in answerer.answer("base", prompts, [str(i) for i in range(len(prompts))], args.max_new_tokens)]

    warm = seen([replay[0][0]])
    generate([(replay[0][0], warm.chunks[0])] * 8)

    start = time.perf_counter()
    got = seen([q for q, _ in replay])
    unrouted = generate(list(zip([q for q, _ in replay], got.chunks, strict=True)))
    unrouted_s = time.perf_counter() - start

    start = time.perf_counter()
    got = seen([q for q, _ in replay])
    routes = [router.route(q, got.vectors[i], got.chunks[i]) for i, (q, _) in enumerate(replay)]
    todo = [i for i, r in enumerate(routes) if r.path == "rag"]
    generated = dict(zip(todo, generate([(replay[i][0], got.chunks[i]) for i in todo]), strict=True))
    routed = [generated[i] if r.path == "rag" else (r.passage if r.path == "extractive" else OUT_OF_SCOPE_REPLY)
              for i, r in enumerate(routes)]
    routed_s = time.perf_counter() - start

    scorer = rouge_scorer.RougeScorer(["rougeL"])

    def quality(answers):
        inside = [(a, ref) for a, (_, ref) in zip(answers, replay, strict=True) if ref is not None]
        outside = [a for a, (_, ref) in zip(answers, replay, strict=True) if ref is None]
        return {"token_f1": round(float(np.mean([token_f1(a, r) for a, r in inside])), 4),
                "rouge_l": round(float(np.mean([scorer.score(r, a)["rougeL"].fmeasure for a, r in inside])), 4),
                "out_of_scope_declined": round(sum(a == OUT_OF_SCOPE_REPLY or bool(REFUSAL.search(a)) for a in outside) / len(outside), 4)}

    paths = {p: sum(r.path == p for r in routes) for p in ("rag", "extractive", "out_of_scope")}
    without = (len(routes) - paths["rag"]) / len(routes)
    ours, theirs = quality(routed), quality(unrouted)
    print(f"replay: {len(replay)} requests ({len(asked)} in scope, {len(replay) - len(asked)} out of scope); paths {paths}")
    print("| service | seconds | answered without generation | token F1 (in scope) | ROUGE-L (in scope) | out of scope declined |")
    print("|---|---|---|---|---|---|")
    print(f"| routed | {routed_s:.1f} | {without:.1%} | {ours['token_f1']} | {ours['rouge_l']} | {ours['out_of_scope_declined']:.0%} |")
    print(f"| unrouted | {unrouted_s:.1f} | 0% | {theirs['token_f1']} | {theirs['rouge_l']} | {theirs['out_of_scope_declined']:.0%} |")
    print(f"RESULT replay_seconds={routed_s:.1f} baseline={unrouted_s:.1f} ratio={unrouted_s / routed_s:.2f}")


if __name__ == "__main__":
    main()
