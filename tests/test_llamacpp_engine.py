"""The llama.cpp engine (driftloop/engines/llamacpp.py) on the real packaged SmolLM2 GGUF:
adapters applied per request without leaking through llama.cpp's prompt cache, token ids
streamed to sinks, stop strings, and a serving bundle that seals the exported adapter
and serves through it. The base folder holds the GGUF's tokenizer and config only: the
engine never loads transformers weights."""

import json
from pathlib import Path

import pytest

from driftloop.engines import EngineError, load_generator
from driftloop.evaluation.generate import BASE

PROMPTS = ["<|im_start|>user\nWhat does the ls command do?<|im_end|>\n<|im_start|>assistant\n",
           "<|im_start|>user\nName three colours.<|im_end|>\n<|im_start|>assistant\n"]


@pytest.fixture(scope="module")
def gguf_base(tmp_path_factory):
    from transformers import AutoConfig, AutoTokenizer

    from driftloop.artifacts import publish_folder, staging_dir
    from driftloop.models.generator import PACKAGED_GGUF, packaged_gguf

    gguf = packaged_gguf(next(iter(PACKAGED_GGUF)))
    root = tmp_path_factory.mktemp("gguf_base")
    staging = staging_dir(root)
    AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(staging)
    config = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    config.architectures = ["LlamaForCausalLM"]  # as a converted folder's config.json says
    config.save_pretrained(staging)
    return publish_folder(staging, root / "base", {"source": str(gguf)})


