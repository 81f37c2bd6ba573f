"""LoRA training throughput and peak memory: driftloop's loop against transformers.Trainer at its best.

Both sides train the same base model (SmolLM2-135M-Instruct) on the same examples (the
default corpus's instruction data, at most --max-len tokens each, one epoch) with the same
LoRA (r=8, alpha=16, dropout 0.05, q/k/v/o), AdamW at 2e-4 with a cosine schedule and no
warm-up, gradient clipping at 1.0, seed 0, the same number of optimizer steps and the same
examples per step on average, and the same precision policy: bf16 autocast on a CPU with
native bf16, fp32 elsewhere.

driftloop packs each step to a token budget (--batch rows at the longest length), so its
step count is fixed by its plan; the peer gets that many steps at N/steps examples per
step. Its settings are the fastest found for it on CPU (see PEERS).

Each side runs in its own process: an in-process warm-up of two optimizer steps on a
separately loaded model, then the timed call (the whole `train_lora` call, or the whole
`trainer.train()`), with the peak RSS counter reset just before it. Runs alternate; the
median of --repeats runs per side is reported. Tokens are non-padding tokens.

    .venv/bin/python bench/training.py [--examples 120] [--max-len 256] [--repeats 3] [--naive]
"""

import argparse
import ctypes
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

LORA = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.05, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}
LR, MAX_GRAD_NORM, SEED = 2e-4, 1.0, 0

# The peer's settings: "best" is its fastest honest setting on this benchmark, chosen by
# measuring each documented CPU speed setting alone (--peer NAME reruns one; see
# BENCHMARKS.md). "naive" is the untuned Trainer the first version of this benchmark ran.
BEST = {"bf16": "native", "train_sampling_strategy": "group_by_length", "flatten": False, "dataloader_num_workers": 0,
        "torch_compile": False, "gradient_accumulation_steps": 2}
PEERS = {
    "best": BEST,
    "naive": {**BEST, "bf16": False, "train_sampling_strategy": "random", "gradient_accumulation_steps": 1},
    "no-accum": {**BEST, "gradient_accumulation_steps": 1},
    "fp32-grouped": {**BEST, "bf16": False},
    # Padding-free: SDPA keeps the packed rows apart (block-diagonal mask) only with use_cache=False.
    "flatten": {**BEST, "flatten": True},
    "compile": {**BEST, "torch_compile": True},
    "workers": {**BEST, "dataloader_num_workers": 1},
    "accum4": {**BEST, "gradient_accumulation_steps": 4},
}


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


def our_steps(items, batch: int) -> int:
    """The optimizer steps driftloop's loop plans for one epoch (its own batching)."""
    from driftloop.training.data import length_grouped_batches

    return len(length_grouped_batches(items, batch * max(len(x.input_ids) for x in items), SEED, 0))


def matched_size(items, batch: int, accum: int) -> tuple[int, int]:
    """The largest example count <= len(items) whose step count divides it into steps of a
    whole number of the peer's micro-batches: (examples, steps)."""
    for n in range(len(items), 0, -1):
        steps = our_steps(items[:n], batch)
        if n % (steps * accum) == 0:
            return n, steps
    raise ValueError("no example count gives whole batches")


def reset_peak() -> None:
    # Writing 5 to clear_refs resets the kernel's peak-RSS mark (VmHWM) for this process.
    Path("/proc/self/clear_refs").write_text("5")


def rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def load(path: str):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.config.use_cache = False  # training needs no KV cache; both sides run without one
    return model


def eval_loss(model, items, pad_id: int, bf16: bool) -> float:
    """Mean answer-token loss over all training examples, the same code for both sides."""
    import torch

    from driftloop.training.data import collate

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for i in range(0, len(items), 8):
            rows = items[i : i + 8]
            n = sum(x.n_predicted for x in rows)
            total += float(model(**collate(rows, pad_id)).loss) * n
            count += n
    return total / count


