"""Training assets materialized in process: tiny Llama, real tokenizer, real registry."""

import json

import dagster as dg

from conftest import SECTION_CONTEXTS, data_resources

from assets.data import data_assets
from assets.training import LORA_ADAPTER, training_assets
from resources.models import ModelCatalog
from resources.registry import ModelRegistry


def run(corpus, dvc_store, catalog, registry, **train):
    config = {
        "ops": {
            "data__source_documents": {"config": {"source": str(corpus)}},
            "data__qa_pairs": {"config": {"eval_fraction": 0.3}},
            **SECTION_CONTEXTS,
            "training__lora_adapter": {"config": {"max_steps": 6, "batch_size": 4, "max_seq_length": 512, "checkpoint_every": 2,
                                                  "warmup_steps": 1, "min_examples": 4, **train}},
        }
    }
    return dg.materialize([*data_assets, *training_assets], resources=data_resources(dvc_store, models=catalog, model_registry=registry),
                          run_config=config, raise_on_error=False)


def test_adapter_lands_in_the_registry_with_lineage(corpus, dvc_store, tiny_llama, tmp_path):
    catalog = ModelCatalog(generator_model=tiny_llama, device="cpu")
    registry = ModelRegistry(root=str(tmp_path / "registry"))
    result = run(corpus, dvc_store, catalog, registry)
    assert result.success
    meta = next(iter(result.asset_materializations_for_node(LORA_ADAPTER.to_python_identifier()))).metadata
    version = meta["adapter_version"].value
    stored = registry.registry().get(version)
    assert stored.lineage["dataset_dvc_md5"] == dvc_store.version("instruction_dataset").md5
    assert stored.lineage["steps"] == 6 and stored.lineage["tokens_seen"] > 0
    assert json.loads((stored.path / "adapter_config.json").read_text())["r"] == 8
    assert meta["loss_curve"].value.startswith("![training loss](data:image/png;base64,")
    # The run's energy and emissions, plotted over materializations in the UI.
    assert meta["energy_kwh"].value > 0 and meta["emissions_kg_co2e"].value > 0 and meta["energy"].value["cpu_method"]
    assert not (registry.registry().root / "checkpoints").exists() or not any((registry.registry().root / "checkpoints").iterdir())


def test_bad_training_inputs_fail_before_training(corpus, dvc_store, tiny_llama, tmp_path):
    registry = ModelRegistry(root=str(tmp_path / "registry"))
    bad_modules = run(corpus, dvc_store, ModelCatalog(generator_model=tiny_llama, device="cpu"), registry, target_modules=["nope"])
    failure = next(e for e in bad_modules.all_events if e.event_type_value == "STEP_FAILURE")
    assert "target modules ['nope'] do not exist" in failure.step_failure_data.user_failure_data.description
    too_small = run(corpus, dvc_store, ModelCatalog(generator_model=tiny_llama, device="cpu"), registry, min_examples=100_000)
    failure = next(e for e in too_small.all_events if e.event_type_value == "STEP_FAILURE")
    assert "training needs at least 100000" in failure.step_failure_data.user_failure_data.description
    missing = run(corpus, dvc_store, ModelCatalog(generator_model=str(tmp_path / "no-model"), device="cpu"), registry)
    failure = next(e for e in missing.all_events if e.event_type_value == "STEP_FAILURE")
    assert "no-model" in failure.step_failure_data.user_failure_data.description
    assert registry.registry().versions() == []
