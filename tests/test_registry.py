"""The champion alias, its audit trail, and rollback, through the API and the CLI."""

import json

import pytest

from driftloop.registry import AdapterRegistry, PromotionError
from cli.main import main as cli


def _adapter(folder, seed: int):
    folder.mkdir(parents=True)
    (folder / "adapter_model.safetensors").write_bytes(bytes([seed]) * 64)
    (folder / "adapter_config.json").write_text(json.dumps({"r": 8, "seed": seed}))
    return folder


@pytest.fixture
def registry(tmp_path):
    reg = AdapterRegistry(tmp_path / "artifacts" / "registry")
    versions = [reg.publish(_adapter(tmp_path / f"a{i}", i), {"seed": i}).version for i in range(3)]
    return reg, versions


def test_promotion_is_refused_without_a_passed_gate_or_metrics(registry):
    reg, (a, _, _) = registry
    with pytest.raises(PromotionError, match="did not pass"):
        reg.promote(a, {"rouge": 0.4}, {}, gate={"passed": False, "failures": ["rouge below 0.5"]})
    with pytest.raises(PromotionError, match="no evaluation metrics"):
        reg.promote(a, {}, {}, gate={"passed": True})
    assert reg.champion() is None and reg.history() == []


def test_history_records_every_change_and_rollback_restores_earlier_champions(registry, monkeypatch):
    reg, (a, b, c) = registry
    reg.promote(a, {"rouge": 0.5}, {"qa_pairs": "md5a"}, by="alice", run_id="r1", gate={"passed": True})
    reg.promote(b, {"rouge": 0.6}, {"qa_pairs": "md5b"}, by="bob", run_id="r2", gate={"passed": True})
    assert reg.promote(b, {"rouge": 0.6}, {}, gate={"passed": True})["action"] == "unchanged"
    assert reg.champion().version == b
    assert reg.rollback(reason="bad answers in prod")["version"] == a
    assert reg.champion().version == a
    with pytest.raises(PromotionError, match="never champion"):
        reg.rollback(to=c)
    events = reg.history()
    assert [(e["action"], e["version"], e["previous"]) for e in events] == [("promote", a, None), ("promote", b, a), ("rollback", a, b)]
    assert events[1]["by"] == "bob" and events[1]["data_versions"] == {"qa_pairs": "md5b"} and events[1]["metrics"] == {"rouge": 0.6}

    monkeypatch.setenv("DRIFTLOOP_HOME", str(reg.root.parents[1]))  # the CLI's default registry
    monkeypatch.setenv("DAGSTER_HOME", str(reg.root.parents[1] / "dagster"))
    (reg.root.parents[1] / "dagster").mkdir()
    assert cli(["model", "rollback", "--to", b, "--reason", "answers regressed"]) == 0
    assert reg.champion().version == b
    # Dagster's evaluation/champion names the version that serves after the rollback.
    import dagster as dg

    from assets.keys import CHAMPION

    latest = dg.DagsterInstance.get().get_latest_materialization_event(CHAMPION).asset_materialization
    assert latest.metadata["champion"].value == b and latest.metadata["action"].value == "rollback"
    assert latest.tags["dagster/data_version"] == b and "answers regressed" in latest.description
    assert cli(["model", "rollback", "--to", c]) == 2
    assert cli(["model", "champion"]) == 0


def test_one_command_rollback_moves_the_alias_then_deploys(registry, monkeypatch, capsys):
    from cli.main import rollback

    reg, (a, b, _) = registry
    reg.promote(a, {"rouge": 0.5}, {}, gate={"passed": True})
    reg.promote(b, {"rouge": 0.6}, {}, gate={"passed": True})
    monkeypatch.setenv("DRIFTLOOP_HOME", str(reg.root.parents[1]))
    deployed = []

    def deploy(port):  # stands in for building and deploying through Dagster
        deployed.append((port, reg.champion().version))
        return 0

    assert rollback(None, "regression", 3911, deploy) == 0
    assert deployed == [(3911, a)] and f"{a} serves" in capsys.readouterr().out
    # The deploy failing leaves the alias rolled back and says that the old version still serves.
    assert rollback(b, "", 3911, lambda port: 1) == 1
    assert reg.champion().version == b and "still serves" in capsys.readouterr().err
    # A refused rollback deploys nothing.
    assert rollback("lora-0000", "", 3911, deploy) == 2 and len(deployed) == 1


def _lora_adapter(folder, tiny_llama: str, seed: int):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    model.save_pretrained(folder)
    return folder


