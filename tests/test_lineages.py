"""Several lineages in one code location (orchestration/lineage.py): each has its own asset
keys, jobs, sensors, resources and home, materializes and serves on its own, and a drift
in one starts a retrain of that one only. Bad lineage settings are refused by name."""

import json
import random
from pathlib import Path

import dagster as dg
import pytest

from conftest import write_corpus
from assets.keys import CHAMPION, DRIFT_REPORT, QA_PAIRS, VECTOR_INDEX
from driftloop.layout import Layout
from driftloop.serving.requestlog import RequestLog
from driftloop.settings import Settings
from orchestration.lineage import DriftloopLineage, LineageError, reset_loaded
from orchestration.profile import local_profile
from resources.lineage import Lineage
from resources.registry import ModelRegistry

NEW_TOPIC = ("kubernetes pod eviction quota scheduler taint toleration ingress helm chart namespace volume claim "
             "replica autoscaler sidecar daemonset cronjob secret configmap node affinity").split()
# The tiny models of the other lineage tests, their settings given as a lineage's own.
TINY_ASSETS = {
    "data/qa_pairs": {"eval_fraction": 0.4},
    "retrieval/chunks": {"chunk_tokens": 48, "overlap_tokens": 8},
    "retrieval/vector_index": {"min_recall": 0.0, "min_mrr": 0.0},
    "training/lora_adapter": {"max_steps": 4, "batch_size": 4, "max_seq_length": 512, "warmup_steps": 1, "min_examples": 4,
                              "learning_rate": 0.005},
    "evaluation/eval_report": {"max_questions": 8, "min_questions": 8, "max_new_tokens": 4, "k": 2, "judge": "none",
                               "min_semantic_similarity": 0.0, "max_empty_rate": 1.0, "max_toxic_rate": 1.0, "max_pii_rate": 1.0,
                               "no_regression": ["perplexity"], "relative_tolerance": 0.5},
    "monitoring/drift_report": {"min_queries": 30, "permutations": 200, "reference_queries": 200},
    # A random two-layer embedder routes at random; the router is tested in test_router.py.
    "serving/router": {"enabled": False},
}


def tiny_models(tiny_llama, tiny_embedding_model) -> dict:
    return {"models": {"generator_model": tiny_llama, "embedding_model": tiny_embedding_model, "device": "cpu",
                       "embedding_precision": "fp32", "generator_precision": "fp32"}}


def two_lineages(tmp_path, resources=None, assets=None, ports=(3101, 3201)) -> dg.Definitions:
    reset_loaded()
    settings, profile = Settings(), local_profile(None)
    default = DriftloopLineage(source=str(write_corpus(tmp_path / "docs", seed=0)), serve_port=ports[0], resources=resources or {},
                               assets=assets or {})
    runbooks = DriftloopLineage(name="runbooks", source=str(write_corpus(tmp_path / "runbooks", seed=7)), serve_port=ports[1],
                                resources=resources or {}, assets=assets or {})
    return dg.Definitions.merge(default.build("docs/defs.yaml", settings, profile), runbooks.build("runbooks/defs.yaml", settings, profile))


