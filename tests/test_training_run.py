"""A training run without Dagster (driftloop.training.run) on the tiny Llama: a seeded
sample of the examples trains an adapter that lands in the registry with its lineage and
leaves no checkpoint behind; examples that cannot train stop the run before it starts."""

import logging

import pytest

from conftest import chat_examples
from driftloop.models.generator import BaseModel
from driftloop.registry import AdapterRegistry
from driftloop.training.data import TrainingDataError
from driftloop.training.run import checkpoint_key, code_version, lora_settings, train_adapter

PARAMS = {"rank": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"], "learning_rate": 5e-3, "schedule": "constant",
          "warmup_steps": 0, "epochs": 1, "max_steps": 3, "max_seq_length": 256, "batch_size": 4, "gradient_accumulation": 1, "seed": 0,
          "precision": "fp32", "checkpoint_every": 2, "lean_activations": True, "micro_batch_tokens": 0, "max_examples": 10,
          "min_examples": 4, "long_examples": "skip"}


def test_a_sample_of_the_examples_trains_an_adapter_published_with_its_lineage(tiny_llama, tmp_path, caplog):
    registry = AdapterRegistry(tmp_path / "registry")
    base = BaseModel("tiny", tiny_llama, "tinyhash", "test")
    examples = chat_examples(16)
    # One example longer than max_seq_length: skipped and said so, not trained on.
    examples[0] = {**examples[0], "messages": [*examples[0]["messages"][:-1], {"role": "assistant", "content": "word " * 400}]}
    caplog.set_level(logging.INFO, logger="driftloop.training.run")
    trained = train_adapter(base, "md5-of-data", examples, PARAMS, registry, run_id="run-1")

    stored = registry.get(trained.adapter.version)
    lineage = stored.lineage
    assert lineage == trained.lineage and lineage["config"] == PARAMS
    assert (lineage["dataset_dvc_md5"], lineage["base_model_version"], lineage["run_id"]) == ("md5-of-data", "tinyhash", "run-1")
    assert lineage["code_version"] == code_version() and lineage["steps"] == trained.training.steps == 3
    # max_examples=10 of 16: the seed draws the long one among them.
    assert (lineage["examples"], lineage["skipped_examples"]) == (9, 1) and trained.skipped[0].startswith("ex0 (")
    warned = [r.message for r in caplog.records if r.name == "driftloop.training.run" and r.levelno == logging.WARNING]
    assert warned == [f"1 examples longer than max_seq_length=256 skipped, e.g. {trained.skipped}"]
    assert any(r.message.startswith("step 3/3 loss") for r in caplog.records)
    assert trained.adapter_bytes == sum(p.stat().st_size for p in stored.path.iterdir()) > 0
    assert not list((registry.root / "checkpoints").iterdir())


def test_examples_that_cannot_train_stop_the_run_and_nothing_is_published(tiny_llama, tmp_path):
    registry = AdapterRegistry(tmp_path / "registry")
    base = BaseModel("tiny", tiny_llama, "tinyhash", "test")
    with pytest.raises(TrainingDataError, match="training needs at least 4"):
        train_adapter(base, "md5", chat_examples(3), PARAMS, registry)
    with pytest.raises(TrainingDataError, match="exceed max_seq_length=20"):
        train_adapter(base, "md5", chat_examples(8), {**PARAMS, "max_seq_length": 20, "long_examples": "error"}, registry)
    assert registry.versions() == [] and not (registry.root / "checkpoints").exists()


def test_checkpoints_are_named_by_everything_that_shapes_the_weights():
    key = checkpoint_key("base", "data", PARAMS)
    assert key == checkpoint_key("base", "data", dict(reversed(PARAMS.items())))
    assert len({key, checkpoint_key("other", "data", PARAMS), checkpoint_key("base", "other", PARAMS),
                checkpoint_key("base", "data", {**PARAMS, "max_examples": 11})}) == 4
    settings = lora_settings(PARAMS)
    assert settings.target_modules == ("q_proj", "v_proj") and settings.rank == 4 and not hasattr(settings, "max_examples")
