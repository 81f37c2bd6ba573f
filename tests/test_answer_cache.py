"""No evaluation answer is generated twice: on the tiny Llama, a second report with an
unchanged champion generates only the new challenger's answers (counted on the real
generation path), reuses the rest byte for byte, and says so; a changed index or prompt
version regenerates everything."""

import numpy as np

from test_evaluation_assets import changed_copy
from driftloop.evaluation.cache import AnswerCache
from driftloop.evaluation.generate import Answerer
from driftloop.evaluation.metrics import EvalItem
from driftloop.evaluation.run import evaluate_models
from driftloop.models.embedding import load_embedder
from driftloop.prompts import load_prompt
from driftloop.retrieval.index import VectorIndex
from driftloop.retrieval.store import RetrievalStore

N = 5


def make_index(root, embedder, extra: int = 0) -> VectorIndex:
    store = RetrievalStore(root)
    rows = [{"chunk_id": f"c{i}", "doc_id": f"d{i}", "title": "", "text": f"the harbor code word is number {i}", "start_char": 0,
             "end_char": 10} for i in range(8 + extra)]
    emb, _ = store.embed([r["chunk_id"] for r in rows], [f"h{i}" for i in range(len(rows))], [r["text"] for r in rows], embedder, 8)
    folder, _ = store.build_index(emb, rows)
    return VectorIndex(folder)


def random_adapter(tiny_llama, folder):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama), LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    model.save_pretrained(folder)
    return folder


def test_a_second_report_generates_only_the_new_challengers_answers(tiny_llama, tiny_embedding_model, tmp_path):
    embedder = load_embedder(tiny_embedding_model, "cpu", "fp32")
    index = make_index(tmp_path / "retrieval", embedder)
    items = [EvalItem(f"q{i}", f"What is code word {i}?", f"The code word is number {i}.", f"the harbor code word is number {i}", f"d{i}")
             for i in range(N)]
    champion = random_adapter(tiny_llama, tmp_path / "champion")
    first_challenger = changed_copy(champion, tmp_path / "challenger-1", broken=False)
    second_challenger = changed_copy(champion, tmp_path / "challenger-2")
    answerer = Answerer(tiny_llama, "cpu", precision="fp32")
    generated, real_answer = [], answerer.answer

    def counting(name, prompts, ids, *args, **kwargs):
        generated.extend((name, qid) for qid in ids)
        return real_answer(name, prompts, ids, *args, **kwargs)

    answerer.answer = counting
    cache = AnswerCache(tmp_path / "answer_cache")

    def report(challenger, identity, index=index, prompt="rag.v1"):
        generated.clear()
        # A fresh name per report: the answerer keeps adapters loaded by name.
        name = f"challenger-{identity}"
        models = {"base": None} if challenger is None else {"base": None, "champion": champion, name: challenger}
        result = evaluate_models(answerer, index, embedder, items, models, load_prompt(prompt), k=2, max_new_tokens=4, log=lambda _: None,
                                 cache=cache, identities={"base": "base:tiny", "champion": "base:tiny+champion", name: f"base:tiny+{identity}"})
        return result, name, list(generated)

    first, _, calls = report(first_challenger, "one")
    assert len(calls) == 3 * N
    assert {m: first["models"][m]["answers_reused"] for m in first["models"]} == {"base": 0, "champion": 0, "challenger-one": 0}

    second, name, calls = report(second_challenger, "two")
    assert calls == [(name, f"q{i}") for i in range(N)], calls
    reused = {m: (second["models"][m]["answers_reused"], second["models"][m]["answers_generated"]) for m in second["models"]}
    assert reused == {"base": (N, 0), "champion": (N, 0), name: (0, N)}
    for qid, row in second["questions"].items():
        assert row["answers"]["base"] == first["questions"][qid]["answers"]["base"]
        assert row["scores"]["champion"]["nll"] == first["questions"][qid]["scores"]["champion"]["nll"]
    np.testing.assert_allclose(second["models"]["champion"]["perplexity"], first["models"]["champion"]["perplexity"])
    assert not list((tmp_path / "answer_cache").rglob("*.tmp"))

    # A new index version or a new prompt version: the base model's answers are not reused.
    assert len(report(None, "", index=make_index(tmp_path / "retrieval-2", embedder, extra=1))[2]) == N
    assert len(report(None, "", prompt="rag.v2")[2]) == N
    assert report(None, "")[2] == []
