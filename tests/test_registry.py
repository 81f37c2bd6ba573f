"""The champion alias, its audit trail, and rollback, through the API and the CLI."""

import json

import pytest

from driftloop.registry import AdapterRegistry, PromotionError
from driftloop.orchestration.cli import main as cli


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
    assert cli(["model", "rollback", "--to", b]) == 0
    assert reg.champion().version == b
    assert cli(["model", "rollback", "--to", c]) == 2
    assert cli(["model", "champion"]) == 0


def test_one_command_rollback_moves_the_alias_then_deploys(registry, monkeypatch, capsys):
    from driftloop.orchestration.cli import rollback

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
