"""`make demo`, reduced: the real webserver and daemon come up on a project-local
instance, the main job materializes the default corpus through the CLI with the real
embedding model and the real SmolLM2 (two LoRA steps instead of the demo's 24), and the
UI's GraphQL API shows the lineage with DVC versions, passing checks (the retrieval
quality gate included), the adapter's registry version, and the evaluation report whose
gate promoted that adapter to champion (six questions here)."""

import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from cli import commands
from driftloop.serving.supervisor.processes import free_port
from serving_helpers import dagster_ui

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.integration, pytest.mark.slow]


def graphql(port: int, query: str) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql", data=json.dumps({"query": query}).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())["data"]


@pytest.fixture
def instance_env(tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "orchestration" / "dagster.yaml", home / "dagster.yaml")
    env = {**os.environ, "DAGSTER_HOME": str(home), "DRIFTLOOP_HOME": str(tmp_path / "project")}
    return env


@pytest.mark.timeout(1200)
def test_demo_brings_up_ui_with_the_lineage_materialized(instance_env, tmp_path):
    serve_port = free_port()
    # The instance's SQLite schema is created by the first process; start the UI first, as `make demo` does.
    with dagster_ui(instance_env, ROOT) as port:
        try:
            _demo_run(port, serve_port, instance_env, tmp_path)
        finally:
            from driftloop.serving.supervisor.client import SupervisorClient

            supervisor = SupervisorClient(f"http://127.0.0.1:{serve_port + 1}")
            if supervisor.alive():
                supervisor.shutdown()


def _demo_run(port: int, serve_port: int, instance_env: dict, tmp_path: Path) -> None:
    # Two training steps keep the test to minutes; the demo's 24 steps are a config away.
    # 768 tokens hold an example with its three retrieved chunks.
    run_config = tmp_path / "run_config.yaml"
    run_config.write_text(
        "ops:\n  training__lora_adapter:\n    config:\n"
        "      max_steps: 2\n      warmup_steps: 0\n      max_seq_length: 768\n      checkpoint_every: 1\n"
        "  evaluation__eval_report:\n    config:\n"
        "      max_questions: 6\n      min_questions: 6\n      max_new_tokens: 24\n      no_regression: [perplexity]\n      judge_control_pairs: 4\n      judge_labelled_rows: 12\n"
        f"resources:\n  deployer:\n    config:\n      port: {serve_port}\n"
    )
    run = subprocess.run(
        commands.launch(job="driftloop_pipeline", config=run_config),
        cwd=ROOT, env=instance_env, capture_output=True, text=True, timeout=1080,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    data = graphql(
        port,
        """{ assetNodes { assetKey { path } groupName
             assetMaterializations(limit: 1) { metadataEntries { label ... on TextMetadataEntry { text } ... on MarkdownMetadataEntry { mdStr } } }
             assetChecksOrError { ... on AssetChecks { checks { name executionForLatestMaterialization { status } } } } } }""",
    )
    nodes = {"/".join(n["assetKey"]["path"]): n for n in data["assetNodes"]}
    for name in ("data/source_documents", "data/qa_pairs", "data/instruction_dataset"):
        entries = {e["label"]: e.get("text") for e in nodes[name]["assetMaterializations"][0]["metadataEntries"]}
        assert len(entries["dvc_md5"]) == 32, name
        statuses = {c["name"]: c["executionForLatestMaterialization"]["status"] for c in nodes[name]["assetChecksOrError"]["checks"]}
        blocking = {k: v for k, v in statuses.items() if k != "pii"}
        assert set(blocking.values()) == {"SUCCEEDED"}, (name, statuses)
    index_checks = {c["name"]: c["executionForLatestMaterialization"]["status"] for c in nodes["retrieval/vector_index"]["assetChecksOrError"]["checks"]}
    assert index_checks == {"retrieval_quality": "SUCCEEDED"}
    assert nodes["retrieval/vector_index"]["groupName"] == "retrieval"
    adapter = {e["label"]: e.get("text") for e in nodes["training/lora_adapter"]["assetMaterializations"][0]["metadataEntries"]}
    assert adapter["adapter_version"].startswith("lora-"), adapter
    registry = Path(instance_env["DRIFTLOOP_HOME"]) / "artifacts" / "registry"
    report = {e["label"]: e.get("text") or e.get("mdStr") for e in nodes["evaluation/eval_report"]["assetMaterializations"][0]["metadataEntries"]}
    assert report["challenger"] == adapter["adapter_version"] and "## Promotion gate: PASSED" in report["report"]
    # The default local judge ran on the real model and stated how far it can be trusted.
    assert report["judge"].startswith("Judge `local:base generator (faithfulness: K-Precision)` agreed with the hand-labelled set `packaged@"), report["judge"]
    assert "(95% CI " in report["judge"] and "12 rows)" in report["judge"] and "On 4 control pairs" in report["judge"]
    assert "| faithfulness (higher is better) |" in report["report"]
    gate = {c["name"]: c["executionForLatestMaterialization"]["status"] for c in nodes["evaluation/eval_report"]["assetChecksOrError"]["checks"]}
    assert gate == {"promotion_gate": "SUCCEEDED"}
    assert json.loads((registry / "champion.json").read_text())["version"] == adapter["adapter_version"]
    # The champion serves on the stable port, and the official openai client talks to it.
    from openai import OpenAI

    client = OpenAI(base_url=f"http://127.0.0.1:{serve_port}/v1", api_key="unused", max_retries=0, timeout=120)
    assert adapter["adapter_version"] in [m.id for m in client.models.list().data]
    reply = client.chat.completions.create(model="driftloop", messages=[{"role": "user", "content": "What does json.dumps do?"}], max_tokens=16)
    assert reply.choices[0].message.content and reply.model_extra["driftloop"]["model_version"] == adapter["adapter_version"]
    deadline = time.time() + 90
    while True:
        health = graphql(port, "{ instance { daemonHealth { allDaemonStatuses { daemonType healthy required } } } }")
        required = [d for d in health["instance"]["daemonHealth"]["allDaemonStatuses"] if d["required"]]
        if required and all(d["healthy"] for d in required):
            break
        assert time.time() < deadline, f"daemons unhealthy: {required}"
        time.sleep(3)
