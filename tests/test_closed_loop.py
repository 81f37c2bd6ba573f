"""The closed loop, reduced, against a real Dagster daemon and webserver and a real
BentoML service behind the supervisor: `make drift-demo`'s own scenario
(cli/drift_demo.py) on a small corpus with tiny models chosen by a profile
file, so the code under test is the product's, end to end:

in-distribution traffic retrains nothing; documents on a new topic start one index
refresh and redeploy without training; questions on that topic are flagged by the drift
check, and the drift sensor starts exactly one retrain, which passes the gate and puts
the new version on the stable port; on that version's own traffic the drift persists,
and no second retrain loops on the same data."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cli import commands
from conftest import write_corpus
from serving_helpers import free_port_pair

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.scenario]


@pytest.mark.timeout(1800)
def test_drift_and_new_documents_retrain_and_redeploy_through_the_daemon(tmp_path, tiny_llama, tiny_embedding_model):
    corpus = write_corpus(tmp_path / "corpus", n_docs=16)
    profile = tmp_path / "profile.yaml"
    profile.write_text(yaml.safe_dump({"resources": {"models": {
        "embedding_model": tiny_embedding_model, "generator_model": tiny_llama, "device": "cpu", "embedding_precision": "fp32"}}}))
    # The gate keeps its default floors but one, and its default perplexity rule: the tiny
    # random Llama's greedy tokens are often special tokens that decode to nothing, so the
    # empty-answer ceiling is lifted, and similarity to the reference under a random
    # embedder is noise (an empty answer against a non-empty one moves it by 0.15), so the
    # text-similarity no-regression rules are left out. The same rules then refuse a broken
    # copy of the retrained champion in this home, so passing them means something.
    run_config = tmp_path / "run.yaml"
    run_config.write_text(yaml.safe_dump({"ops": {
        "data__qa_pairs": {"config": {"eval_fraction": 0.4}},
        "retrieval__chunks": {"config": {"chunk_tokens": 48, "overlap_tokens": 8}},
        "retrieval__vector_index": {"config": {"min_recall": 0.0, "min_mrr": 0.0}},
        # Enough training that the champion is measurably better than random weights: on a
        # random base, an adapter that has learned nothing is no better than a broken one.
        "training__lora_adapter": {"config": {"batch_size": 4, "max_seq_length": 256, "warmup_steps": 1, "min_examples": 4,
                                              "learning_rate": 0.01}},
        "evaluation__eval_report": {"config": {"max_new_tokens": 6, "k": 2, "max_empty_rate": 1.0, "no_regression": ["perplexity"],
                                                  "min_questions": 8}},
        "monitoring__drift_report": {"config": {"min_queries": 30, "permutations": 200, "reference_queries": 200}},
    }}))
    home, port, ui_port = tmp_path / "home", free_port_pair(), free_port_pair()
    env = {**os.environ, "DRIFTLOOP_PROFILE_FILE": str(profile), "DRIFTLOOP_SOURCE_DIR": str(corpus), "DRIFTLOOP_WARMUP_REQUESTS": "2"}
    env.pop("DRIFTLOOP_PROFILE", None)
    demo = subprocess.run(
        [sys.executable, "-m", "cli.drift_demo", "--home", str(home), "--port", str(port), "--ui-port", str(ui_port),
         "--traffic", "40", "--train-steps", "16", "--eval-questions", "12", "--run-config", str(run_config), "--timeout", "900", "--sensor-interval", "5"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1700,
    )
    tail = demo.stdout[-4000:] + demo.stderr[-4000:] + "\n--- dagster ---\n" + _tail(home / "dagster-dev.log")
    assert demo.returncode == 0, tail
    result = json.loads((home / "timeline.json").read_text())
    outcome, quality = result["outcome"], result["quality"]

    # In-distribution traffic: checked, never drifted, nothing retrained on it.
    assert outcome["in_distribution_reports"] and not any(r["drifted"] for r in outcome["in_distribution_reports"]), tail
    assert all(r["status"] == "SUCCESS" for r in outcome["runs"]["traffic"]) and len(outcome["runs"]["traffic"]) >= 2

    # New documents: one refresh, which trained nothing, and the new topic is now cited.
    refreshes = outcome["runs"]["new_documents"]
    assert len(refreshes) == 1 and refreshes[0]["status"] == "SUCCESS", refreshes
    assert quality["before"]["cited_new_docs"] == 0 and quality["refresh"]["cited_new_docs"] > 0, quality
    assert quality["refresh"]["model"] == outcome["first_champion"]

    # The shift: flagged, one retrain for its window, gated, and the new version serving.
    assert outcome["drifted_report"]["drifted"] and outcome["drifted_report"]["enough_data"]
    retrains = outcome["runs"]["drift"]
    assert len(retrains) == 1 and retrains[0]["status"] == "SUCCESS", retrains
    assert retrains[0]["tags"]["driftloop/drift_window"] and retrains[0]["tags"]["driftloop/drift_reasons"]
    assert outcome["gate_passed"] is True and outcome["champion"] == outcome["challenger"] != outcome["first_champion"]
    assert outcome["serving_model"] == outcome["champion"] == quality["retrain"]["model"]
    assert outcome["shift_to_serving_s"] and outcome["shift_to_serving_s"] > 0
    assert quality["retrain"]["answered"] == quality["refresh"]["answered"] > 0

    # The new version's own window: the topic still differs from the reference, the deploy
    # record names the drift it was retrained for, and the sensor reports the drift as
    # persisting instead of looping into a retrain on the same data.
    report = outcome["new_version_report"]
    assert report["enough_data"] and report["drifted"] and report["serving"] == outcome["serving_model"], report
    assert report["retrained_for_window"] == retrains[0]["tags"]["driftloop/drift_window"], report
    assert "drift persists" in report["sensor"], report["sensor"]
    assert outcome["runs_after_new_version"]["drift"] == [], outcome["runs_after_new_version"]

    _broken_copy_fails_the_same_gate(home, env, outcome["champion"])


def _broken_copy_fails_the_same_gate(home: Path, env: dict, champion: str) -> None:
    """The retrain passed the gate above; a copy of that champion with random LoRA weights,
    evaluated in the same home with the same rules, fails it and is never promoted."""
    from driftloop.registry import AdapterRegistry
    from test_evaluation_assets import changed_copy

    registry = AdapterRegistry(home / "artifacts" / "registry")
    broken = registry.publish(changed_copy(registry.get(champion).path, home / "broken-adapter"), {"note": "random LoRA weights"}).version
    config = json.loads((home / "retrain.yaml").read_text())["ops"]["evaluation__eval_report"]["config"]
    run_config = {"ops": {"evaluation__eval_report": {"config": {**config, "challenger_version": broken}}}}
    evaluated = subprocess.run(
        commands.launch(assets="evaluation/eval_report,evaluation/champion", config_json=run_config),
        cwd=ROOT, env={**env, "DRIFTLOOP_HOME": str(home), "DAGSTER_HOME": str(home / "dagster_home")},
        capture_output=True, text=True, timeout=600)
    assert evaluated.returncode != 0, evaluated.stdout[-3000:]
    reports = [json.loads(p.read_text()) for p in (home / "artifacts" / "registry" / "reports").glob("*/result.json")]
    (report,) = [r for r in reports if r["gate"]["challenger"] == broken]
    gate = report["gate"]
    assert not gate["passed"] and gate["reference"] == "champion" and gate["reference_version"] == champion, gate
    assert any(f.startswith("perplexity") and "regresses against champion" in f for f in gate["failures"]), gate["failures"]
    assert registry.champion().version == champion


def _tail(path: Path, chars: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""
