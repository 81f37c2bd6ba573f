"""The router in front of the LLM (driftloop.routing): passages cut where a reader would cut
them, the two models trained and held out as the asset does, the written out-of-scope
questions that a corpus covers left out of training, the router's weights as JSON, the
asset with its gate, and a served bundle answering by each path without generating."""

from __future__ import annotations

import json

import numpy as np
import pytest

from driftloop.routing import (
    OUT_OF_SCOPE_REPLY, Logistic, Retrieved, Router, evaluate_router, extract, token_f1, train_router, written_out_of_scope,
)

MANUAL = """Some closing words of the section before. It ends here.

### `json.dumps(obj, indent=None)`

Serialize obj to a JSON formatted str. If indent is a non-negative integer, the output is
pretty-printed with that indent level.

### `json.loads(s)`

Deserialize s (a str instance containing a JSON document) to a Python object.
"""

OPENING = ("Serialize obj to a JSON formatted str. If indent is a non-negative integer, the output is pretty-printed with that "
           "indent level.")
RST = """Installing packages
===================

Packages are installed with apt. Run apt install followed by the package name.

Removing packages
-----------------

Use apt remove to remove a package and keep its configuration files.
"""


def test_the_passage_is_the_opening_of_the_section_the_question_names():
    passage, covered = extract("What does `json.dumps` do?", MANUAL)
    assert passage == OPENING and covered == 1.0
    assert extract("What does json.loads do?", MANUAL)[0].startswith("Deserialize s")
    assert extract("How do I remove packages?", RST)[0] == "Use apt remove to remove a package and keep its configuration files."
    # No heading matches: the sentence that shares most words, within its section.
    passage, _ = extract("Which command installs a package by name?", RST)
    assert passage.startswith("Packages are installed with apt.") or passage.startswith("Run apt install")
    assert extract("anything", "") == ("", 0.0)
    assert token_f1("Serialize obj to a JSON str", "Serialize obj to a JSON formatted str.") > 0.9


def synthetic(n: int, centre: np.ndarray, rng, top: float, text: str) -> Retrieved:
    vectors = centre + 0.3 * rng.standard_normal((n, centre.size))
    chunks = [[{"chunk_id": f"c{i}", "doc_id": "d", "text": text, "score": top + 0.05 * rng.standard_normal()},
               {"chunk_id": "x", "doc_id": "d", "text": "Unrelated.", "score": top - 0.2}] for i in range(n)]
    return Retrieved([f"What does `json.dumps` do? ({i})" for i in range(n)], vectors.astype(np.float32), chunks)


def test_trained_and_held_out_like_the_asset_and_saved_as_json(tmp_path):
    rng = np.random.default_rng(0)
    inside, outside = np.eye(16)[0] * 2, np.eye(16)[1] * 2
    train_in, held_in = synthetic(80, inside, rng, 0.7, MANUAL), synthetic(30, inside, rng, 0.7, MANUAL)
    train_out, held_out = synthetic(60, outside, rng, 0.2, "Unrelated."), synthetic(30, outside, rng, 0.2, "Unrelated.")
    # Half the answers are the section's opening, half something the chunk does not say.
    answers = [OPENING if i % 2 else "Something else entirely." for i in range(80)]
    router, seen = train_router(train_in, answers, train_out, "test-embedder", k=3)
    assert seen["in_scope"] == 80 and seen["out_of_scope"] == 60 and seen["extractive_positive_share"] == 0.5
    figures = evaluate_router(router, held_in, [OPENING] * 30, held_out)
    assert figures["in_scope_kept"] == 1.0 and figures["out_of_scope_caught"] == 1.0
    assert figures["share_without_generation"] >= 0.5 and set(figures["share_by_path"]) == {"rag", "extractive", "out_of_scope"}

    path = router.save(tmp_path)
    stored = json.loads(path.read_text())
    assert stored["version"].startswith("router-") and stored["embedding_model"] == "test-embedder"
    again = Router.load(tmp_path)
    for i, question in enumerate(held_out.questions[:5] + held_in.questions[:5]):
        vectors, chunks = (held_out, i) if i < 5 else (held_in, i - 5)
        a = router.route(question, vectors.vectors[chunks], vectors.chunks[chunks])
        b = again.route(question, vectors.vectors[chunks], vectors.chunks[chunks])
        assert (a.path, a.passage) == (b.path, b.passage)
    assert Router.load(tmp_path / "missing") is None


def test_written_questions_the_corpus_covers_are_left_out_of_training():
    rng = np.random.default_rng(1)
    inside = np.eye(8)[0] * 2
    corpus_questions = synthetic(40, inside, rng, 0.7, MANUAL)
    # A cooking corpus: "out of scope" questions that retrieve as well as its own questions.
    written = synthetic(20, np.eye(8)[1] * 2, rng, 0.2, "Unrelated.")
    covered = synthetic(10, np.eye(8)[2] * 2, rng, 0.9, MANUAL)
    both = Retrieved(written.questions + covered.questions, np.vstack([written.vectors, covered.vectors]), written.chunks + covered.chunks)
    _, seen = train_router(corpus_questions, [OPENING if i % 2 else "No." for i in range(40)], both, "e", k=3)
    assert seen["out_of_scope"] == 20 and seen["out_of_scope_left_out"] == 10


def test_a_router_needs_both_classes_and_the_written_sets_are_apart():
    with pytest.raises(ValueError, match="both classes"):
        Logistic.fit(np.zeros((4, 2)), np.array([1, 1, 1, 1]), 0.5)
    train, held = written_out_of_scope("train"), written_out_of_scope("eval")
    assert len(train) >= 100 and len(held) >= 50 and not set(train) & set(held)


