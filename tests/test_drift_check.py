"""A drift check without Dagster (driftloop.monitoring.report): reference embeddings are
computed once per dataset version and sample, and the check reads the window since the
current deployment from the request log and writes its report folder. An embedder that
averages fixed random word vectors stands in for a model: queries on other words drift."""

import hashlib
import json
import random
from datetime import UTC, datetime

import numpy as np

from conftest import WORDS
from driftloop.layout import Layout
from driftloop.monitoring.drift import DriftConfig
from driftloop.monitoring.report import LOG_START, check_drift, reference_embeddings
from driftloop.serving.requestlog import RequestLog

NEW_TOPIC = "kubernetes pod eviction quota scheduler taint toleration ingress helm chart namespace sidecar daemonset".split()
CONFIG = DriftConfig(embedding_min_samples=30, mmd_permutations=100)


class WordEmbedder:
    def __init__(self):
        self.encoded: list[str] = []

    def describe(self) -> dict:
        return {"model": "word-average", "dimension": 16}

    def encode(self, texts, batch_size=16) -> np.ndarray:
        self.encoded += texts
        out = np.zeros((len(texts), 16), dtype=np.float32)
        for n, text in enumerate(texts):
            for word in text.lower().strip("?").split():
                out[n] += np.random.default_rng(int(hashlib.sha256(word.encode()).hexdigest()[:8], 16)).standard_normal(16)
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


def questions(words, n, seed) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.sample(words, 6)) + "?" for _ in range(n)]


def serve(layout: Layout, asked, model="lora-aaaa"):
    log = RequestLog(layout.request_log)
    for i, question in enumerate(asked):
        log.request(request_id=f"req-{model}-{i:012d}", endpoint="answer", question=question, answer="An answer.", model_version=model,
                    latency_s=0.5, prompt_tokens=100, completion_tokens=20, chunk_ids=["c1"], scores=[0.6])


def test_reference_embeddings_are_computed_once_per_dataset_version(tmp_path):
    asked = questions(WORDS, 40, seed=0)
    first, again, changed = WordEmbedder(), WordEmbedder(), WordEmbedder()
    vectors, sample = reference_embeddings(asked, "md5-a", first, "words", tmp_path, limit=30, seed=0, batch_size=8)
    assert len(sample) == 30 and set(sample) <= set(asked) and first.encoded == sample and vectors.shape == (30, 16)
    cached, same = reference_embeddings(asked, "md5-a", again, "words", tmp_path, limit=30, seed=0, batch_size=8)
    assert again.encoded == [] and same == sample and np.array_equal(cached, vectors)
    reference_embeddings(asked, "md5-b", changed, "words", tmp_path, limit=30, seed=0, batch_size=8)
    assert changed.encoded == sample and len(list(tmp_path.glob("*.npy"))) == 2


def test_the_window_since_the_deployment_drifts_on_a_new_topic_and_the_report_is_written(tmp_path):
    layout = Layout.at(tmp_path / "home", {})
    embedder = WordEmbedder()
    reference = questions(WORDS, 80, seed=1)
    ref_vectors = embedder.encode(reference)
    quiet = check_drift(layout, embedder, ref_vectors, reference, CONFIG, max_queries=500, batch_size=8, run_id="run00001abc")
    assert not quiet.report.enough_data and not quiet.report.drifted and "not enough data" in quiet.report.summary()
    assert quiet.window["start"] == LOG_START.isoformat() and quiet.window["serving"] is None

    serve(layout, questions(WORDS, 60, seed=2))
    layout.deployments.parent.mkdir(parents=True)
    went_live = datetime.now(UTC).isoformat()
    layout.deployments.write_text(json.dumps({"at": went_live, "target": "local", "action": "deployed", "tag": "driftloop:b",
                                              "model_version": "lora-bbbb", "drift_window": "w0"}) + "\n")
    serve(layout, questions(NEW_TOPIC, 60, seed=3), model="lora-bbbb")
    torn = layout.request_log / "requests" / f"date={datetime.now(UTC):%Y-%m-%d}" / "torn.jsonl"
    torn.write_text('{"at": "2026-11-23T00:00:00+00:00"\n')
    shifted = check_drift(layout, embedder, ref_vectors, reference, CONFIG, max_queries=500, batch_size=8, run_id="run00002abc")
    assert shifted.report.drifted and shifted.report.n_current == 60, shifted.report.summary()
    assert shifted.window["start"] == went_live and (shifted.window["serving"], shifted.window["retrained_for"]) == ("lora-bbbb", "w0")
    assert shifted.corrupt_lines == 1

    assert shifted.folder.parent == layout.drift_reports and shifted.folder.name.endswith("-run00002")
    body = json.loads(shifted.report_path.read_text())
    assert (body["window"], body["corrupt_lines"], body["drifted"]) == (shifted.window, 1, True)
    assert (shifted.folder / "report.md").read_text() == shifted.report.to_markdown() + "\n"
    assert (shifted.folder / "drift.png").read_bytes() == shifted.plot and shifted.plot.startswith(b"\x89PNG")
    assert not list(shifted.folder.glob(".*.tmp"))
