"""The training loop on a tiny random Llama with the real SmolLM2 tokenizer."""

import os
import subprocess
import sys
import textwrap

import pytest
from transformers import AutoTokenizer

from conftest import chat_examples
from driftloop.registry import AdapterRegistry
from driftloop.training.data import IGNORE, TrainingDataError, encode_dataset, encode_example, length_grouped_batches
from driftloop.training.loop import LoraSettings, NonFiniteLossError, train_lora


def test_only_answer_tokens_carry_loss(tiny_llama):
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    item = encode_example(chat_examples(1)[0], tokenizer)
    target = tokenizer.decode([t for t in item.labels if t != IGNORE])
    assert "The code word is" in target and "Question" not in target
    assert item.labels[0] == IGNORE


def test_bad_training_data_is_refused_before_training(tiny_llama):
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    with pytest.raises(TrainingDataError, match="at least 4"):
        encode_dataset(chat_examples(2), tokenizer, 512, "error", min_examples=4)
    with pytest.raises(TrainingDataError, match="exceed max_seq_length=20"):
        encode_dataset(chat_examples(8), tokenizer, 20, "error", min_examples=4)
    kept, skipped = encode_dataset(chat_examples(8), tokenizer, 20, "skip", min_examples=0)
    assert not kept and len(skipped) == 8


def test_length_grouped_batches_cover_every_example_once(tiny_llama):
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    items, _ = encode_dataset(chat_examples(100), tokenizer, 512, "error", 1)
    batches = length_grouped_batches(items, token_budget=400, seed=1, epoch=0)
    assert sorted(i for b in batches for i in b) == list(range(100))
    assert all(max(len(items[i].input_ids) for i in b) * len(b) <= 400 for b in batches)
    assert batches == length_grouped_batches(items, 400, 1, 0) != length_grouped_batches(items, 400, 1, 1)