@pytest.fixture(scope="module")
def adapters(gguf_base, tmp_path_factory):
    """Two random LoRA adapters (B not zero) on the attention projections of the real architecture."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    from driftloop.artifacts import publish_folder, staging_dir

    root = tmp_path_factory.mktemp("adapters")
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(gguf_base))
    out = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                                                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]), adapter_name=f"a{seed}")
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.data *= 0.5
        staging = staging_dir(root)
        peft_model.save_pretrained(staging, selected_adapters=[f"a{seed}"])
        # save_pretrained puts a named adapter in a subfolder
        inner = staging / f"a{seed}"
        for item in inner.iterdir():
            item.rename(staging / item.name)
        inner.rmdir()
        out.append(publish_folder(staging, root / f"a{seed}", {"kind": "adapter"}))
        model = peft_model.unload()
    return out


def test_a_base_model_not_converted_from_a_gguf_is_refused_by_name(tiny_llama):
    with pytest.raises(EngineError, match="GGUF base model"):
        load_generator("llamacpp", tiny_llama)
    with pytest.raises(EngineError, match="not one of"):
        load_generator("tensorrt", tiny_llama)


def test_adapters_apply_per_request_and_the_prompt_cache_never_crosses_them(gguf_base, adapters, tmp_path):
    shared = load_generator("llamacpp", str(gguf_base), slots=2)
    shared.export_dir = tmp_path / "exports"
    shared.add_adapter("one", adapters[0])
    shared.add_adapter("two", adapters[1])
    ids = ["q0", "q1"]
    base = [a.answer for a in shared.answer(BASE, PROMPTS, ids, max_new_tokens=12)]
    one = [a.answer for a in shared.answer("one", PROMPTS, ids, max_new_tokens=12)]
    two = [a.answer for a in shared.answer("two", PROMPTS, ids, max_new_tokens=12)]
    assert one != base and two != base and one != two
    assert [a.answer for a in shared.answer("two", PROMPTS, ids, max_new_tokens=12)] == two
    assert shared.reused_tokens() > 0  # the same prompts under the same adapter: llama.cpp's prompt cache answered them

    alone = load_generator("llamacpp", str(gguf_base), slots=2)
    alone.export_dir = tmp_path / "exports"
    alone.add_adapter("two", adapters[1])
    assert [a.answer for a in alone.answer("two", PROMPTS, ids, max_new_tokens=12)] == two
    assert [a.answer for a in alone.answer(BASE, PROMPTS, ids, max_new_tokens=12)] == base
    with pytest.raises(KeyError, match="three"):
        alone.answer("three", PROMPTS, ids)


def test_sinks_receive_token_ids_and_a_stop_string_ends_the_answer(gguf_base):
    generator = load_generator("llamacpp", str(gguf_base), slots=2)
    streamed: list[int] = []
    [whole] = generator.answer(BASE, PROMPTS[1:], ["q"], max_new_tokens=16, sinks=[streamed.append])
    assert whole.new_tokens == len(streamed) > 3
    assert generator.tokenizer.decode(streamed, skip_special_tokens=True).strip() == whole.answer
    word = whole.answer.split()[1]
    [cut] = generator.answer(BASE, PROMPTS[1:], ["q"], max_new_tokens=16, stop=[word])
    assert cut.answer.endswith(word) or word in cut.answer
    assert cut.new_tokens < whole.new_tokens
    seeded = [generator.answer(BASE, PROMPTS[:1], ["q"], max_new_tokens=12, temperature=1.0, seed=7)[0].answer for _ in range(2)]
    assert seeded[0] == seeded[1]


def test_a_llamacpp_bundle_seals_the_exported_adapters_and_serves_through_them(gguf_base, adapters, tiny_embedding_model, tmp_path):
    import hashlib

    from driftloop.models.embedding import load_embedder
    from driftloop.models.generator import weights_hash
    from driftloop.retrieval.store import RetrievalStore
    from driftloop.serving.bundle import build_bundle
    from driftloop.serving.engine import SHADOW, Generation

    texts = ["ls lists the files of a folder.", "Red, green and blue are colours."]
    chunks = [{"chunk_id": f"c{i}", "doc_id": f"d{i}", "title": "t", "text": t, "start_char": 0, "end_char": len(t)} for i, t in enumerate(texts)]
    store = RetrievalStore(tmp_path / "retrieval")
    embeddings, _ = store.embed([c["chunk_id"] for c in chunks], [hashlib.sha256(t.encode()).hexdigest() for t in texts], texts,
                                load_embedder(tiny_embedding_model, "cpu", "fp32"), 8)
    index_folder, _ = store.build_index(embeddings, chunks)
    base = {"name": "smollm2", "path": str(gguf_base), "version": weights_hash(gguf_base)}
    bundle = build_bundle(tmp_path / "bundles", base_model=base, adapter=adapters[0], adapter_version="v1", index_folder=index_folder,
                          embedding_model=tiny_embedding_model, prompt_version="rag.v1", settings={"generator_engine": "llamacpp"},
                          shadow_adapter=adapters[1], shadow_version="v2")
    assert (bundle.folder / "adapter.gguf").is_file() and (bundle.folder / "shadow_adapter.gguf").is_file()
    manifest = json.loads((bundle.folder / "manifest.json").read_text())
    assert "adapter.gguf" in manifest["files"]
    generation = Generation(bundle, slots=2)
    primary = generation.generate(PROMPTS, 12)
    shadow = generation.generate(PROMPTS, 12, adapter=SHADOW)
    assert [r["text"] for r in primary] != [r["text"] for r in shadow]
    assert all(r["completion_tokens"] > 0 and r["prompt_tokens"] > 10 for r in primary)


def test_auto_picks_llama_cpp_only_on_a_cpu_without_fast_bf16_and_a_gguf_base(gguf_base, tiny_llama, monkeypatch):
    from driftloop.engines import resolve_engine
    from driftloop.models import hardware

    monkeypatch.setattr(hardware, "cpu_has_fast_bf16", lambda: False)
    assert resolve_engine("auto", "cpu", str(gguf_base)) == "llamacpp"
    # A base model that did not come from a GGUF has nothing for llama.cpp to load.
    assert resolve_engine("auto", "cpu", tiny_llama) == "transformers"
    assert resolve_engine("auto", "cuda:0", str(gguf_base)) == "transformers"
    monkeypatch.setattr(hardware, "cpu_has_fast_bf16", lambda: True)
    assert resolve_engine("auto", "cpu", str(gguf_base)) == "transformers"
    assert resolve_engine("llamacpp", "cpu", tiny_llama) == "llamacpp"  # asked for by name: its own error comes at load
    with pytest.raises(EngineError, match="generator engine 'tgi' is not one of transformers, llamacpp, vllm"):
        resolve_engine("tgi", "cpu", tiny_llama)