def run_ours(path, items, steps: int, batch: int, max_len: int, warmup: bool):
    from driftloop.training.loop import LoraSettings, train_lora

    settings = LoraSettings(rank=LORA["r"], alpha=LORA["lora_alpha"], dropout=LORA["lora_dropout"], target_modules=tuple(LORA["target_modules"]),
                            learning_rate=LR, schedule="cosine", warmup_steps=0, epochs=1, batch_size=batch, max_seq_length=max_len,
                            max_grad_norm=MAX_GRAD_NORM, seed=SEED, checkpoint_every=10_000)
    if warmup:
        with tempfile.TemporaryDirectory() as out:
            train_lora(path, items, replace(settings, max_steps=2), Path(out), model=load(path))
        return None
    model = load(path)
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        peft_model, result = train_lora(path, items, settings, Path(out), model=model)
        seconds = time.perf_counter() - start
    assert result.steps == steps, (result.steps, steps)
    losses = [h.loss for h in result.history]
    described = {**asdict(settings), "loop": "driftloop.training.loop.train_lora", "precision": f"{result.precision} ({'autocast, frozen linears stored bf16' if result.precision == 'bf16' else 'fp32'})",
                 "batching": f"length-grouped, token budget {batch} x longest", "micro_batch_tokens": "auto (512 on CPU in fp32, 1024 in bf16)",
                 "lean_activations": settings.lean_activations, "loss": "answer tokens only through the output layer"}
    return peft_model, seconds, losses, result.precision == "bf16", described


def run_peer(path, items, steps: int, peer: str, warmup: bool):
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer, DataCollatorForSeq2Seq, DataCollatorWithFlattening, Trainer, TrainingArguments

    from driftloop.models.hardware import cpu_has_fast_bf16, physical_cores

    cfg = PEERS[peer]
    bf16 = cpu_has_fast_bf16() if cfg["bf16"] == "native" else bool(cfg["bf16"])
    accum = cfg["gradient_accumulation_steps"]
    per_step = len(items) // steps
    assert per_step * steps == len(items) and per_step % accum == 0, (len(items), steps, accum)  # every example, every step whole
    torch.set_num_threads(physical_cores())  # the same threads driftloop's loop sets
    tokenizer = AutoTokenizer.from_pretrained(path)
    data = Dataset.from_list([{"input_ids": x.input_ids, "attention_mask": [1] * len(x.input_ids), "labels": x.labels} for x in items])
    if cfg["flatten"]:
        data = data.remove_columns("attention_mask")
        collator = DataCollatorWithFlattening()
    else:
        collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
    arguments = {"per_device_train_batch_size": per_step // accum, "gradient_accumulation_steps": accum, "num_train_epochs": 1,
                 "max_steps": 2 if warmup else steps, "learning_rate": LR, "lr_scheduler_type": "cosine", "warmup_steps": 0,
                 "weight_decay": 0.0, "max_grad_norm": MAX_GRAD_NORM, "optim": "adamw_torch", "bf16": bf16,
                 "train_sampling_strategy": cfg["train_sampling_strategy"], "dataloader_num_workers": cfg["dataloader_num_workers"],
                 "torch_compile": cfg["torch_compile"], "use_cpu": True, "seed": SEED, "logging_steps": 1, "save_strategy": "no",
                 "report_to": [], "disable_tqdm": True}
    model = get_peft_model(load(path), LoraConfig(**LORA, task_type="CAUSAL_LM"))
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(model=model, args=TrainingArguments(out, **arguments), train_dataset=data, data_collator=collator)
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
    if warmup:
        return None
    assert trainer.state.global_step == steps, (trainer.state.global_step, steps)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    described = {"trainer": "transformers.Trainer + peft", "precision": "bf16 (autocast via accelerate)" if bf16 else "fp32",
                 "collator": type(collator).__name__, "use_cache": False, "threads": physical_cores(), **arguments}
    return model, seconds, losses, bf16, described


def run_side(side: str, peer: str, n: int, max_len: int, batch: int) -> dict:
    import torch
    from transformers import AutoTokenizer

    torch.manual_seed(SEED)
    path = base_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    items = examples(tokenizer, n, max_len)
    n, steps = matched_size(items, batch, PEERS[peer]["gradient_accumulation_steps"])
    items = items[:n]
    run = (lambda warmup: run_ours(path, items, steps, batch, max_len, warmup)) if side == "ours" else (lambda warmup: run_peer(path, items, steps, peer, warmup))
    run(True)
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand the warm-up's freed heap back, so neither side's peak carries it
    reset_peak()
    ready_mb = rss_mb("VmRSS")
    model, seconds, losses, bf16, described = run(False)
    peak_mb = rss_mb("VmHWM")
    last = max(2, steps // 4)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    tokens = sum(len(x.input_ids) for x in items)
    return {"side": side if side == "ours" else f"peer-{peer}", "examples": n, "tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds,
            "steps": steps, "peak_rss_mb": peak_mb, "ready_rss_mb": ready_mb, "losses": losses, "last_k": last,
            "final_loss": statistics.fmean(losses[-last:]), "eval_loss": eval_loss(model, items, pad_id, bf16), "settings": described}


def launch(side: str, peer: str, args) -> dict:
    command = [sys.executable, __file__, "--side", side, "--peer", peer, "--examples", str(args.examples), "--max-len", str(args.max_len), "--batch", str(args.batch)]
    out = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("JSON ")), None)
    if line is None:
        raise SystemExit(f"{side} failed:\n{out.stderr[-3000:]}")
    return json.loads(line[5:])