def test_loss_goes_down_and_adapter_is_registered(tiny_llama, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    items, _ = encode_dataset(chat_examples(32), tokenizer, 256, "error", 4)
    settings = LoraSettings(rank=16, alpha=32, learning_rate=3e-2, max_steps=30, batch_size=8, max_seq_length=128, warmup_steps=2,
                            checkpoint_every=10, target_modules=("q_proj", "v_proj", "o_proj", "up_proj", "down_proj"))
    model, result = train_lora(tiny_llama, items, settings, tmp_path / "ckpt")
    first, last = sum(h.loss for h in result.history[:5]) / 5, sum(h.loss for h in result.history[-5:]) / 5
    assert last < first - 0.3, (first, last)
    assert result.steps == 30 and 0 < result.trainable_params < result.total_params
    model.save_pretrained(tmp_path / "adapter")
    registry = AdapterRegistry(tmp_path / "registry")
    version = registry.publish(tmp_path / "adapter", {"seed": 0})
    assert registry.publish(tmp_path / "adapter", {"seed": 0}).version == version.version
    assert registry.get(version.version).lineage == {"seed": 0}


def test_unknown_target_modules_and_nan_loss_are_clear_errors(tiny_llama, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    items, _ = encode_dataset(chat_examples(8), tokenizer, 256, "error", 1)
    with pytest.raises(ValueError, match=r"target modules \['attn_qkv'\] do not exist.*q_proj"):
        train_lora(tiny_llama, items, LoraSettings(target_modules=("attn_qkv",), max_steps=1), tmp_path / "a")
    with pytest.raises(NonFiniteLossError, match="loss became"):
        train_lora(tiny_llama, items, LoraSettings(learning_rate=1e30, max_steps=20, batch_size=2, max_seq_length=128, warmup_steps=0), tmp_path / "b")


RESUME_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from transformers import AutoTokenizer
    sys.path.insert(0, {tests!r})
    from conftest import chat_examples
    from driftloop.training.data import encode_dataset
    from driftloop.training.loop import LoraSettings, train_lora
    tokenizer = AutoTokenizer.from_pretrained({model!r})
    items, _ = encode_dataset(chat_examples(32), tokenizer, 256, "error", 4)
    settings = LoraSettings(max_steps=24, batch_size=4, max_seq_length=128, checkpoint_every=4, learning_rate=1e-3)
    def progress(log, total):
        print("STEP", log.step, flush=True)
    _, result = train_lora({model!r}, items, settings, Path({ckpt!r}), progress=progress)
    print("RESULT", json.dumps({{"resumed_from": result.resumed_from_step, "steps": result.steps, "history": len(result.history)}}), flush=True)
    """
)


def test_killed_training_resumes_from_its_last_checkpoint(tiny_llama, tmp_path):
    script = tmp_path / "train.py"
    script.write_text(RESUME_SCRIPT.format(tests=os.path.dirname(__file__), model=tiny_llama, ckpt=str(tmp_path / "ckpt")))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith("STEP") and int(line.split()[1]) >= 10:
            proc.kill()  # SIGKILL mid-run: no chance to clean up
            break
    proc.wait()
    assert proc.returncode == -9
    assert sorted(p.name for p in (tmp_path / "ckpt").glob("step-*"))[-1] == "step-000008"
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = next(line for line in done.stdout.splitlines() if line.startswith("RESULT"))
    assert '"resumed_from": 8' in result and '"steps": 24' in result and '"history": 24' in result


def test_lean_kernels_match_autograd():
    import torch

    from driftloop.training.kernels import rms_norm, silu_mul

    torch.manual_seed(0)
    x = torch.randn(2, 5, 8, dtype=torch.double, requires_grad=True)
    w = torch.randn(8, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: rms_norm(a, b, 1e-6), (x, w))
    gate = torch.randn(2, 5, 8, dtype=torch.double, requires_grad=True)
    up = torch.randn(2, 5, 8, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(silu_mul, (gate, up))


def _lora_grads(tiny_llama, rows, lean: bool, micro_tokens: int):
    import torch
    from transformers import AutoModelForCausalLM

    from driftloop.training.data import collate
    from driftloop.training.kernels import patch_lean_activations
    from driftloop.training.loop import answer_loss, attach_lora, split_rows

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    if lean:
        assert patch_lean_activations(base) == 2 * 3 + 1  # two norms and an MLP per layer, and the final norm
    model = attach_lora(base, LoraSettings(dropout=0.0))
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.05)
    pad = AutoTokenizer.from_pretrained(tiny_llama).eos_token_id
    if not lean:
        stock = model(**collate(rows, pad)).loss
        stock.backward()
        loss = stock.item()
    else:
        targets = sum(x.n_predicted for x in rows)
        chunks = split_rows(rows, micro_tokens)
        assert len(chunks) > 1 and sorted(id(r) for c in chunks for r in c) == sorted(id(r) for r in rows)
        loss = 0.0
        for chunk in chunks:
            part = answer_loss(model, collate(chunk, pad), reduction="sum") / targets
            part.backward()
            loss += part.item()
    return loss, {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_fast_path_is_the_same_optimisation_step(tiny_llama):
    """Answer-only projection, lean activations and micro-batch splitting change the cost
    of a step, not its loss or gradients."""
    import torch

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    items, _ = encode_dataset(chat_examples(12, seed=3), tokenizer, 512, "error", 1)
    stock_loss, stock = _lora_grads(tiny_llama, items, lean=False, micro_tokens=0)
    fast_loss, fast = _lora_grads(tiny_llama, items, lean=True, micro_tokens=200)
    assert fast_loss == pytest.approx(stock_loss, rel=1e-5)
    for name, grad in stock.items():
        assert torch.allclose(fast[name], grad, rtol=1e-4, atol=1e-7), name


def test_bf16_training_stores_frozen_linears_in_bf16_and_follows_the_fp32_run(tiny_llama, tmp_path):
    """bf16 is judged against the fp32 run of the same seed on the same machine, not against
    a fixed drop: on this config fp32 itself falls by about 0.30 nats in 30 steps, and where
    bf16 is emulated (AVX2 only) or native (AVX512-BF16, AMX) only its rounding differs
    (both accumulate matmuls in fp32), so a fixed bar at fp32's own drop passes or fails by
    chance. Measured: mean gap to the fp32 curve 0.011 nats (AVX2 dispatch), 0.027 (AMX)."""
    import torch

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    items, _ = encode_dataset(chat_examples(32), tokenizer, 256, "error", 4)
    runs = {}
    for precision in ("fp32", "bf16"):
        settings = LoraSettings(rank=16, alpha=32, learning_rate=3e-2, max_steps=30, batch_size=8, max_seq_length=128, warmup_steps=2,
                                checkpoint_every=100, precision=precision, target_modules=("q_proj", "v_proj", "o_proj", "up_proj", "down_proj"))
        runs[precision] = train_lora(tiny_llama, items, settings, tmp_path / precision)
    model, result = runs["bf16"]
    dtypes = {name: p.dtype for name, p in model.named_parameters()}
    frozen_linear = [n for n in dtypes if n.endswith(("base_layer.weight", "gate_proj.weight"))]
    assert frozen_linear and all(dtypes[n] == torch.bfloat16 for n in frozen_linear)
    assert all(dtype == torch.float32 for n, dtype in dtypes.items() if "lora_" in n or "norm" in n or "embed_tokens" in n)
    assert all(p.dtype == torch.float32 for p in runs["fp32"][0].parameters())

    curves = {precision: [h.loss for h in r.history] for precision, (_, r) in runs.items()}
    drop = {precision: sum(c[:5]) / 5 - sum(c[-5:]) / 5 for precision, c in curves.items()}
    gap = sum(abs(a - b) for a, b in zip(curves["fp32"], curves["bf16"], strict=True)) / len(curves["fp32"])
    assert result.precision == "bf16" and len(curves["bf16"]) == 30
    assert drop["fp32"] >= 0.2, drop  # the reference learns, so the comparison below means something
    assert drop["bf16"] >= 0.8 * drop["fp32"] and gap <= 0.05, (drop, gap)