@pytest.mark.slow
def test_the_asset_trains_gates_and_the_bento_takes_only_a_router_that_passed(corpus, dvc_store, tiny_embedding_model, tmp_path):
    import dagster as dg

    from assets.data import data_assets, data_checks
    from assets.keys import ROUTER
    from assets.retrieval import retrieval_assets
    from assets.serving import served_router, router
    from resources.models import ModelCatalog
    from resources.vector_store import VectorStore

    catalog = ModelCatalog(embedding_model=tiny_embedding_model, device="cpu", embedding_precision="fp32")
    vector_store = VectorStore(root=str(tmp_path / "retrieval"))
    instance = dg.DagsterInstance.ephemeral()

    def run(**router_config):
        config = {"ops": {"data__source_documents": {"config": {"source": str(corpus)}}, "data__qa_pairs": {"config": {"eval_fraction": 0.4}},
                          "retrieval__chunks": {"config": {"chunk_tokens": 48, "overlap_tokens": 8}},
                          "retrieval__vector_index": {"config": {"min_recall": 0.0, "min_mrr": 0.0}},
                          "serving__router": {"config": router_config}}}
        result = dg.materialize([*data_assets, *data_checks, *retrieval_assets, router], instance=instance, run_config=config,
                                resources={"dvc": dvc_store, "models": catalog, "vector_store": vector_store})
        return {k: v.value for k, v in result.asset_materializations_for_node(ROUTER.to_python_identifier())[0].metadata.items()}

    from resources.lineage import Lineage

    context = dg.build_asset_context(instance=instance)
    trained = run()
    figures, floors = trained["figures"], trained["floors"]
    assert set(figures) >= {"in_scope_kept", "out_of_scope_caught", "extractive_f1", "share_by_path", "share_without_generation"}
    held = all(figures[name] is None or figures[name] >= floor for name, floor in floors.items())
    assert trained["passed"] is held and (trained["gate"] == "passed") is held
    assert json.loads(open(trained["path"]).read())["version"] == trained["router_version"]
    index_version = trained["index_version"]
    assert (served_router(context, Lineage(), index_version) is not None) is held
    # A router trained on another index never rides along, nor one switched off.
    assert served_router(context, Lineage(), "another-index") is None
    assert run(enabled=False)["passed"] is False and served_router(context, Lineage(), index_version) is None


def test_aserved_router_answers_without_generating_and_says_which_path(tmp_path, tiny_llama, tiny_embedding_model):
    from driftloop.models.embedding import load_embedder
    from driftloop.retrieval.index import VectorIndex
    from driftloop.routing import retrieve
    from driftloop.serving.bundle import build_bundle
    from serving_helpers import call, make_bundle, read_request_log, serve

    first = make_bundle(tmp_path, tiny_llama, tiny_embedding_model)
    index = VectorIndex(first.index_dir)
    embedder = load_embedder(tiny_embedding_model, "cpu", "fp32")
    inside = index.chunks[5]["text"]  # a question that is a chunk's own text retrieves it at cosine 1
    outside = "zq vexillology of marmalade cosmonauts"
    tops = [c[0]["score"] for c in retrieve(embedder, index, [inside, outside], 3).chunks]
    assert tops[0] > 0.999 and tops[1] < 0.995, tops
    # Scope by the top score alone, the cut between the two; every in-scope question extractive.
    cut = (tops[0] + tops[1]) / 2
    dim = embedder.encode(["x"]).shape[1]
    router = Router(Logistic([0.0] * dim + [2000.0, 0.0, 0.0], -2000.0 * cut, 0.5), Logistic([0.0] * 6, 10.0, 0.7), tiny_embedding_model, 3)
    bundle = build_bundle(tmp_path / "bundles", base_model=first.spec["base_model"], adapter=first.adapter_dir,
                          adapter_version=first.spec["adapter_version"], index_folder=first.index_dir,
                          embedding_model=first.spec["embedding_model"], prompt_version="rag.v1", settings=first.spec["settings"],
                          router=router.save(tmp_path / "router"))
    assert bundle.spec["router_version"] == router.version
    with serve(tmp_path, bundle) as running:
        port = running["port"]
        status, body = call(port, "/answer", {"question": inside, "max_new_tokens": 8})
        answer = json.loads(body)
        assert status == 200 and answer["route"] == "extractive" and answer["completion_tokens"] == 0
        assert answer["answer"] and answer["answer"] in " ".join(inside.split()) and [c["chunk_id"] for c in answer["chunks"]] == ["c005"]
        status, body = call(port, "/answer", {"question": outside, "max_new_tokens": 8})
        answer = json.loads(body)
        assert status == 200 and answer["route"] == "out_of_scope" and answer["answer"] == OUT_OF_SCOPE_REPLY and answer["chunks"] == []
        # A chat request with the client's own system prompt is generated, whatever the router would say.
        status, body = call(port, "/v1/chat/completions", {"model": "driftloop", "max_tokens": 4, "messages": [
            {"role": "system", "content": "Be brief."}, {"role": "user", "content": outside}]})
        assert status == 200 and json.loads(body)["driftloop"]["route"] == "rag"
        metrics = {line.split()[0]: float(line.split()[-1]) for line in call(port, "/metrics", key=None)[1].splitlines()
                   if line.startswith("driftloop_routes_total")}
        assert metrics == {'driftloop_routes_total{path="extractive"}': 1, 'driftloop_routes_total{path="out_of_scope"}': 1}, metrics
    logged = [r for r in read_request_log(tmp_path / "data" / "serving") if r.get("route")]
    assert sorted(r["route"]["path"] for r in logged) == ["extractive", "out_of_scope"]
