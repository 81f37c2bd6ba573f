"""The embedder's OpenVINO path must give the fp32 torch path's vectors, within bf16 rounding."""

import importlib.util

import numpy as np
import pytest

from driftloop.models.embedding import Embedder, resolve_embedding_model

# find_spec, not importorskip: importing openvino before the opt-out file exists sends a usage event.
pytestmark = pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="needs the openvino package")

TEXTS = [
    "def add(a, b):\n    return a + b",
    "The list type is a mutable sequence that holds references to objects. " * 30,
    "dict.get returns the value for key if key is in the dictionary, else default.",
    "x",
]


@pytest.fixture(autouse=True)
def _telemetry_home(tmp_path, monkeypatch):
    """The opt-out file goes to a test HOME, and proves it is written before openvino loads."""
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    (tmp_path / "user").mkdir()


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_openvino_vectors_match_fp32_and_the_ir_is_cached(tiny_embedding_model, tmp_path):
    reference = Embedder(tiny_embedding_model, "cpu", "fp32").encode(TEXTS)
    fast = Embedder(tiny_embedding_model, "cpu", "openvino")
    vectors = fast.encode(TEXTS, batch_size=2)
    assert fast.describe()["precision"] == "openvino"
    assert vectors.shape == reference.shape and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert _cosines(vectors, reference).min() > 0.995
    irs = list((tmp_path / "home" / "artifacts" / "base_models" / "openvino").glob("*/model.xml"))
    assert len(irs) == 1 and not list(irs[0].parent.parent.glob(".*tmp"))
    assert (tmp_path / "user" / "intel" / "openvino_telemetry").read_text().strip() == "0"
    assert not (tmp_path / "user" / "intel" / "openvino_ga_cid").exists()
    again = Embedder(tiny_embedding_model, "cpu", "auto")
    assert again.precision == "openvino" and np.allclose(again.encode(TEXTS), vectors, atol=1e-6)


@pytest.mark.slow
def test_openvino_keeps_the_real_model_within_a_cosine_floor_of_fp32():
    path = resolve_embedding_model("all-MiniLM-L6-v2")
    reference = Embedder(path, "cpu", "fp32").encode(TEXTS)
    vectors = Embedder(path, "cpu", "openvino").encode(TEXTS)
    assert _cosines(vectors, reference).min() > 0.999


def test_models_openvino_cannot_pool_fall_back_or_refuse(tiny_embedding_model, tmp_path):
    from sentence_transformers import SentenceTransformer, models

    transformer = SentenceTransformer(tiny_embedding_model, device="cpu")[0]
    cls_model = SentenceTransformer(modules=[transformer, models.Pooling(32, "cls")])
    cls_model.save(str(tmp_path / "cls"))
    assert Embedder(str(tmp_path / "cls"), "cpu", "auto").precision in {"fp32", "bf16"}
    with pytest.raises(ValueError, match="mean-pooled"):
        Embedder(str(tmp_path / "cls"), "cpu", "openvino")


def test_openvino_encodes_from_many_threads_as_from_one(tiny_embedding_model):
    """The service embeds queries from several threads at once; one shared OpenVINO request
    answered "Infer Request is busy" (HTTP 500s under load)."""
    from concurrent.futures import ThreadPoolExecutor

    fast = Embedder(tiny_embedding_model, "cpu", "openvino")
    alone = [fast.encode([text, TEXTS[0]]) for text in TEXTS * 4]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda text: fast.encode([text, TEXTS[0]]), TEXTS * 4))
    for a, b in zip(alone, together, strict=True):
        assert np.allclose(a, b, atol=1e-6)


def test_openvino_infers_in_f32_where_driftloop_sees_no_fast_bf16(tiny_embedding_model, monkeypatch):
    import driftloop.models.hardware as hardware

    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    assert Embedder(tiny_embedding_model, "cpu", "openvino").describe()["openvino_inference_precision"] == "f32"
