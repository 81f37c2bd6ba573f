"""The retrieval stage materialized in process on a tiny model and corpus."""

import dagster as dg

from assets.data import data_assets, data_checks
from assets.retrieval import EMBEDDINGS, VECTOR_INDEX, retrieval_assets
from resources.models import ModelCatalog
from resources.vector_store import VectorStore


def run(corpus, dvc_store, catalog, vector_store, select=None, **index_config):
    config = {
        "ops": {
            "data__source_documents": {"config": {"source": str(corpus)}},
            "data__qa_pairs": {"config": {"eval_fraction": 0.4}},
            "retrieval__chunks": {"config": {"chunk_tokens": 48, "overlap_tokens": 8}},
            "retrieval__vector_index": {"config": {"min_recall": 0.0, "min_mrr": 0.0, **index_config}},
        }
    }
    return dg.materialize(
        [*data_assets, *data_checks, *retrieval_assets],
        resources={"dvc": dvc_store, "models": catalog, "vector_store": vector_store},
        run_config=config, selection=select, raise_on_error=False,
    )


def meta(result, key):
    return next(iter(result.asset_materializations_for_node(key.to_python_identifier()))).metadata


def test_retrieval_is_incremental_and_gated(corpus, dvc_store, tiny_embedding_model, tmp_path):
    catalog = ModelCatalog(embedding_model=tiny_embedding_model, device="cpu", embedding_precision="fp32")
    vector_store = VectorStore(root=str(tmp_path / "retrieval"))
    store = vector_store.store()

    first = run(corpus, dvc_store, catalog, vector_store)
    assert first.success
    embedded = meta(first, EMBEDDINGS)
    assert embedded["reused_from_cache"].value == 0 and embedded["embedded"].value == embedded["dagster/row_count"].value
    index_meta = meta(first, VECTOR_INDEX)
    assert index_meta["served"].value is True and index_meta["eval_questions"].value > 0
    served = store.current_index_folder()
    assert served.name == index_meta["version"].value

    (corpus / "added.md").write_text("# Lanterns\n\n" + "Paper lanterns float over quiet rivers at dusk. " * 12)
    second = run(corpus, dvc_store, catalog, vector_store)
    assert second.success
    again = meta(second, EMBEDDINGS)
    assert 0 < again["embedded"].value < 5
    assert again["reused_from_cache"].value == embedded["dagster/row_count"].value
    assert store.current_index_folder() != served

    kept = store.current_index_folder()
    (corpus / "more.md").write_text("# Kites\n\n" + "Box kites climb on steady coastal winds. " * 12)
    gated = run(corpus, dvc_store, catalog, vector_store, min_recall=1.0, min_mrr=1.0)
    evaluation = next(e for e in gated.get_asset_check_evaluations() if e.check_name == "retrieval_quality")
    assert not evaluation.passed and "previous index keeps serving" in evaluation.description
    assert store.current_index_folder() == kept, "an index that failed its gate must not be served"


def test_training_examples_are_shown_what_the_served_index_retrieves(corpus, dvc_store, tiny_embedding_model, tmp_path):
    from assets.data import INSTRUCTION_DATASET
    from driftloop.data.records import read_jsonl
    from driftloop.retrieval.index import VectorIndex
    from driftloop.retrieval.quality import holds_answer

    catalog = ModelCatalog(embedding_model=tiny_embedding_model, device="cpu", embedding_precision="fp32")
    vector_store = VectorStore(root=str(tmp_path / "retrieval"))
    result = run(corpus, dvc_store, catalog, vector_store)
    assert result.success
    built = meta(result, INSTRUCTION_DATASET)
    served = VectorIndex(vector_store.store().current_index_folder())
    assert built["contexts"].value == "retrieved" and built["index_version"].value == served.version
    qa = {r["qa_id"]: r for r in read_jsonl(dvc_store.dataset_path("qa_pairs"))}
    eval_docs = {r["doc_id"] for r in qa.values() if r["split"] == "eval"}
    eval_only = [c["text"] for c in served.chunks if c["doc_id"] in eval_docs]
    examples = list(read_jsonl(dvc_store.dataset_path("instruction_dataset")))
    assert examples and built["eval_chunks_skipped"].value > 0, "the tiny corpus's eval documents should be retrieved for some train question"
    with_k_chunks = 0
    for example in examples:
        user, answer = example["messages"][1]["content"], example["messages"][-1]["content"]
        assert holds_answer(user, answer), user
        assert not any(text[:80] in user for text in eval_only)
        shown = [c for c in served.chunks if c["text"][:80] in user]
        assert len(shown) >= 2, f"{example['qa_id']} is shown {len(shown)} chunks"
        with_k_chunks += len(shown) >= 3
    # Where the answer straddles two chunks the question's own section stands in for one.
    assert with_k_chunks >= len(examples) - built["section_fallback"].value
