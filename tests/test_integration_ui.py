"""`make demo`, reduced: the real webserver and daemon come up on a project-local
instance, the main job materializes the default corpus with the real embedding model
through the CLI, and the UI's GraphQL API shows the lineage with DVC versions and
passing checks, the retrieval quality gate included."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
pytestmark = [pytest.mark.integration, pytest.mark.slow]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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


def test_demo_brings_up_ui_with_the_data_stage_materialized(instance_env):
    port = free_port()
    ui = subprocess.Popen(
        [str(BIN / "dagster"), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
        cwd=ROOT, env=instance_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        # The instance's SQLite schema is created by the first process; start the UI first, as `make demo` does.
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=5)
                break
            except OSError:
                assert time.time() < deadline and ui.poll() is None, "webserver did not come up"
                time.sleep(1)
        run = subprocess.run(
            [str(BIN / "dagster"), "job", "execute", "-f", "orchestration/definitions.py", "-j", "driftloop_pipeline"],
            cwd=ROOT, env=instance_env, capture_output=True, text=True, timeout=600,
        )
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        data = graphql(
            port,
            """{ assetNodes { assetKey { path } groupName
                 assetMaterializations(limit: 1) { metadataEntries { label ... on TextMetadataEntry { text } } }
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
        deadline = time.time() + 90
        while True:
            health = graphql(port, "{ instance { daemonHealth { allDaemonStatuses { daemonType healthy required } } } }")
            required = [d for d in health["instance"]["daemonHealth"]["allDaemonStatuses"] if d["required"]]
            if required and all(d["healthy"] for d in required):
                break
            assert time.time() < deadline, f"daemons unhealthy: {required}"
            time.sleep(3)
    finally:
        os.killpg(ui.pid, signal.SIGINT)
        try:
            ui.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(ui.pid, signal.SIGKILL)
