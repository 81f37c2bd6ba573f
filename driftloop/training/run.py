"""One training run as the pipeline runs it: the examples chosen and encoded, the LoRA loop
checkpointed under a key of everything that shapes the weights (so a retried run resumes
and any other run starts afresh), and the adapter published to the registry with its
lineage."""

from __future__ import annotations

import hashlib
import json
import logging
import random
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from driftloop.models.generator import BaseModel
from driftloop.registry import AdapterRegistry, AdapterVersion
from driftloop.training.data import encode_dataset
from driftloop.training.loop import LoraSettings, TrainResult, train_lora

LOG = logging.getLogger(__name__)
# A run's parameters that choose the examples; the rest are LoraSettings' fields.
EXAMPLE_CHOICE = ("max_examples", "min_examples", "long_examples")


@dataclass(frozen=True)
class TrainedAdapter:
    adapter: AdapterVersion
    training: TrainResult
    lineage: dict
    skipped: list[str]  # examples left out as too long or without answer tokens

    @property
    def adapter_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.adapter.path.iterdir())


def code_version() -> str:
    """Content hash of the training code, so an adapter names the code that made it."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def lora_settings(params: Mapping) -> LoraSettings:
    data = {k: v for k, v in params.items() if k not in EXAMPLE_CHOICE}
    if "target_modules" in data:
        data["target_modules"] = tuple(data["target_modules"])
    return LoraSettings(**data)


def checkpoint_key(base_version: str, dataset_version: str, params: Mapping) -> str:
    named = json.dumps([base_version, dataset_version, dict(params), code_version()], sort_keys=True)
    return hashlib.sha256(named.encode()).hexdigest()[:16]


def train_adapter(base: BaseModel, dataset_version: str, examples: Sequence[dict], params: Mapping, registry: AdapterRegistry, *,
                  device: str = "cpu", run_id: str | None = None, log: logging.Logger = LOG) -> TrainedAdapter:
    """Train on `examples` (the instruction dataset at `dataset_version`) and publish.

    `params` are the run's flat parameters: LoraSettings' fields plus max_examples (0:
    every example, else a seeded sample), min_examples and long_examples (error | skip);
    the lineage records them as given. Raises TrainingDataError before training when the
    examples cannot be used, and NonFiniteLossError or ValueError (unknown target modules)
    from the loop; nothing is published then.
    """
    from transformers import AutoTokenizer

    settings = lora_settings(params)
    if params["max_examples"] and len(examples) > params["max_examples"]:
        examples = random.Random(settings.seed).sample(list(examples), params["max_examples"])
    tokenizer = AutoTokenizer.from_pretrained(base.path)
    items, skipped = encode_dataset(examples, tokenizer, settings.max_seq_length, params["long_examples"], params["min_examples"])
    if skipped:
        log.warning(f"{len(skipped)} examples longer than max_seq_length={settings.max_seq_length} skipped, e.g. {skipped[:3]}")

    checkpoints = registry.root / "checkpoints" / checkpoint_key(base.version, dataset_version, params)

    def progress(entry, total):
        eta = entry.seconds * (total - entry.step)
        log.info(f"step {entry.step}/{total} loss {entry.loss:.4f} {entry.tokens / entry.seconds:.0f} tokens/s lr {entry.lr:.2e} "
                 f"about {eta:.0f}s left")

    model, result = train_lora(base.path, items, settings, checkpoints, device=device, progress=progress)
    if result.resumed_from_step:
        log.info(f"resumed from the checkpoint at step {result.resumed_from_step}")

    staging = checkpoints / "final-adapter"
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    lineage = {
        "base_model": base.name, "base_model_version": base.version, "dataset": "data/instruction_dataset",
        "dataset_dvc_md5": dataset_version, "code_version": code_version(), "config": dict(params), "seed": settings.seed,
        "train_seconds": round(result.seconds, 1), "tokens_seen": result.tokens_seen, "steps": result.steps,
        "final_loss": result.final_loss, "best_loss": result.best_loss, "precision": result.precision, "device": result.device,
        "examples": len(items), "skipped_examples": len(skipped), "run_id": run_id,
    }
    adapter = registry.publish(staging, lineage)
    shutil.rmtree(checkpoints, ignore_errors=True)
    return TrainedAdapter(adapter, result, lineage, skipped)
