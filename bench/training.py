"""LoRA training throughput and peak memory: driftloop's loop against transformers.Trainer.

Same base model (SmolLM2-135M-Instruct), same examples (the default corpus's
instruction data, at most --max-len tokens), same LoRA config (r=8, alpha=16, q/k/v/o),
one epoch at batch 8. Each side runs in its own process so its peak RSS is its own.
Tokens are non-padding tokens.

    .venv/bin/python bench/training.py [--examples 80] [--max-len 256] [--repeats 2]
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))


def examples(tokenizer, n: int, max_len: int):
    from driftloop.data.instructions import build_examples
    from driftloop.data.pydocs import python_docs
    from driftloop.data.qa import derive_qa_pairs
    from driftloop.prompts import load_prompt
    from driftloop.training.data import encode_example

    rows = [p.to_row() for p in derive_qa_pairs(python_docs())]
    out = []
    for example in build_examples(rows, load_prompt("rag.v1")):
        item = encode_example(example, tokenizer)
        if len(item.input_ids) <= max_len:
            out.append(item)
        if len(out) == n:
            break
    return out


def base_path() -> str:
    from driftloop.models.generator import resolve_base_model

    return resolve_base_model("SmolLM2-135M-Instruct", ROOT / "artifacts" / "base_models").path


def run_side(side: str, n: int, max_len: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    path = base_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    items = examples(tokenizer, n, max_len)
    tokens = sum(len(x.input_ids) for x in items)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    ready_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if side == "baseline":
        from datasets import Dataset
        from peft import LoraConfig, get_peft_model
        from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

        peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], task_type="CAUSAL_LM"))
        data = Dataset.from_list([{"input_ids": x.input_ids, "attention_mask": [1] * len(x.input_ids), "labels": x.labels} for x in items])
        with tempfile.TemporaryDirectory() as out:
            args = TrainingArguments(out, per_device_train_batch_size=8, num_train_epochs=1, learning_rate=2e-4, report_to=[],
                                     save_strategy="no", logging_steps=1000, use_cpu=True, dataloader_num_workers=0, seed=0)
            trainer = Trainer(model=peft_model, args=args, train_dataset=data,
                              data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100))
            start = time.perf_counter()
            trainer.train()
            seconds = time.perf_counter() - start
        steps = trainer.state.global_step
    else:
        from driftloop.training.loop import LoraSettings, train_lora

        settings = LoraSettings(rank=8, alpha=16, learning_rate=2e-4, epochs=1, batch_size=8, max_seq_length=max_len, checkpoint_every=10_000,
                                micro_batch_tokens=int(os.environ.get("BENCH_MICRO_TOKENS", "0")))
        with tempfile.TemporaryDirectory() as out:
            _, result = train_lora(path, items, settings, Path(out), model=model)
        # The loop's own clock starts at its first step, as trainer.train() starts after the
        # model, tokenizer and LoRA layers exist.
        seconds = result.seconds
        steps = result.steps
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"side": side, "tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds, "steps": steps, "peak_rss_mb": peak_mb, "ready_rss_mb": ready_mb}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=80)
    parser.add_argument("--max-len", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2, help="runs per side, alternating; the best of each is reported")
    parser.add_argument("--side", choices=["baseline", "ours"])
    args = parser.parse_args()
    if args.side:
        print("JSON " + json.dumps(run_side(args.side, args.examples, args.max_len)))
        return
    from common import machine

    base_path()  # convert once, outside both timings
    # Alternating runs and keeping each side's best run takes out most of the noise a
    # shared 2-core machine adds; peak memory is the highest seen on that side.
    runs: dict[str, list[dict]] = {"baseline": [], "ours": []}
    for _ in range(args.repeats):
        for side in ("baseline", "ours"):
            out = subprocess.run([sys.executable, __file__, "--side", side, "--examples", str(args.examples), "--max-len", str(args.max_len)],
                                 capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
            line = next((ln for ln in out.stdout.splitlines() if ln.startswith("JSON ")), None)
            if line is None:
                raise SystemExit(f"{side} failed:\n{out.stderr[-3000:]}")
            runs[side].append(json.loads(line[5:]))
    results = {}
    for side, side_runs in runs.items():
        best = max(side_runs, key=lambda r: r["tokens_per_s"])
        results[side] = {**best, "peak_rss_mb": max(r["peak_rss_mb"] for r in side_runs), "all": [round(r["tokens_per_s"], 1) for r in side_runs]}
    print(f"machine: {machine()}; {args.examples} examples of at most {args.max_len} tokens, batch 8, LoRA r=8 on q/k/v/o; "
          f"best of {args.repeats} alternating runs per side")
    for side, label in (("baseline", "transformers.Trainer + peft (pads each batch to its longest)"), ("ours", "driftloop loop (length-grouped batches)")):
        r = results[side]
        print(f"{label}: {r['tokens_per_s']:.1f} tokens/s, {r['steps']} steps, {r['seconds']:.1f}s, peak RSS {r['peak_rss_mb']:.0f} MB ({r['ready_rss_mb']:.0f} MB before training); runs: {r['all']} tokens/s")
    ours, base = results["ours"], results["baseline"]
    print(f"peak memory ratio (ours/baseline): {ours['peak_rss_mb'] / base['peak_rss_mb']:.2f}")
    print(f"RESULT train_tokens_per_s={ours['tokens_per_s']:.1f} baseline={base['tokens_per_s']:.1f} ratio={ours['tokens_per_s'] / base['tokens_per_s']:.2f}")


if __name__ == "__main__":
    main()
