"""Registry, retrieval artifacts and the DVC remote on a real S3-compatible server
(moto's server mode on loopback), through the same resource classes the local profile
binds; two working folders stand in for two pods that share only object storage."""

import hashlib
import json
from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from resources.dvc import DvcStore
from resources.registry import ModelRegistry
from resources.vector_store import VectorStore
from driftloop.artifacts import verify
from driftloop.storage import push

BUCKET = "driftloop-test"


@pytest.fixture(scope="module")
def s3_endpoint():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3(s3_endpoint, monkeypatch):
    import s3fs

    for key, value in {"AWS_ACCESS_KEY_ID": "driftloop", "AWS_SECRET_ACCESS_KEY": "driftloop-secret", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    fs = s3fs.S3FileSystem(endpoint_url=s3_endpoint)
    if fs.exists(BUCKET):
        fs.rm(BUCKET, recursive=True)
    fs.mkdir(BUCKET)
    fs.invalidate_cache()
    return fs


class HashEncoder:
    """A deterministic encoder: the artifact path under test is the store's, not a model's."""

    fingerprint, precision, dimension = "hash-encoder", "fp32", 8

    def encode(self, texts, batch_size=16, progress=None):
        rows = [np.frombuffer(hashlib.sha256(t.encode()).digest()[:32], dtype=np.uint8)[:8].astype(np.float32) for t in texts]
        vectors = np.stack(rows)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    def describe(self):
        return {"name": self.fingerprint}


CHUNKS = [{"chunk_id": f"c{i}", "doc_id": "d", "title": "t", "text": f"chunk number {i}", "start_char": 0, "end_char": 10} for i in range(12)]


@dg.asset
def adapter_and_index(context: dg.AssetExecutionContext, model_registry: ModelRegistry, vector_store: VectorStore) -> dg.MaterializeResult:
    staging = Path(context.instance.storage_directory()) / "adapter"
    staging.mkdir(parents=True, exist_ok=True)
    (staging / "adapter_model.safetensors").write_bytes(np.random.default_rng(0).bytes(300_000))
    (staging / "adapter_config.json").write_text(json.dumps({"r": 8}))
    registry = model_registry.registry()
    version = registry.publish(staging, {"run": context.run.run_id}).version
    registry.promote(version, metrics={"faithfulness": 0.9}, data_versions={})
    store = vector_store.store()
    embeddings, _ = store.embed([c["chunk_id"] for c in CHUNKS], [c["chunk_id"] for c in CHUNKS], [c["text"] for c in CHUNKS], HashEncoder(), 4)
    folder, _ = store.build_index(embeddings, CHUNKS)
    store.promote_index(folder, {"recall": 1.0})
    return dg.MaterializeResult(metadata={"version": version, "index": folder.name})


@dg.asset
def read_back(model_registry: ModelRegistry, vector_store: VectorStore) -> dg.MaterializeResult:
    import faiss

    champion = model_registry.registry().champion()
    folder = vector_store.store().current_index_folder()
    verify(champion.path)
    manifest = verify(folder)
    index = faiss.read_index(str(folder / "index.faiss"))
    return dg.MaterializeResult(metadata={"champion": champion.version, "index": folder.name, "count": manifest["count"], "ntotal": index.ntotal})


def _resources(root: Path, endpoint: str) -> dict:
    return {
        "model_registry": ModelRegistry(root=str(root / "registry"), remote_url=f"s3://{BUCKET}/registry", endpoint_url=endpoint),
        "vector_store": VectorStore(root=str(root / "retrieval"), remote_url=f"s3://{BUCKET}/retrieval", endpoint_url=endpoint),
    }


def _metadata(result, key: str) -> dict:
    event = result.asset_materializations_for_node(key)[0]
    return {k: v.value for k, v in event.metadata.items()}


def test_registry_and_index_round_trip_through_object_storage(s3, s3_endpoint, tmp_path):
    written = dg.materialize([adapter_and_index], resources=_resources(tmp_path / "pod-a", s3_endpoint))
    assert written.success
    wrote = _metadata(written, "adapter_and_index")

    remote = set(s3.find(BUCKET))
    assert f"{BUCKET}/registry/adapters/{wrote['version']}/adapter_model.safetensors" in remote
    assert {f"{BUCKET}/registry/champion.json", f"{BUCKET}/registry/promotions.jsonl"} <= remote
    assert f"{BUCKET}/retrieval/index/{wrote['index']}/manifest.json" in remote
    assert not any("/." in p for p in remote), "staging folders and lock files stay local"

    # A second pod with an empty working folder sees exactly what the first one published.
    read = dg.materialize([read_back], resources=_resources(tmp_path / "pod-b", s3_endpoint))
    assert read.success
    got = _metadata(read, "read_back")
    assert got == {"champion": wrote["version"], "index": wrote["index"], "count": len(CHUNKS), "ntotal": len(CHUNKS)}
    weights = f"adapters/{wrote['version']}/adapter_model.safetensors"
    assert (tmp_path / "pod-b/registry" / weights).read_bytes() == (tmp_path / "pod-a/registry" / weights).read_bytes()

    # Nothing changed since: a push copies nothing.
    again = push(tmp_path / "pod-a" / "registry", f"s3://{BUCKET}/registry", s3_endpoint)
    assert again.copied == [] and again.unchanged > 0


def test_a_changed_alias_is_pushed_even_at_the_same_size(s3, s3_endpoint, tmp_path):
    local = tmp_path / "folder"
    local.mkdir()
    (local / "alias.json").write_text('{"version": "lora-aaaa"}')
    assert push(local, f"s3://{BUCKET}/alias", s3_endpoint).copied == ["alias.json"]
    (local / "alias.json").write_text('{"version": "lora-bbbb"}')
    assert push(local, f"s3://{BUCKET}/alias", s3_endpoint).copied == ["alias.json"]
    assert s3.cat(f"{BUCKET}/alias/alias.json") == b'{"version": "lora-bbbb"}'


def test_dvc_remote_on_object_storage(s3, s3_endpoint, tmp_path):
    store = DvcStore(workspace_dir=str(tmp_path / "workspace"), remote_url=f"s3://{BUCKET}/dvc", endpoint_url=s3_endpoint)
    path = store.dataset_path("qa_pairs")
    path.parent.mkdir(parents=True)
    original = b"".join(json.dumps({"id": i, "q": f"question {i}"}).encode() + b"\n" for i in range(50))
    path.write_bytes(original)
    version = store.commit("qa_pairs")
    assert version.remote == f"s3://{BUCKET}/dvc"
    assert s3.find(f"{BUCKET}/dvc/files/md5/{version.md5[:2]}") == [f"{BUCKET}/dvc/files/md5/{version.md5[:2]}/{version.md5[2:]}"]

    # Lose the local copy and the local cache: only the remote can bring the bytes back.
    path.unlink()
    import shutil

    shutil.rmtree(store.root / ".dvc" / "cache")
    assert store.restore("qa_pairs", version.md5).read_bytes() == original
