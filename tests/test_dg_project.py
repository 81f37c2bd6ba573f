"""The project as Dagster's `dg` CLI sees it: what `dg list defs` shows is what the code
location defines, workspace.yaml names the same location, and loading the definitions
raises no Dagster deprecation or supersession warning."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def dg_env(tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "orchestration" / "dagster.yaml", home / "dagster.yaml")
    return {**os.environ, "DAGSTER_HOME": str(home), "DRIFTLOOP_HOME": str(tmp_path / "project")}


def test_dg_list_defs_shows_every_definition_the_code_location_has(dg_env):
    from orchestration.definitions import defs as load_defs

    listed = subprocess.run([str(Path(sys.executable).parent / "dg"), "list", "defs", "--json"], cwd=ROOT, env=dg_env,
                            capture_output=True, text=True, timeout=300)
    assert listed.returncode == 0, listed.stderr[-3000:]
    shown = json.loads(listed.stdout)
    defs = load_defs()
    repo = defs.get_repository_def()
    graph = defs.resolve_asset_graph()
    assert {a["asset_key"] for a in shown["assets"]} == {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert {c["key"] for c in shown["asset_checks"]} == {f"{k.asset_key.to_user_string()}:{k.name}" for k in graph.asset_check_keys}
    assert {j["name"] for j in shown["jobs"]} == {j.name for j in repo.get_all_jobs() if not j.name.startswith("__")}
    assert {s["name"] for s in shown["schedules"]} == {s.name for s in repo.schedule_defs}
    assert {s["name"] for s in shown["sensors"]} == {s.name for s in repo.sensor_defs}
    assert {"driftloop_pipeline", "retrain_and_redeploy"} <= {j["name"] for j in shown["jobs"]}
    assert shown["schedules"] and shown["sensors"] and len(shown["asset_checks"]) >= 10


def test_workspace_yaml_names_the_module_and_location_dg_loads():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["dg"]["project"]
    (entry,) = yaml.safe_load((ROOT / "workspace.yaml").read_text())["load_from"]
    assert entry["python_module"]["module_name"] == project["code_location_target_module"]
    assert entry["python_module"]["location_name"] == project["code_location_name"]


LOAD = textwrap.dedent("""
    import json, warnings
    import dagster as dg
    from dagster_shared.utils.warnings import SupersessionWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from orchestration.definitions import defs
        built = defs()
        dg.Definitions.validate_loadable(built)
        built.get_repository_def().get_all_jobs()
        built.resolve_asset_graph()
    # Dagster 1.13's own YAML component loader calls pydantic's parse_obj_as (dagster-io/dagster
    # issue 33880): Pydantic's warning about Dagster's code, not a Dagster API this project uses.
    upstream = [w for w in caught if w.category.__name__ == "PydanticDeprecatedSince20" and "/site-packages/dagster/" in w.filename]
    flagged = [w for w in caught if w not in upstream and (issubclass(w.category, (DeprecationWarning, PendingDeprecationWarning, SupersessionWarning))
               or "dagster" in str(w.message).lower())]
    print("WARNINGS " + json.dumps([f"{w.category.__name__} at {w.filename}:{w.lineno}: {w.message}" for w in flagged]))
""")


def test_loading_the_definitions_raises_no_deprecation_or_supersession_warning(dg_env):
    # A fresh interpreter: warnings already raised by an earlier import in this process
    # would not be raised again.
    done = subprocess.run([sys.executable, "-c", LOAD], cwd=ROOT, env=dg_env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(ln for ln in done.stdout.splitlines() if ln.startswith("WARNINGS "))
    warnings = [w for w in json.loads(line[len("WARNINGS "):]) if "site-packages" not in w.split(": ")[0] or "/dagster" in w]
    assert not warnings, "\n".join(warnings)


def test_freshness_and_automation_use_the_current_apis_and_the_instance_evaluates_freshness(dg_env, monkeypatch):
    import dagster as dg

    from orchestration.definitions import defs as load_defs

    graph = load_defs().resolve_asset_graph()
    nodes = {key.to_user_string(): graph.get(key) for key in graph.get_all_asset_keys()}
    assert not [k for k, n in nodes.items() if n.legacy_freshness_policy is not None]
    # Dagster derives an auto-materialize policy from an automation condition; one set on its own is the legacy API.
    assert not [k for k, n in nodes.items() if n.auto_materialize_policy is not None and n.automation_condition is None]
    fresh = {k for k, n in nodes.items() if isinstance(n.freshness_policy, dg.FreshnessPolicy)}
    assert {"monitoring/inference_log", "monitoring/drift_report", "training/lora_adapter"} <= fresh
    assert isinstance(nodes["evaluation/champion"].automation_condition, dg.AutomationCondition)
    monkeypatch.setenv("DAGSTER_HOME", dg_env["DAGSTER_HOME"])
    with dg.DagsterInstance.get() as instance:
        assert instance.freshness_enabled and "FRESHNESS_DAEMON" in instance.get_required_daemon_types()


def test_dg_scaffold_writes_a_lineage_that_loads_beside_the_default_and_a_wrong_field_is_named(dg_env):
    """`dg scaffold defs` of the lineage Component writes a defs.yaml that `dg check defs`
    accepts and `dg list defs` shows under its own prefix; a misspelt field fails the check
    with the field and its line named."""
    dg_cli = str(Path(sys.executable).parent / "dg")
    name = f"scaffolded_{os.getpid()}"
    target = ROOT / "orchestration" / "defs" / name

    def dg(*args):
        return subprocess.run([dg_cli, *args], cwd=ROOT, env=dg_env, capture_output=True, text=True, timeout=300)

    try:
        scaffolded = dg("scaffold", "defs", "orchestration.lineage.DriftloopLineage", name)
        assert scaffolded.returncode == 0, scaffolded.stderr[-3000:]
        attributes = yaml.safe_load((target / "defs.yaml").read_text())["attributes"]
        assert attributes["name"] == name and attributes["serve_port"] not in (3000, 3001, 3002)
        checked = dg("check", "defs")
        assert checked.returncode == 0, checked.stderr[-3000:]
        listed = dg("list", "defs", "--json")
        shown = json.loads(listed.stdout)
        keys = {a["asset_key"] for a in shown["assets"]}
        assert {"data/qa_pairs", f"{name}/data/qa_pairs", f"{name}/serving/deployment"} <= keys
        assert f"{name}__drift_retrain" in {s["name"] for s in shown["sensors"]}

        (target / "defs.yaml").write_text((target / "defs.yaml").read_text().replace("serve_port:", "serve_prot:"))
        broken = dg("check", "defs")
        assert broken.returncode != 0 and "attributes.serve_prot" in broken.stdout + broken.stderr, broken.stderr[-3000:]
    finally:
        shutil.rmtree(target, ignore_errors=True)
