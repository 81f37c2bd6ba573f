"""The generator engines side by side on evaluation's own work: the default corpus's eval
questions as RAG prompts (the template, 3 chunks of context each), greedy, the same
number of new tokens, answered in batches as `evaluation/eval_report` answers them.

Sides: `transformers` (driftloop's engine, in the precision `auto` picks here, prefix
cache on) and `llamacpp` (llama.cpp's server code in process, the `xllamacpp` wheel, on
the GGUF the base model was converted from, prompt cache on, one slot per batch row),
the same base model and prompts. Each side answers once to warm up, then the timed
rounds alternate; each round is the whole wall time of every question.

    python bench/engines.py [--questions 24] [--new-tokens 32] [--batch 8] [--rounds 3] [--precision auto]

An AVX2-only CPU, on a newer one: `ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2
python bench/engines.py --precision fp32` keeps torch to the AVX2 kernels and the
precision `auto` picks there (the llama.cpp wheel is built for AVX2 alone anyway).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import corpus_chunks, eval_questions, machine  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=24)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--precision", default="auto", help="transformers' precision (auto: bf16 where the CPU has fast bf16, else fp32)")
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "driftloop-bench-base"))
    args = parser.parse_args()

    from driftloop.engines import load_generator
    from driftloop.evaluation.generate import BASE
    from driftloop.models.generator import resolve_base_model
    from driftloop.prompts import load_prompt

    base = resolve_base_model("SmolLM2-135M-Instruct", Path(args.cache))
    sides = {name: load_generator(name, base.path, "cpu", precision=args.precision, slots=args.batch) for name in ("transformers", "llamacpp")}
    tokenizer = sides["transformers"].tokenizer
    docs, chunks = corpus_chunks(tokenizer)
    questions = eval_questions(docs, 5000)[: args.questions]
    template = load_prompt("rag.v1")
    by_doc: dict[str, list[str]] = {}
    for chunk in chunks:
        by_doc.setdefault(chunk["doc_id"], []).append(chunk["text"])
    prompts = [sides["transformers"].prompt_text(template, q["question"], by_doc.get(q["doc_id"], [])[:3]) for q in questions]
    ids = [str(n) for n in range(len(prompts))]

    def run(side) -> tuple[float, list[str]]:
        start = time.perf_counter()
        answers = []
        for first in range(0, len(prompts), args.batch):
            answers += side.answer(BASE, prompts[first : first + args.batch], ids[first : first + args.batch], args.new_tokens,
                                   batch_size=args.batch)
        return time.perf_counter() - start, [a.answer for a in answers]

    for side in sides.values():
        run(side)  # warm-up: kernels, and each engine's prompt cache holds what it would in a report
    times: dict[str, list[float]] = {name: [] for name in sides}
    texts: dict[str, list[str]] = {}
    for _ in range(args.rounds):
        for name, side in sides.items():
            seconds, texts[name] = run(side)
            times[name].append(seconds)
    same = sum(a == b for a, b in zip(texts["transformers"], texts["llamacpp"], strict=True))
    print(f"machine: {machine()}")
    print(f"{len(prompts)} questions, {args.new_tokens} new tokens, batch {args.batch}, {args.rounds} alternating rounds after a warm-up")
    for name, side in sides.items():
        median = statistics.median(times[name])
        print(f"  {name:<12} precision {side.precision:<10} median {median:6.2f} s  ({len(prompts) / median:.2f} answers/s)  rounds {times[name]}")
    print(f"  identical greedy answers on both engines: {same}/{len(prompts)}")
    ours, theirs = statistics.median(times["transformers"]), statistics.median(times["llamacpp"])
    print(f"RESULT answers_per_s={len(prompts) / ours:.3f} baseline={len(prompts) / theirs:.3f} ratio={theirs / ours:.2f}")


if __name__ == "__main__":
    main()
