"""Evaluation and promotion materialized in process on a tiny Llama and embedding model:
a good adapter becomes champion; a broken one (random LoRA weights) fails the gate, is
not promoted on a normal run, and is refused by the champion asset itself when that
runs without the blocking check (as declarative automation would, dagster issue 17332)."""

import json
import shutil

import dagster as dg
import pytest

from driftloop.assets.data import data_assets, data_checks
from driftloop.assets.evaluation import CHAMPION, EVAL_REPORT, GATE, evaluation_assets
from driftloop.assets.retrieval import retrieval_assets
from driftloop.assets.training import LORA_ADAPTER, training_assets
from driftloop.evaluation.metrics import EvaluationError, eval_items
from driftloop.resources.models import ModelCatalog
from driftloop.resources.registry import ModelRegistry
from driftloop.resources.vector_store import VectorStore

ALL = [*data_assets, *data_checks, *retrieval_assets, *training_assets, *evaluation_assets]
# Random tiny models answer nonsense, so the floors are off here; the rule under test is
# "no regression against the champion" on perplexity, which a broken adapter cannot meet.
EVAL = {"max_questions": 4, "max_new_tokens": 6, "k": 2, "min_semantic_similarity": 0.0, "max_empty_rate": 1.0,
        "max_toxic_rate": 1.0, "max_pii_rate": 1.0, "no_regression": ["perplexity"], "relative_tolerance": 0.02}


def run(instance, corpus, resources, select=None, **evaluation):
    config = {"ops": {
        "data__source_documents": {"config": {"source": str(corpus)}},
        "data__qa_pairs": {"config": {"eval_fraction": 0.4}},
        "retrieval__chunks": {"config": {"chunk_tokens": 48, "overlap_tokens": 8}},
        "retrieval__vector_index": {"config": {"min_recall": 0.0, "min_mrr": 0.0}},
        "training__lora_adapter": {"config": {"max_steps": 8, "batch_size": 4, "max_seq_length": 512, "warmup_steps": 1,
                                              "min_examples": 4, "learning_rate": 0.005}},
        "evaluation__eval_report": {"config": {**EVAL, **evaluation}},
    }}
    ops = config["ops"]
    if select is not None:
        names = {k.to_python_identifier() for k in select}
        config["ops"] = {k: v for k, v in ops.items() if k in names}
    return dg.materialize(ALL, resources=resources, run_config=config, selection=select, instance=instance, raise_on_error=False)


def broken_copy(adapter_dir, target):
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(adapter_dir, target)
    weights = load_file(str(target / "adapter_model.safetensors"))
    torch.manual_seed(1)
    save_file({k: torch.randn_like(v) * 8.0 for k, v in weights.items()}, str(target / "adapter_model.safetensors"))
    for extra in ("lineage.json", "manifest.json"):
        (target / extra).unlink(missing_ok=True)
    return target


@pytest.mark.slow
def test_gate_promotes_good_and_blocks_broken_adapters(corpus, dvc_store, tiny_llama, tiny_embedding_model, tmp_path):
    instance = dg.DagsterInstance.ephemeral()
    registry = ModelRegistry(root=str(tmp_path / "registry"))
    resources = {"dvc": dvc_store, "model_registry": registry, "vector_store": VectorStore(root=str(tmp_path / "retrieval")),
                 "models": ModelCatalog(generator_model=tiny_llama, embedding_model=tiny_embedding_model, device="cpu", embedding_precision="fp32")}

    first = run(instance, corpus, resources)
    assert first.success
    good = next(iter(first.asset_materializations_for_node(LORA_ADAPTER.to_python_identifier()))).metadata["adapter_version"].value
    reg = registry.registry()
    assert reg.champion().version == good
    report = next(iter(first.asset_materializations_for_node(EVAL_REPORT.to_python_identifier()))).metadata
    folder = tmp_path / "registry" / "reports"
    (report_dir,) = folder.iterdir()
    stored = json.loads((report_dir / "result.json").read_text())
    assert set(stored["result"]["models"]) == {"base", "challenger"} and stored["gate"]["reference"] == "base"
    assert "| metric | base | challenger |" in (report_dir / "report.md").read_text()
    assert (report_dir / "report.html").read_text().startswith("<!doctype html>") and report["gate_passed"].value
    assert (tmp_path / "registry" / "cards" / f"{good}.md").read_text().startswith(f"# Model card: {good}")

    broken = reg.publish(broken_copy(reg.get(good).path, tmp_path / "broken"), {"note": "random LoRA weights"}).version
    second = run(instance, corpus, resources, select=[EVAL_REPORT, CHAMPION], challenger_version=broken)
    # The failed blocking check fails the evaluation step; champion never executes.
    assert not second.success
    assert not [e for e in second.all_events if e.step_key == CHAMPION.to_python_identifier() and e.event_type_value == "STEP_START"]
    (check,) = [e for e in second.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"]
    assert check.event_specific_data.check_name == GATE and not check.event_specific_data.passed
    assert "perplexity" in check.event_specific_data.description and "regresses against champion" in check.event_specific_data.description
    assert reg.champion().version == good
    latest = json.loads((sorted(folder.iterdir())[-1] / "result.json").read_text())
    assert set(latest["result"]["models"]) == {"base", "champion", "challenger"}

    # The champion asset alone, as automation that ignores blocking checks would run it.
    forced = run(instance, corpus, resources, select=[CHAMPION])
    assert not forced.success
    failure = next(e for e in forced.all_events if e.event_type_value == "STEP_FAILURE")
    assert "failed its promotion gate" in failure.step_failure_data.user_failure_data.description
    assert reg.champion().version == good
    assert [e["version"] for e in reg.history()] == [good]


def test_eval_sets_that_cannot_be_scored_are_refused():
    with pytest.raises(EvaluationError, match="eval split is empty"):
        eval_items([{"qa_id": "a", "split": "train", "answer": "x", "context": "y"}], 10)
    rows = [{"qa_id": "a", "split": "eval", "question": "q", "answer": "", "context": "c", "doc_id": "d"}]
    with pytest.raises(EvaluationError, match="1 of 1 eval questions lack a reference"):
        eval_items(rows, 10)