def test_each_lineage_has_its_own_keys_jobs_sensors_resources_and_folders(tmp_path):
    defs = two_lineages(tmp_path)
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert "data/qa_pairs" in keys and "runbooks/data/qa_pairs" in keys and len(keys) == 34
    named = {k for k in keys if k.startswith("runbooks/")}
    assert len(named) == 17 and {f"runbooks/{k}" for k in keys - named} == named
    # Every dependency of a runbooks asset is a runbooks asset.
    for key in graph.get_all_asset_keys():
        if key.path[0] == "runbooks":
            assert all(dep.path[0] == "runbooks" for dep in graph.get(key).parent_keys), key
    assert {c.asset_key.path[0] for c in graph.asset_check_keys if c.name == "promotion_gate"} == {"evaluation", "runbooks"}

    repo = defs.get_repository_def()
    retrain = repo.get_job("runbooks__retrain_and_redeploy")
    assert retrain.asset_layer.selected_asset_keys and all(k.path[0] == "runbooks" for k in retrain.asset_layer.selected_asset_keys)
    assert all(k.path[0] != "runbooks" for k in repo.get_job("retrain_and_redeploy").asset_layer.selected_asset_keys)
    sensors = {s.name: s for s in repo.sensor_defs}
    assert sensors["runbooks__drift_retrain"].job_name == "runbooks__retrain_and_redeploy"
    assert sensors["drift_retrain"].job_name == "retrain_and_redeploy"
    assert sensors["runbooks__canary_watch"].job_name == "runbooks__canary_decision"
    assert sensors["runbooks__canary_watch"].required_resource_keys == {"runbooks_deployer"}
    assert {s.name for s in repo.schedule_defs} >= {"weekly_retrain", "runbooks__weekly_retrain"}

    home = Layout.from_env().home / "lineages" / "runbooks"
    resources = defs.resources
    assert Path(resources["runbooks_dvc"].root) == home / "data" / "workspace"
    assert Path(resources["runbooks_model_registry"].local_root()) == home / "artifacts" / "registry"
    assert Path(resources["runbooks_vector_store"].local_root()) == home / "artifacts" / "retrieval"
    assert resources["runbooks_deployer"].port == 3201 and resources["deployer"].port == 3101
    assert Path(resources["model_registry"].local_root()) == Layout.from_env().registry
    assert Path(resources["dvc"].root) == Layout.from_env().dvc_workspace


def test_lineage_settings_become_the_defaults_of_its_assets_only(tmp_path):
    defs = two_lineages(tmp_path, assets={"retrieval/chunks": {"chunk_tokens": 300}})
    reset_loaded()
    plain = DriftloopLineage(name="plain", source=str(tmp_path), serve_port=3301).build("plain/defs.yaml", Settings(), local_profile(None))
    chunks = {a.key.to_user_string(): a for a in [*defs.assets, *plain.assets] if a.key.path[-1] == "chunks"}

    def default(key):
        return chunks[key].op.config_schema.as_field().default_value["chunk_tokens"]

    assert default("runbooks/retrieval/chunks") == 300 == default("retrieval/chunks")
    assert default("plain/retrieval/chunks") == 200


@pytest.mark.parametrize(("attributes", "message"), [
    ({"name": "Run-Books", "source": "x", "serve_port": 4001}, "lower-case letters"),
    ({"name": "runbooks", "serve_port": 4001}, "`source` is required"),
    ({"name": "runbooks", "source": "x"}, "`serve_port` is required"),
    ({"name": "runbooks", "source": "x", "serve_port": 4001, "assets": {"retrieval/chunks": {"chunk_tokns": 3}}}, "chunk_tokns"),
    ({"name": "runbooks", "source": "x", "serve_port": 4001, "assets": {"retrieval/chunks": {"chunk_tokens": "many"}}}, "chunk_tokens='many'"),
    ({"name": "runbooks", "source": "x", "serve_port": 4001, "assets": {"retrieval/chunkz": {}}}, "retrieval/chunkz"),
    ({"name": "runbooks", "source": "x", "serve_port": 4001, "resources": {"models": {"generator_modl": "x"}}}, "generator_modl"),
    ({"name": "runbooks", "source": "x", "serve_port": 4001, "resources": {"gpu": {}}}, "'gpu'"),
    ({"name": "runbooks", "source": "x", "serve_port": 4001, "schedules": {"timezone": 3}}, "timezone"),
])
def test_bad_lineage_settings_are_refused_by_name(attributes, message):
    reset_loaded()
    with pytest.raises((LineageError, ValueError), match=message):
        DriftloopLineage.model_validate(attributes).build("x/defs.yaml", Settings(), local_profile(None))


