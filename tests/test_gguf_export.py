"""A peft adapter exported to llama.cpp's LoRA GGUF (driftloop/engines/gguf.py) changes
llama.cpp's next-token distribution as it changes transformers': on the real SmolLM2
(its packaged 4-bit GGUF under llama.cpp, the same weights dequantised under
transformers in fp32) with a random adapter on every attention and MLP projection.

Tolerance: llama.cpp's 4-bit kernels quantise activations to 8 bits, so even the bare
base model's top-10 log-probabilities differ from transformers' by up to about 0.35;
with the adapter the difference stays there (mean 0.2), while an export that misses
llama.cpp's rotary row order for the query and key projections is off by 1 to 2."""

import json
from pathlib import Path

import pytest


QUESTIONS = ["What does ls -l show?", "How do I copy a file with cp?", "What is the grep -v option?", "Explain Python decorators."]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    from driftloop.models.generator import PACKAGED_GGUF, packaged_gguf, resolve_base_model

    name = next(iter(PACKAGED_GGUF))
    return resolve_base_model(name, tmp_path_factory.mktemp("base_models")), packaged_gguf(name)


# A minute of converting the real GGUF (tests/test_llamacpp_engine.py serves the packaged one): run with
# the scenarios (`make closed-loop`), out of CI's time budget.
@pytest.mark.scenario
def test_the_exported_adapter_moves_llama_cpp_as_peft_moves_transformers(base, tmp_path):
    import torch
    import xllamacpp
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from driftloop.engines.gguf import export_lora_gguf

    model_info, gguf = base
    tokenizer = AutoTokenizer.from_pretrained(model_info.path)
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_info.path, dtype=torch.float32),
                           LoraConfig(r=8, lora_alpha=16, init_lora_weights=False,
                                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            parameter.data *= 0.3
    model.save_pretrained(tmp_path / "adapter")
    model.eval()
    exported = export_lora_gguf(tmp_path / "adapter", Path(model_info.path), tmp_path / "adapter.gguf")
    assert exported["tensors"] == 30 * 7 * 2 and len(exported["sha256"]) == 64 and exported["alpha"] == 16.0

    params = xllamacpp.CommonParams()
    params.model.path = str(gguf)
    params.n_parallel, params.n_ctx, params.warmup = 1, 2048, False
    params.cpuparams.n_threads = params.cpuparams_batch.n_threads = 2
    lora = xllamacpp.CommonAdapterLoraInfo()
    lora.path, lora.scale = str(tmp_path / "adapter.gguf"), 1.0
    params.lora_adapters, params.lora_init_without_apply = [lora], True
    server = xllamacpp.Server(params)

    errors, effects = [], []
    for question in QUESTIONS:
        text = tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True)
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)
        with torch.inference_mode():
            adapted = torch.log_softmax(model(**ids).logits[0, -1], -1)
            with model.disable_adapter():
                plain = torch.log_softmax(model(**ids).logits[0, -1], -1)
        out = server.handle_completions({"prompt": text, "n_predict": 1, "temperature": 0, "cache_prompt": False, "n_probs": 10,
                                         "lora": [{"id": 0, "scale": 1.0}]})
        top = out["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
        assert top[0]["id"] == int(adapted.argmax()), json.dumps(top[:3])
        errors += [abs(t["logprob"] - float(adapted[t["id"]])) for t in top]
        effects += [abs(float(adapted[t["id"]]) - float(plain[t["id"]])) for t in top]
    mean_error, mean_effect = sum(errors) / len(errors), sum(effects) / len(effects)
    assert max(errors) < 0.6 and mean_error < 0.35, (max(errors), mean_error)
    # The adapter moved the distribution well beyond that noise, so the match is the adapter's.
    assert mean_effect > 2 * mean_error, (mean_effect, mean_error)


def test_an_adapter_llama_cpp_cannot_express_is_refused_by_name(tmp_path):
    import numpy as np
    from safetensors.numpy import save_file

    from driftloop.engines.gguf import ExportError, export_lora_gguf

    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "num_attention_heads": 4}))
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "use_dora": True}))
    save_file({"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": np.zeros((4, 8), "float32")},
              str(adapter / "adapter_model.safetensors"))
    with pytest.raises(ExportError, match="use_dora"):
        export_lora_gguf(adapter, base, tmp_path / "out.gguf")
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8}))
    save_file({"base_model.model.lm_head.lora_A.weight": np.zeros((4, 8), "float32")}, str(adapter / "adapter_model.safetensors"))
    with pytest.raises(ExportError, match="lm_head"):
        export_lora_gguf(adapter, base, tmp_path / "out.gguf")
    assert not (tmp_path / "out.gguf").exists()