def summary(label: str, side_runs: list[dict]) -> dict:
    r = side_runs[0]
    tps = [x["tokens_per_s"] for x in side_runs]
    med = {"tokens_per_s": statistics.median(tps), "seconds": statistics.median(x["seconds"] for x in side_runs),
           "peak_rss_mb": max(x["peak_rss_mb"] for x in side_runs), "final_loss": statistics.median(x["final_loss"] for x in side_runs),
           "eval_loss": statistics.median(x["eval_loss"] for x in side_runs)}
    print(f"{label}: {med['tokens_per_s']:.1f} tokens/s (median; runs {[round(t, 1) for t in tps]}), {r['examples']} examples in {r['steps']} steps, {med['seconds']:.1f}s, "
          f"peak RSS {med['peak_rss_mb']:.0f} MB ({r['ready_rss_mb']:.0f} MB before the call), "
          f"loss over last {r['last_k']} steps {med['final_loss']:.4f}, loss on the training set after training {med['eval_loss']:.4f}")
    print(f"  step losses: {[round(x, 3) for x in r['losses']]}")
    print(f"  settings: {json.dumps(r['settings'], default=str)}")
    return med


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=120, help="at most this many; trimmed so the peer's batch is whole")
    parser.add_argument("--max-len", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8, help="driftloop's batch_size (rows at the longest length)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per side, alternating; the median is reported")
    parser.add_argument("--peer", choices=sorted(PEERS), default="best")
    parser.add_argument("--naive", action="store_true", help="also run the untuned Trainer (fp32, random order) once")
    parser.add_argument("--side", choices=["peer", "ours"])
    args = parser.parse_args()
    if args.side:
        print("JSON " + json.dumps(run_side(args.side, args.peer, args.examples, args.max_len, args.batch)))
        return
    from common import machine

    base_path()  # convert once, outside every timing
    runs: dict[str, list[dict]] = {"peer": [], "ours": []}
    for _ in range(args.repeats):
        for side in ("peer", "ours"):
            runs[side].append(launch(side, args.peer, args))
    naive = [launch("peer", "naive", args)] if args.naive else []
    r = runs["ours"][0]
    print(f"machine: {machine()}")
    print(f"workload: {r['examples']} examples ({r['tokens']} tokens, at most {args.max_len} each), one epoch, {r['steps']} optimizer steps on both sides "
          f"({r['examples'] // r['steps']} examples per step on average), LoRA r=8 alpha=16 on q/k/v/o; warm-up: 2 optimizer steps in each process "
          f"on a separately loaded model before the timed call; timed: the whole training call; median of {args.repeats} alternating runs per side, "
          f"each in its own process; peak RSS: the process's high-water mark from just before the timed call to its end")
    peer = summary(f"peer ({args.peer}): transformers.Trainer + peft", runs["peer"])
    ours = summary("ours: driftloop train_lora", runs["ours"])
    if naive:
        summary("secondary, untuned Trainer (fp32, random order, 1 run)", naive)
    print(f"peak memory ratio (ours/peer): {ours['peak_rss_mb'] / peer['peak_rss_mb']:.2f}; "
          f"loss after training: ours {ours['eval_loss']:.4f}, peer {peer['eval_loss']:.4f} (difference {ours['eval_loss'] - peer['eval_loss']:+.4f})")
    print(f"RESULT train_tokens_per_s={ours['tokens_per_s']:.1f} baseline={peer['tokens_per_s']:.1f} ratio={ours['tokens_per_s'] / peer['tokens_per_s']:.2f}")


if __name__ == "__main__":
    main()