def test_a_second_lineage_with_a_taken_name_port_or_home_is_refused(tmp_path):
    def build(where, **attributes):
        return DriftloopLineage(**{"source": str(tmp_path), **attributes}).build(where, Settings(), local_profile(None))

    reset_loaded()
    build("a/defs.yaml", serve_port=3101)
    build("b/defs.yaml", name="runbooks", serve_port=3201)
    with pytest.raises(LineageError, match="name 'runbooks' is taken by b/defs.yaml"):
        build("c/defs.yaml", name="runbooks", serve_port=3301)
    with pytest.raises(LineageError, match="serve_port 3102 .* collides with a/defs.yaml"):
        build("c/defs.yaml", name="manuals", serve_port=3102)
    with pytest.raises(LineageError, match="home .* overlaps b/defs.yaml"):
        build("c/defs.yaml", name="manuals", serve_port=3301, home=str(Layout.from_env().home / "lineages" / "runbooks" / "x"))
    build("c/defs.yaml", name="manuals", serve_port=3301)


def test_the_default_lineage_given_a_home_keeps_everything_there(tmp_path):
    reset_loaded()
    home = tmp_path / "elsewhere"
    defs = DriftloopLineage(home=str(home)).build("driftloop/defs.yaml", Settings(), local_profile(None))
    assert Path(defs.resources["dvc"].root) == home / "data" / "workspace"
    assert Path(defs.resources["model_registry"].local_root()) == home / "artifacts" / "registry"
    assert defs.resources["deployer"].layout().home == home


