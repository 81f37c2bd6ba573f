"""The LoRA training loop: length-grouped batches, optional bf16 autocast, checkpoints
every N steps that a restarted run resumes from, and a hard stop on a NaN loss."""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from driftloop.models.hardware import physical_cores, resolve_precision
from driftloop.training.kernels import patch_lean_activations
from driftloop.training.data import IGNORE, Encoded, collate, fill_padded, length_grouped_batches


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; no adapter is saved from such a run."""


@dataclass(frozen=True)
class LoraSettings:
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    learning_rate: float = 2e-4
    schedule: str = "cosine"  # cosine | linear | constant
    warmup_steps: int = 5
    epochs: int = 1
    max_steps: int = 0  # 0: run the epochs
    max_seq_length: int = 1024
    batch_size: int = 8  # examples per step at the longest length
    token_budget: int = 0  # 0: batch_size * the longest example (at most max_seq_length)
    gradient_accumulation: int = 1
    max_grad_norm: float = 1.0
    seed: int = 0
    precision: str = "auto"  # auto | fp32 | bf16
    checkpoint_every: int = 10
    keep_checkpoints: int = 2
    lean_activations: bool = True  # recompute RMSNorm and SwiGLU intermediates in backward
    micro_batch_tokens: int = 0  # rows per forward pass are split to at most this many tokens; 0: auto


@dataclass
class StepLog:
    step: int
    loss: float
    tokens: int
    seconds: float
    lr: float


@dataclass
class TrainResult:
    steps: int
    tokens_seen: int
    seconds: float
    final_loss: float
    best_loss: float
    trainable_params: int
    total_params: int
    precision: str
    device: str
    resumed_from_step: int
    history: list[StepLog] = field(default_factory=list)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens_seen / self.seconds if self.seconds else 0.0


def answer_loss(model, inputs: dict, reduction: str = "mean"):
    """Cross-entropy over the answer tokens, as the model's own loss computes it.

    Only the hidden states that predict an answer token go through the output layer.
    For a small model the vocabulary projection and its float32 logits are a large share
    of the work and of peak memory (8 x 256 tokens x 49k vocabulary is 400 MB of logits,
    twice over with their gradient), and most tokens of a RAG example are its prompt.
    Models whose logits are post-processed (soft-capping, scaling) take the stock path.
    """
    import torch.nn.functional as F

    causal = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = causal.get_decoder() if hasattr(causal, "get_decoder") else None
    head = causal.get_output_embeddings()
    config = causal.config
    if decoder is None or head is None or getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None):
        loss = model(**inputs).loss
        return loss * int((inputs["labels"][:, 1:] != IGNORE).sum()) if reduction == "sum" else loss
    mask = inputs.get("attention_mask")
    if mask is not None and bool((mask[:, 1:] <= mask[:, :-1]).all()):
        # Right padding only: under a causal mask no real token can see a pad that follows
        # it, and pads carry no labels, so the padding mask changes nothing the loss sees.
        # Without it, SDPA takes its fused causal path instead of materialising a mask.
        mask = None
    hidden = decoder(input_ids=inputs["input_ids"], attention_mask=mask, use_cache=False).last_hidden_state
    targets = inputs["labels"][:, 1:]
    keep = targets != IGNORE
    logits = head(hidden[:, :-1][keep])
    return F.cross_entropy(logits.float(), targets[keep], reduction=reduction)


def store_frozen_linears(model, dtype) -> int:
    """Keep the frozen linear weights in `dtype`; returns how many were converted.

    Autocast re-casts a weight that needs no gradient on every forward pass (its cast
    cache only keeps leaves that require grad), so a bf16 run would convert the whole
    base model once per micro-batch. Stored in bf16 they are read as they are, at half
    the memory. LoRA weights, norms and the embedding stay float32: the residual stream
    keeps the precision autocast gives it, and a tied output head is the embedding.
    """
    import torch

    embedding = model.get_input_embeddings()
    tied = embedding.weight if embedding is not None else None
    converted = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and not module.weight.requires_grad and module.weight is not tied:
            module.weight.data = module.weight.data.to(dtype)
            if module.bias is not None and not module.bias.requires_grad:
                module.bias.data = module.bias.data.to(dtype)
            converted += 1
    return converted


def attach_lora(model, settings: LoraSettings):
    from peft import LoraConfig, get_peft_model

    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [m for m in settings.target_modules if m not in names]
    if missing:
        linear = sorted({n.rsplit(".", 1)[-1] for n, mod in model.named_modules() if type(mod).__name__ == "Linear"})
        raise ValueError(f"target modules {missing} do not exist in the model; its linear layers are {linear}")
    config = LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=list(settings.target_modules), task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def _lr_lambda(settings: LoraSettings, total_steps: int):
    def factor(step: int) -> float:
        if step < settings.warmup_steps:
            return (step + 1) / (settings.warmup_steps + 1)
        if settings.schedule == "constant":
            return 1.0
        progress = (step - settings.warmup_steps) / max(1, total_steps - settings.warmup_steps)
        if settings.schedule == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _latest_checkpoint(folder: Path) -> Path | None:
    done = sorted((p for p in folder.glob("step-*") if (p / "state.json").is_file()), key=lambda p: int(p.name.split("-")[1]))
    return done[-1] if done else None


def _save_checkpoint(folder: Path, step: int, model, optimizer, scheduler, history: list[StepLog], keep: int) -> None:
    import torch

    target = folder / f"step-{step:06d}"
    staging = folder / f".step-{step:06d}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    model.save_pretrained(staging / "adapter")
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "torch_rng": torch.get_rng_state(), "python_rng": random.getstate()}, staging / "trainer.pt")
    # state.json last: a folder without it is an interrupted save and is never resumed from.
    (staging / "state.json").write_text(json.dumps({"step": step, "history": [asdict(h) for h in history]}))
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)
    for old in sorted(folder.glob("step-*"), key=lambda p: int(p.name.split("-")[1]))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def resolve_micro_batch_tokens(settings: LoraSettings, device: str, precision: str) -> int:
    if settings.micro_batch_tokens:
        return settings.micro_batch_tokens
    # A GPU wants the whole batch in one pass. A CPU's fp32 units are saturated by a few
    # hundred rows, so 512-token passes cost no throughput and cut activation memory (AVX2
    # EPYC: 1,024 was no faster at 1.4x the memory). bf16 on AMX wants larger matrices: on
    # an AMX Xeon 1,024-token passes trained about 1.15x faster than 512 at 1.07x the
    # memory; 2,048 was faster still but peaked above transformers.Trainer at its best
    # (BENCHMARKS.md, bench/training.py).
    if device.startswith("cuda"):
        return 0
    return 1024 if precision == "bf16" else 512


def split_rows(rows: Sequence[Encoded], max_tokens: int) -> list[list[Encoded]]:
    """Consecutive rows whose padded size (rows x longest) stays within max_tokens; 0: one chunk."""
    if not max_tokens:
        return [list(rows)]
    lengths = [len(x.input_ids) for x in rows]
    order = sorted(range(len(rows)), key=lengths.__getitem__, reverse=True)
    return [[rows[i] for i in run] for run in fill_padded(order, lengths, max_tokens)]


def _step_plan(items: Sequence[Encoded], budget: int, settings: LoraSettings, total_steps: int) -> list[list[list[int]]]:
    """Every step's micro-batches, epoch after epoch, fixed by the seed."""
    plan: list[list[list[int]]] = []
    epoch = 0
    while len(plan) < total_steps:
        batches = length_grouped_batches(items, budget, settings.seed, epoch)
        usable = len(batches) - len(batches) % settings.gradient_accumulation
        if usable == 0:
            raise ValueError("fewer batches than gradient_accumulation: lower gradient_accumulation or batch_size")
        for i in range(0, usable, settings.gradient_accumulation):
            plan.append(batches[i : i + settings.gradient_accumulation])
        epoch += 1
    return plan[:total_steps]


