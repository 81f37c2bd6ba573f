"""The RAG path under evaluation: retrieve contexts, then answer with the base model, with
or without a LoRA adapter, loaded once and switched between models.

One base model serves every variant: adapters are attached by name and switched, and
"base" runs with adapters disabled, so the three models of a report differ only in
their adapter weights.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from driftloop.models.kvcache import DEFAULT_MB, PrefixCache, prefill, supports_reuse
from driftloop.prompts import MAX_CONTEXT_CHARS, PromptTemplate, join_contexts

BASE = "base"


@dataclass
class Answer:
    question_id: str
    answer: str
    latency_s: float
    new_tokens: int
    contexts: list[str] = field(default_factory=list)


def retrieve(index, embedder, questions: Sequence[str], k: int) -> list[list[dict]]:
    """The top-k chunk rows for each question, best first."""
    if not questions:
        return []
    vectors = embedder.encode(list(questions))
    _, ids = index.search(vectors, k, list(questions))
    return [[index.chunks[int(i)] for i in row if int(i) >= 0] for row in ids]


DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def generator_precision(precision: str, device: str) -> str:
    """The generator's dtype, one rule for evaluation and serving so the gate judges the
    numbers that serve: bf16 on a GPU or on a CPU with native bf16 units, fp32 elsewhere."""
    from driftloop.models.hardware import resolve_precision

    resolved = resolve_precision(precision, device, cuda="bf16")
    if resolved not in DTYPES:
        raise ValueError(f"generator precision {precision!r} is not one of auto, {', '.join(DTYPES)}")
    return resolved


class Answerer:
    def __init__(self, base_path: str, device: str = "cpu", max_context_chars: int = MAX_CONTEXT_CHARS, precision: str = "auto",
                 prefix_cache_mb: int = DEFAULT_MB) -> None:
        """`prefix_cache_mb`: memory for the keys and values of prompts already seen
        (driftloop/models/kvcache.py); 0 computes every prompt from its first token."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = device
        self.max_context_chars = max_context_chars
        self.precision = generator_precision(precision, device)
        self.tokenizer = AutoTokenizer.from_pretrained(base_path)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        dtype = getattr(torch, DTYPES[self.precision])
        self.model = AutoModelForCausalLM.from_pretrained(base_path, dtype=dtype).to(device).eval()
        self.adapters: dict[str, str] = {}
        self._stacks: dict[str, list[str]] = {}  # adapters active together under one name
        self.prefix_cache = PrefixCache(prefix_cache_mb << 20) if prefix_cache_mb and supports_reuse(self.model) else None
        self.engine = None  # another engine that generates, when evaluation must match what serves

    def generate_with(self, engine) -> None:
        """Generate through `engine` (driftloop/engines) with the same adapters, keeping this
        model for what only it computes: likelihoods and the local judge's logits."""
        if self.adapters:
            raise ValueError("generate_with() comes before any adapter is added")
        self.engine = engine
        self.precision = engine.precision

    def reused_tokens(self) -> int:
        """Prompt tokens taken from the prefix cache so far, not computed."""
        if self.engine is not None:
            return self.engine.reused_tokens()
        return self.prefix_cache.reused_tokens if self.prefix_cache else 0

    def merge(self, path: Path) -> None:
        """Fold one adapter into the base weights: a service runs a single adapter, and the
        LoRA matmuls beside every projection cost about a fifth of its time. The merge is
        done in fp32 and only then cast, so it adds no rounding of its own."""
        import torch
        from peft import PeftModel

        if self.adapters:
            raise ValueError("merge() is for a model without switchable adapters")
        target = self.model.dtype
        model = PeftModel.from_pretrained(self.model.to(torch.float32), str(path)).eval()
        self.model = model.merge_and_unload().to(target).eval()
        if self.prefix_cache is not None:
            self.prefix_cache.clear()

    def add_adapter(self, name: str, path: Path) -> None:
        from peft import PeftModel

        if name == BASE or name in self.adapters:
            raise ValueError(f"adapter name {name!r} is taken")
        if self.engine is not None:
            self.engine.add_adapter(name, path)
        if not self.adapters:
            self.model = PeftModel.from_pretrained(self.model, str(path), adapter_name=name).eval()
        else:
            self.model.load_adapter(str(path), adapter_name=name)
        self.adapters[name] = str(path)

    def add_adapter_over_merged(self, name: str, path: Path, merged: Path | None) -> None:
        """Serve adapter `path` as `name` beside the adapter `merged` into the base weights
        by `merge()`: `name` runs with the merged adapter's negation active too, so it
        computes base + its own delta exactly (up to rounding), and requests without an
        adapter keep the merged model's speed. One loaded model, switched per batch."""
        import tempfile

        from safetensors.torch import load_file, save_file

        self.add_adapter(name, path)
        if merged is None:
            return
        undo = Path(tempfile.mkdtemp(prefix="driftloop-undo-"))
        shutil.copy2(merged / "adapter_config.json", undo / "adapter_config.json")
        weights = load_file(str(merged / "adapter_model.safetensors"))
        save_file({key: -value if ".lora_B." in key else value for key, value in weights.items()}, str(undo / "adapter_model.safetensors"))
        self.model.load_adapter(str(undo), adapter_name=f"{name}-undo")
        shutil.rmtree(undo, ignore_errors=True)
        self._stacks[name] = [name, f"{name}-undo"]

    def _active(self, name: str):
        if name == BASE:
            return self.model.disable_adapter() if self.adapters else contextlib.nullcontext()
        if name not in self.adapters:
            raise KeyError(f"no adapter named {name!r}; loaded: {sorted(self.adapters)}")
        if name in self._stacks:
            self.model.base_model.set_adapter(self._stacks[name])
        else:
            self.model.set_adapter(name)
        return contextlib.nullcontext()

    def base_scope(self):
        """A context in which the model runs without any adapter."""
        return self._active(BASE)

    def prompt_text(self, template: PromptTemplate, question: str, contexts: Sequence[str]) -> str:
        context = join_contexts(contexts, self.max_context_chars)
        return self.tokenizer.apply_chat_template(template.messages(question, context), tokenize=False, add_generation_prompt=True)

    def answer(self, name: str, prompts: Sequence[str], ids: Sequence[str], max_new_tokens: int = 96, batch_size: int = 8,
               temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None, stop: Sequence[str] = (),
               sinks: Sequence[Callable[[int], None] | None] | None = None) -> list[Answer]:
        """Greedy answers unless `temperature` > 0; latency is per batch, shared by its
        questions. `seed` seeds the sampling of each batch; generation of a row ends at the
        first `stop` string (which the answer still contains: the caller cuts it). A row's
        sink, where given, receives each of its tokens as it is generated."""
        if self.engine is not None:
            return self.engine.answer(name, prompts, ids, max_new_tokens, batch_size, temperature, top_p, seed, stop, sinks)
        import torch

        from driftloop.serving.stream import RowStreamer

        sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else {"do_sample": False}
        if stop:
            sampling.update(stop_strings=list(stop), tokenizer=self.tokenizer)
        out: list[Answer] = []
        with self._active(name), torch.inference_mode():
            for start in range(0, len(prompts), batch_size):
                batch = list(prompts[start : start + batch_size])
                t0 = time.perf_counter()
                enc = self._inputs(name, batch)
                if seed is not None:
                    torch.manual_seed(seed)
                rows = list(sinks[start : start + batch_size]) if sinks else []
                streamer = RowStreamer(rows, {self.tokenizer.eos_token_id, self.tokenizer.pad_token_id}) if any(rows) else None
                generated = self.model.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=self.tokenizer.pad_token_id,
                                                streamer=streamer, **sampling)
                seconds = (time.perf_counter() - t0) / len(batch)
                new = generated[:, enc["input_ids"].shape[1] :]
                for row, qid in zip(new, ids[start : start + batch_size], strict=True):
                    tokens = [t for t in row.tolist() if t != self.tokenizer.pad_token_id]
                    if self.tokenizer.eos_token_id in tokens:
                        tokens = tokens[: tokens.index(self.tokenizer.eos_token_id)]
                    out.append(Answer(qid, self.tokenizer.decode(tokens, skip_special_tokens=True).strip(), seconds, len(tokens)))
        return out

    def _inputs(self, name: str, batch: list[str]) -> dict:
        """`generate`'s inputs for one batch, left-padded; with the prefix cache, the keys
        and values of every prompt but its last token are computed (or reused) first."""
        import torch

        if self.prefix_cache is None:
            return self.tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        rows = self.tokenizer(batch, add_special_tokens=False)["input_ids"]
        if min(len(row) for row in rows) < 2:
            return self.tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        width = max(len(row) for row in rows)
        ids = torch.tensor([[self.tokenizer.pad_token_id] * (width - len(row)) + row for row in rows], device=self.device)
        mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in rows], device=self.device)
        return {"input_ids": ids, "attention_mask": mask, "past_key_values": prefill(self.model, self.prefix_cache, name, rows)}

    def answer_nll(self, name: str, prompts: Sequence[str], references: Sequence[str]) -> list[tuple[float, int]]:
        """Per question: the summed negative log-likelihood of the reference answer given its
        prompt, and its token count (kept apart so the gate can pair questions)."""
        import torch

        out: list[tuple[float, int]] = []
        eos = self.tokenizer.eos_token or ""
        with self._active(name), torch.inference_mode():
            for prompt, reference in zip(prompts, references, strict=True):
                prompt_ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
                answer_ids = self.tokenizer(reference + eos, add_special_tokens=False)["input_ids"]
                ids = torch.tensor([prompt_ids + answer_ids], device=self.device)
                logits = self.model(input_ids=ids).logits[0, len(prompt_ids) - 1 : -1].float()
                target = ids[0, len(prompt_ids) :]
                out.append((float(torch.nn.functional.cross_entropy(logits, target, reduction="sum")), len(answer_ids)))
        return out