def _materializations(instance, key) -> int:
    return len(instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=key), limit=100).records)


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_two_lineages_materialize_serve_and_drift_independently(tmp_path, monkeypatch, tiny_llama, tiny_embedding_model):
    """Both lineages run their whole pipeline, each deploys its champion on its own port
    from its own home, answers from its own corpus and logs to its own request log; then
    new-topic traffic on one makes that lineage's drift sensor, and no other, start a retrain."""
    from driftloop.serving.supervisor.client import SupervisorClient
    from serving_helpers import KEY, call, free_port_pair

    for name, value in {"DRIFTLOOP_API_KEY": KEY, "DRIFTLOOP_WARMUP_REQUESTS": "1"}.items():
        monkeypatch.setenv(name, value)
    for name in ("BENTOML_HOME", "DRIFTLOOP_REQUEST_LOG", "DRIFTLOOP_SERVE_PORT"):
        monkeypatch.delenv(name, raising=False)
    port_a = free_port_pair()
    port_b = next(p for p in iter(free_port_pair, None) if abs(p - port_a) > 2)
    defs = two_lineages(tmp_path, resources=tiny_models(tiny_llama, tiny_embedding_model), assets=TINY_ASSETS, ports=(port_a, port_b))
    repo = defs.get_repository_def()
    instance = dg.DagsterInstance.ephemeral()
    runbooks = Lineage(name="runbooks", home=str(Layout.from_env().home / "lineages" / "runbooks"))
    homes = {"default": Layout.from_env(), "runbooks": runbooks.layout()}
    def default_files() -> dict[str, int]:
        # The default lineage's home as its own runs left it; its running service's
        # supervisor logs may grow meanwhile, and named lineages live under lineages/.
        home = homes["default"].home
        return {p.relative_to(home).as_posix(): p.stat().st_size for p in home.rglob("*")
                if p.is_file() and p.relative_to(home).parts[0] != "lineages" and "supervisor" not in p.parts}

    try:
        result = repo.get_job("driftloop_pipeline").execute_in_process(instance=instance, raise_on_error=False)
        assert result.success, [e.message for e in result.all_events if e.is_failure]
        before = default_files()
        result = repo.get_job("runbooks__driftloop_pipeline").execute_in_process(instance=instance, raise_on_error=False)
        assert result.success, [e.message for e in result.all_events if e.is_failure]
        assert default_files() == before, "the runbooks lineage wrote into the default lineage's home"
        assert _materializations(instance, CHAMPION) == 1 == _materializations(instance, runbooks.key(CHAMPION))

        champions = {name: ModelRegistry(root=str(layout.registry)).registry().champion().version for name, layout in homes.items()}
        assert champions["default"] != champions["runbooks"]
        for name, layout in homes.items():
            # Each lineage's artifacts are in its own home and nowhere else.
            assert (layout.dvc_workspace / "datasets" / "qa_pairs.jsonl").is_file()
            others = [v for n, v in champions.items() if n != name]
            assert not any(layout.registry.rglob(f"*{others[0]}*")), f"{name}'s registry holds {others}"
        default_rows = (homes["default"].dvc_workspace / "datasets" / "chunks.jsonl").read_text()
        runbooks_rows = (homes["runbooks"].dvc_workspace / "datasets" / "chunks.jsonl").read_text()
        assert default_rows != runbooks_rows

        questions = {}
        for name, layout in homes.items():
            questions[name] = [json.loads(r)["question"] for r in (layout.dvc_workspace / "datasets" / "qa_pairs.jsonl").read_text().splitlines()]
        for name, port in (("default", port_a), ("runbooks", port_b)):
            status, body = call(port, "/answer", {"question": questions[name][0]})
            assert status == 200, body
            answer = json.loads(body)
            assert answer["model_version"] == champions[name]
            own = (homes[name].dvc_workspace / "datasets" / "chunks.jsonl").read_text()
            assert answer["chunks"] and all(c["chunk_id"] in own for c in answer["chunks"])
            logged = [json.loads(line) for f in (homes[name].request_log / "requests").rglob("*.jsonl") for line in f.read_text().splitlines()]
            assert [r["model_version"] for r in logged if r.get("endpoint") == "answer" and r.get("question") == questions[name][0]]
        assert homes["runbooks"].request_log != homes["default"].request_log

        # New-topic traffic reaches the runbooks service only (written straight to its log:
        # what matters here is whose drift check reads it).
        log, rng = RequestLog(homes["runbooks"].request_log), random.Random(0)
        for i in range(60):
            log.request(request_id=f"req-{i:020x}", endpoint="answer", question=" ".join(rng.sample(NEW_TOPIC, 6)) + "?", answer="...",
                        model_version=champions["runbooks"], latency_s=0.5, prompt_tokens=100, completion_tokens=20, chunk_ids=["c1"],
                        scores=[0.6, 0.5])
        for job in ("drift_check", "runbooks__drift_check"):
            assert repo.get_job(job).execute_in_process(instance=instance).success
        reports = {name: instance.get_latest_materialization_event(key).asset_materialization.metadata
                   for name, key in (("default", DRIFT_REPORT), ("runbooks", runbooks.key(DRIFT_REPORT)))}
        assert reports["runbooks"]["drifted"].value is True, reports["runbooks"]["summary"].value
        assert reports["default"]["drifted"].value is False and reports["default"]["enough_data"].value is False

        sensors = {s.name: s for s in repo.sensor_defs}
        fired = {name: sensors[name].evaluate_tick(dg.build_sensor_context(instance=instance, repository_def=repo))
                 for name in ("drift_retrain", "runbooks__drift_retrain")}
        assert not fired["drift_retrain"].run_requests, fired["drift_retrain"].skip_message
        assert len(fired["runbooks__drift_retrain"].run_requests) == 1
        assert sensors["runbooks__drift_retrain"].job_name == "runbooks__retrain_and_redeploy"
        # The default lineage's data were not touched by any of it.
        assert _materializations(instance, QA_PAIRS) == 1 and _materializations(instance, VECTOR_INDEX) == 1
    finally:
        for port in (port_a, port_b):
            SupervisorClient(f"http://127.0.0.1:{port + 1}").shutdown()