def train_lora(
    base_path: str,
    items: Sequence[Encoded],
    settings: LoraSettings,
    checkpoint_dir: Path,
    device: str = "cpu",
    progress: Callable[[StepLog, int], None] | None = None,
    model=None,
):
    """Train and return (peft model, result). Resumes from checkpoint_dir when it holds a checkpoint."""
    import torch
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(settings.seed)
    random.seed(settings.seed)
    if device == "cpu":
        torch.set_num_threads(physical_cores())
    precision = resolve_precision(settings.precision, device, cuda="bf16")
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    base = model if model is not None else AutoModelForCausalLM.from_pretrained(base_path, torch_dtype=torch.float32)
    if settings.lean_activations:
        patch_lean_activations(base)
    peft_model = attach_lora(base, settings).to(device)
    if precision == "bf16":
        store_frozen_linears(peft_model, torch.bfloat16)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in peft_model.parameters())

    # A step never holds more tokens than `batch_size` of the longest examples, the most a
    # padded batch of that size can hold, so memory stays within what the user sized for.
    longest = max(len(x.input_ids) for x in items)
    budget = settings.token_budget or settings.batch_size * min(settings.max_seq_length, longest)
    steps_per_epoch = max(1, len(length_grouped_batches(items, budget, settings.seed, 0)) // settings.gradient_accumulation)
    total_steps = settings.max_steps or steps_per_epoch * settings.epochs
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=settings.learning_rate, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(settings, total_steps))

    history: list[StepLog] = []
    step = 0
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    latest = _latest_checkpoint(checkpoint_dir)
    if latest is not None:
        set_peft_model_state_dict(peft_model, load_file(str(latest / "adapter" / "adapter_model.safetensors")))
        state = torch.load(latest / "trainer.pt", weights_only=False)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        random.setstate(state["python_rng"])
        saved = json.loads((latest / "state.json").read_text())
        step, history = saved["step"], [StepLog(**h) for h in saved["history"]]
    resumed_from = step

    autocast = torch.autocast(device_type="cuda" if device.startswith("cuda") else "cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
    micro_tokens = resolve_micro_batch_tokens(settings, device, precision)
    peft_model.train()
    started = time.perf_counter()
    plan = _step_plan(items, budget, settings, total_steps)
    # A resumed run continues the same plan where its checkpoint left off, so it sees the same data.
    for micro in plan[step:]:
        t0 = time.perf_counter()
        tokens, loss_sum = 0, 0.0
        for group in micro:
            rows = [items[i] for i in group]
            # Each batch's loss is the mean over all its answer tokens, however it is split.
            targets = sum(x.n_predicted for x in rows)
            for chunk in split_rows(rows, micro_tokens):
                inputs = {k: v.to(device) for k, v in collate(chunk, pad_id).items()}
                with autocast:
                    loss = answer_loss(peft_model, inputs, reduction="sum") / (targets * len(micro))
                if not torch.isfinite(loss):
                    raise NonFiniteLossError(f"loss became {loss.item()} at step {step + 1}; lower learning_rate or check the data")
                loss.backward()
                loss_sum += loss.item()
                tokens += int(inputs["attention_mask"].sum())
        torch.nn.utils.clip_grad_norm_([p for p in peft_model.parameters() if p.requires_grad], settings.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        log = StepLog(step, loss_sum, tokens, time.perf_counter() - t0, scheduler.get_last_lr()[0])
        history.append(log)
        if progress:
            progress(log, total_steps)
        if step % settings.checkpoint_every == 0 and step < total_steps:
            _save_checkpoint(checkpoint_dir, step, peft_model, optimizer, scheduler, history, settings.keep_checkpoints)
    elapsed = time.perf_counter() - started
    tokens_seen = sum(h.tokens for h in history)
    result = TrainResult(
        steps=step, tokens_seen=tokens_seen, seconds=sum(h.seconds for h in history) or elapsed,
        final_loss=history[-1].loss if history else float("nan"), best_loss=min((h.loss for h in history), default=float("nan")),
        trainable_params=trainable, total_params=total, precision=precision, device=device, resumed_from_step=resumed_from,
        history=history,
    )
    return peft_model, result