def _current_index(tiny_embedding_model: str) -> None:
    """A promoted index in the vector store the definitions bind (under DRIFTLOOP_HOME)."""
    import hashlib
    import random

    from conftest import prose
    from driftloop.models.embedding import load_embedder
    from resources.vector_store import VectorStore

    rng = random.Random(0)
    texts = [f"Section {i}. " + prose(rng, 2) for i in range(8)]
    chunks = [{"chunk_id": f"c{i:03d}", "doc_id": f"d{i}", "title": f"doc {i}", "text": t, "start_char": 0, "end_char": len(t)}
              for i, t in enumerate(texts)]
    store = VectorStore().store()
    embeddings, _ = store.embed([c["chunk_id"] for c in chunks], [hashlib.sha256(t.encode()).hexdigest() for t in texts], texts,
                                load_embedder(tiny_embedding_model, "cpu", "fp32"), 8)
    folder, _ = store.build_index(embeddings, chunks)
    store.promote_index(folder, {"recall_at_k": 1.0})


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_rollback_builds_the_restored_champion_and_switches_the_stable_port(tmp_path, monkeypatch, tiny_llama, tiny_embedding_model):
    """`driftloop rollback` for real: the alias moves back, Dagster builds the restored
    champion's bento and the supervisor switches the stable port to it, while a client
    on that port keeps getting answers."""
    import os
    import shutil
    import threading
    import time
    from pathlib import Path

    import yaml

    from resources.registry import ModelRegistry
    from cli.serve import deploy_champion
    from driftloop.serving.supervisor.client import SupervisorClient
    from serving_helpers import KEY, ROOT, call, free_port_pair

    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    shutil.copy(ROOT / "orchestration" / "dagster.yaml", dagster_home / "dagster.yaml")
    profile = tmp_path / "profile.yaml"
    profile.write_text(yaml.safe_dump({"resources": {"models": {
        "embedding_model": tiny_embedding_model, "generator_model": tiny_llama, "device": "cpu",
        "embedding_precision": "fp32", "generator_precision": "fp32"}}}))
    # The deploy runs in subprocesses (the dagster CLI, its steps, the supervisor, bentoml
    # serve), which all take their settings from this environment.
    for name, value in {"DAGSTER_HOME": dagster_home, "DRIFTLOOP_PROFILE_FILE": profile, "DRIFTLOOP_API_KEY": KEY,
                        "DRIFTLOOP_WARMUP_REQUESTS": "1"}.items():
        monkeypatch.setenv(name, str(value))
    for name in ("DRIFTLOOP_PROFILE", "BENTOML_HOME", "DRIFTLOOP_SERVE_PORT"):
        monkeypatch.delenv(name, raising=False)
    home = Path(os.environ["DRIFTLOOP_HOME"])

    _current_index(tiny_embedding_model)
    reg = ModelRegistry().registry()
    a, b = (reg.publish(_lora_adapter(tmp_path / f"adapter{seed}", tiny_llama, seed), {"seed": seed}).version for seed in (1, 2))
    assert a != b
    reg.promote(a, {"perplexity": 12.0}, {}, gate={"passed": True})
    reg.promote(b, {"perplexity": 11.0}, {}, gate={"passed": True})

    port = free_port_pair()
    question = {"question": "What does section 3 say?", "k": 2, "max_new_tokens": 2}
    seen: list[tuple[int, str]] = []
    stop = threading.Event()

    def client():
        while not stop.is_set():
            try:
                status, body = call(port, "/answer", question)
                seen.append((status, json.loads(body).get("model_version") if status == 200 else body[:200]))
            except OSError as err:  # a refused or reset connection is a failed request too
                seen.append((0, repr(err)))
            time.sleep(0.3)

    try:
        assert deploy_champion(port) == 0
        status, body = call(port, "/answer", question)
        assert status == 200 and json.loads(body)["model_version"] == b, body

        poller = threading.Thread(target=client, daemon=True)
        poller.start()
        assert cli(["rollback", "--port", str(port), "--reason", "bad answers in prod"]) == 0
        stop.set()
        poller.join(timeout=150)

        status, body = call(port, "/answer", question)
        assert status == 200 and json.loads(body)["model_version"] == a, body
        assert reg.champion().version == a and reg.history()[-1]["action"] == "rollback"
        deployed = [json.loads(line) for line in (home / "artifacts" / "serving" / "deployments.jsonl").read_text().splitlines()]
        assert [(d["model_version"], d["action"]) for d in deployed] == [(b, "deployed"), (a, "deployed")], deployed
        assert deployed[1]["tag"] != deployed[0]["tag"] and deployed[1]["previous"] == deployed[0]["tag"]
        # Every request during the switch was answered, first by b, then by a, never back.
        versions = [v for _, v in seen]
        assert all(s == 200 for s, _ in seen), seen
        assert versions[0] == b and versions[-1] == a and versions == sorted(versions, key=lambda v: v == a), versions
    finally:
        stop.set()
        SupervisorClient(f"http://127.0.0.1:{port + 1}").shutdown()
