"""Power of the promotion gate on the default corpus, measured with real models.

Two LoRA adapters of SmolLM2-135M-Instruct are trained with the pipeline's defaults but
fewer steps and shorter examples (a CPU budget), seeds 0 and 1: two equally good
versions, as a champion and its retrain are. Both, and the base model, answer the same
eval questions (a seeded sample of the default corpus' eval split) over one index
(all-MiniLM-L6-v2; the questions' own documents plus --index-docs others) through
evaluate_models. From the paired
per-question differences it reports each no-regression metric's SD, the questions needed
for the minimum detectable regression to equal the gate's tolerance (one-sided
alpha 0.05, power 0.80), and the gate's verdicts on random subsets of the equal pair.

    .venv/bin/python bench/gate_power.py [--questions 40] [--train-steps 8] [--max-len 256] [--index-docs 80] [--out FILE]
"""

import argparse
import hashlib
import json
import math
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import corpus_chunks, machine  # noqa: E402

TOLERANCE, RELATIVE_TOLERANCE = 0.05, 0.10  # the gate's defaults (assets/evaluation.py)
METRICS = ("semantic_similarity", "rouge_l")


def build_index(work: Path, embedder, keep_docs: set[str], extra_docs: int):
    """The eval questions' own documents plus an even spread of others (distractors): the
    whole corpus takes about 10 minutes to embed on a busy 2-core machine."""
    from driftloop.retrieval.chunking import embed_text
    from driftloop.retrieval.index import VectorIndex
    from driftloop.retrieval.store import RetrievalStore

    docs, chunks = corpus_chunks(embedder.tokenizer)
    others = [d["doc_id"] for d in docs if d["doc_id"] not in keep_docs]
    kept = keep_docs | set(others[:: max(1, len(others) // max(1, extra_docs))][:extra_docs])
    chunks = [c for c in chunks if c["doc_id"] in kept]
    store = RetrievalStore(work / "retrieval")
    texts = [embed_text(c["title"], c["text"]) for c in chunks]
    embeddings, _ = store.embed([c["chunk_id"] for c in chunks], [hashlib.sha256(t.encode()).hexdigest() for t in texts], texts, embedder, 16)
    folder, _ = store.build_index(embeddings, chunks)
    return VectorIndex(folder), len(chunks)


def train(base_path: str, qa_rows: list[dict], seed: int, steps: int, max_len: int, work: Path) -> tuple[Path, float]:
    from transformers import AutoTokenizer

    from driftloop.data.instructions import build_examples
    from driftloop.prompts import load_prompt
    from driftloop.training.data import encode_dataset
    from driftloop.training.loop import LoraSettings, train_lora

    tokenizer = AutoTokenizer.from_pretrained(base_path)
    items, _ = encode_dataset(build_examples(qa_rows, load_prompt("rag.v1")), tokenizer, max_len, "skip", 8)
    # The pipeline's LoraAdapterConfig defaults but for length (a CPU budget).
    settings = LoraSettings(max_steps=steps, batch_size=2, warmup_steps=3, learning_rate=2e-4, seed=seed, checkpoint_every=steps,
                            max_seq_length=max_len)
    started = time.perf_counter()
    model, _ = train_lora(base_path, items, settings, work / f"checkpoints-{seed}",
                          progress=lambda log, total: print(f"seed {seed} step {log.step}/{total} loss {log.loss:.3f}", flush=True))
    model.save_pretrained(work / f"adapter-{seed}")
    return work / f"adapter-{seed}", time.perf_counter() - started


def pair_figures(result: dict, challenger: str, reference: str) -> dict:
    import numpy as np

    from driftloop.evaluation.stats import log_ratio_sd, questions_needed

    rows = list(result["questions"].values())
    out = {}
    for metric in METRICS:
        diffs = np.array([r["scores"][challenger][metric] - r["scores"][reference][metric] for r in rows])
        sd = float(diffs.std(ddof=1))
        out[metric] = {"mean_diff": float(diffs.mean()), "sd_diff": sd, "questions_needed": questions_needed(sd, TOLERANCE)}
    nll = {m: [(r["scores"][m]["nll"], int(r["scores"][m]["nll_tokens"])) for r in rows] for m in (challenger, reference)}
    sd = log_ratio_sd(nll[challenger], nll[reference])
    ratio = result["models"][challenger]["perplexity"] / result["models"][reference]["perplexity"]
    out["perplexity"] = {"ratio": ratio, "sd_log_ratio": sd, "questions_needed": questions_needed(sd, math.log1p(RELATIVE_TOLERANCE))}
    return out


def subset_verdicts(result: dict, challenger: str, reference: str, sizes: list[int], draws: int = 100) -> dict:
    """How often the gate passes / finds inconclusive / fails the equal pair on n random questions."""
    from driftloop.evaluation.gate import GateRules, paired_evidence

    rows = list(result["questions"].values())
    rules = GateRules(floors={}, no_regression=("semantic_similarity", "rouge_l", "perplexity"), tolerance=TOLERANCE,
                      relative_tolerance=RELATIVE_TOLERANCE, min_questions=2, resamples=1000)
    rng = random.Random(0)
    out = {}
    for n in sizes:
        counts = {"passed": 0, "inconclusive": 0, "failed": 0}
        for _ in range(draws):
            sample = {str(i): row for i, row in enumerate(rng.sample(rows, n))}
            for evidence in paired_evidence(sample, challenger, reference, rules):
                counts[evidence.verdict] += 1
        out[n] = {k: round(v / (draws * len(rules.no_regression)), 3) for k, v in counts.items()}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=int, default=40)
    parser.add_argument("--train-steps", type=int, default=8)
    parser.add_argument("--max-len", type=int, default=256, help="training examples longer than this are skipped")
    parser.add_argument("--index-docs", type=int, default=80, help="documents indexed besides the eval questions' own")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    from driftloop.data.qa import derive_qa_pairs
    from driftloop.data.pydocs import python_docs
    from driftloop.evaluation.generate import Answerer
    from driftloop.evaluation.metrics import eval_items
    from driftloop.evaluation.run import evaluate_models
    from driftloop.models.embedding import load_embedder
    from driftloop.models.generator import resolve_base_model
    from driftloop.prompts import load_prompt

    timings = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        base = resolve_base_model("SmolLM2-135M-Instruct", ROOT / "artifacts" / "base_models")
        embedder = load_embedder("all-MiniLM-L6-v2", "cpu", "auto")
        qa_rows = [p.to_row() for p in derive_qa_pairs(python_docs())]
        items = eval_items(qa_rows, args.questions, seed=0)
        t0 = time.perf_counter()
        index, n_chunks = build_index(work, embedder, {i.doc_id for i in items}, args.index_docs)
        timings["index_s"] = time.perf_counter() - t0
        print(f"index: {n_chunks} chunks in {timings['index_s']:.0f}s", flush=True)
        adapters = {}
        for seed in (0, 1):
            adapters[f"seed{seed}"], timings[f"train_seed{seed}_s"] = train(base.path, qa_rows, seed, args.train_steps, args.max_len, work)
        answerer = Answerer(base.path, "cpu", precision="auto")
        t0 = time.perf_counter()
        result = evaluate_models(answerer, index, embedder, items, {"base": None, **adapters}, load_prompt("rag.v1"), k=3,
                                 max_new_tokens=args.max_new_tokens, batch_size=8, log=print)
        timings["evaluate_s"] = time.perf_counter() - t0
    n = len(items)
    figures = {
        "machine": machine(), "generator_precision": answerer.precision, "questions": n, "eval_split": sum(r["split"] == "eval" for r in qa_rows),
        "chunks": n_chunks, "index_docs_besides_eval": args.index_docs, "train_steps": args.train_steps, "train_max_len": args.max_len, "max_new_tokens": args.max_new_tokens,
        "alpha_one_sided": 0.05, "power": 0.80, "tolerance": TOLERANCE, "relative_tolerance": RELATIVE_TOLERANCE,
        "seconds_per_model_answer": timings["evaluate_s"] / (3 * n),
        "equal_pair_seed1_vs_seed0": pair_figures(result, "seed1", "seed0"),
        "adapter_vs_base_seed0": pair_figures(result, "seed0", "base"),
        "gate_on_equal_pair_subsets": subset_verdicts(result, "seed1", "seed0", [s for s in (8, 16, 24, 32, 48) if s <= n]),
        "timings_s": {k: round(v, 1) for k, v in timings.items()}, "total_s": round(time.perf_counter() - started, 1),
    }
    text = json.dumps(figures, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
