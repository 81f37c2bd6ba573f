"""The code location loads, and its asset keys, groups and checks are pinned."""

import json

import dagster as dg

from orchestration.definitions import defs as load_defs

defs = load_defs()

EXPECTED_ASSETS = {
    "data/source_documents": "data",
    "data/qa_pairs": "data",
    "data/instruction_dataset": "training",
    "retrieval/chunks": "retrieval",
    "retrieval/embeddings": "retrieval",
    "retrieval/vector_index": "retrieval",
    "training/base_model": "training",
    "training/lora_adapter": "training",
    "evaluation/eval_report": "evaluation",
    "evaluation/champion": "evaluation",
    "serving/bento": "serving",
    "serving/deployment": "serving",
    "serving/shadow": "serving",
    "serving/canary": "serving",
    "serving/router": "serving",
    "monitoring/inference_log": "monitoring",
    "monitoring/drift_report": "monitoring",
}
EXPECTED_CHECKS = {
    ("data/source_documents", "schema", True),
    ("data/source_documents", "text_quality", True),
    ("data/source_documents", "duplicates", True),
    ("data/source_documents", "pii", False),
    ("data/qa_pairs", "schema", True),
    ("data/qa_pairs", "text_quality", True),
    ("data/qa_pairs", "duplicates", True),
    ("data/qa_pairs", "leakage", True),
    ("data/qa_pairs", "eval_split_power", True),
    ("data/instruction_dataset", "schema", True),
    ("data/instruction_dataset", "text_quality", True),
    ("data/instruction_dataset", "duplicates", True),
    ("data/instruction_dataset", "leakage", True),
    ("retrieval/vector_index", "retrieval_quality", True),
    ("evaluation/eval_report", "promotion_gate", True),
}


def test_definitions_load():
    dg.Definitions.validate_loadable(defs)


def test_asset_keys_and_groups_snapshot():
    graph = defs.resolve_asset_graph()
    groups = {key.to_user_string(): graph.get(key).group_name for key in graph.get_all_asset_keys()}
    assert groups == EXPECTED_ASSETS


def test_every_asset_describes_itself():
    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assert node.description and node.owners and node.code_version, key
        assert node.kinds, key


def test_checks_snapshot():
    graph = defs.resolve_asset_graph()
    checks = {
        (spec.asset_key.to_user_string(), spec.name, spec.blocking)
        for key in graph.asset_check_keys
        for spec in [graph.get_check_spec(key)]
    }
    assert checks == EXPECTED_CHECKS


def test_main_job_selects_the_whole_lineage():
    job = defs.resolve_job_def("driftloop_pipeline")
    # Shadowing is opted into per challenger, and a canary is decided on its own evidence, each in its own job.
    assert set(job.asset_layer.executable_asset_keys) == {dg.AssetKey.from_user_string(k) for k in EXPECTED_ASSETS
                                                          if not k.startswith(("monitoring/", "serving/shadow", "serving/canary"))}
    assert set(defs.resolve_job_def("shadow_challenger").asset_layer.executable_asset_keys) == {dg.AssetKey(["serving", "shadow"])}
    assert set(defs.resolve_job_def("canary_decision").asset_layer.executable_asset_keys) == {dg.AssetKey(["serving", "canary"])}


def test_training_declares_a_gpu_for_the_kubernetes_executor():
    job = defs.resolve_job_def("driftloop_pipeline")
    node = job.graph.node_named("training__lora_adapter")
    limits = json.loads(node.definition.tags["dagster-k8s/config"])["container_config"]["resources"]["limits"]
    assert limits == {"nvidia.com/gpu": "1"}
    assert "dagster-k8s/config" not in job.graph.node_named("retrieval__chunks").definition.tags
