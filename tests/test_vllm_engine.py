"""The vLLM engine's contract with vLLM (driftloop/engines/vllm.py), with a stand-in `vllm`
module: no GPU is here to run the real one. What is checked is what driftloop decides:
the engine's settings, LoRA requests per adapter and the sampling it asks for."""

import sys
import types

import pytest

from driftloop.engines import EngineError, load_generator
from driftloop.evaluation.generate import BASE


@pytest.fixture
def fake_vllm(monkeypatch):
    made = {}

    class SamplingParams:
        def __init__(self, **kwargs):
            self.kwargs = kwargs

    class LLM:
        def __init__(self, **kwargs):
            made["llm"], self.calls = kwargs, []
            made["calls"] = self.calls

        def generate(self, prompts, sampling, lora_request=None, use_tqdm=True):
            self.calls.append((prompts, sampling.kwargs, lora_request))
            completion = types.SimpleNamespace(text=" an answer ", token_ids=[5, 6, 7])
            return [types.SimpleNamespace(outputs=[completion]) for _ in prompts]

    class LoRARequest:
        def __init__(self, name, lora_id, path):
            self.name, self.id, self.path = name, lora_id, path

    module = types.ModuleType("vllm")
    module.LLM, module.SamplingParams = LLM, SamplingParams
    lora = types.ModuleType("vllm.lora")
    request = types.ModuleType("vllm.lora.request")
    request.LoRARequest = LoRARequest
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.setitem(sys.modules, "vllm.lora", lora)
    monkeypatch.setitem(sys.modules, "vllm.lora.request", request)
    return made


def test_vllm_serves_adapters_per_request_with_prefix_caching(fake_vllm, tiny_llama, tmp_path):
    engine = load_generator("vllm", tiny_llama, "cuda", precision="auto", slots=16)
    assert fake_vllm["llm"]["enable_lora"] and fake_vllm["llm"]["enable_prefix_caching"] and fake_vllm["llm"]["max_num_seqs"] == 16
    assert fake_vllm["llm"]["dtype"] == "bfloat16"  # the transformers engine's rule on a GPU
    engine.merge(tmp_path / "champion")
    engine.add_adapter_over_merged("shadow", tmp_path / "shadow", tmp_path / "champion")
    streamed = []
    [answer] = engine.answer(BASE, ["p"], ["q"], 12, temperature=0.7, top_p=0.9, seed=3, stop=["\n"], sinks=[streamed.append])
    assert (answer.answer, answer.new_tokens, streamed) == ("an answer", 3, [5, 6, 7])
    prompts, sampling, lora = fake_vllm["calls"][-1]
    assert sampling == {"max_tokens": 12, "temperature": 0.7, "top_p": 0.9, "seed": 3, "stop": ["\n"], "include_stop_str_in_output": True}
    assert (lora.name, lora.path) == ("champion", str(tmp_path / "champion"))
    engine.answer("shadow", ["p"], ["q"], 4)
    assert fake_vllm["calls"][-1][2].name == "shadow"
    with pytest.raises(KeyError):
        engine.answer("other", ["p"], ["q"], 4)


def test_vllm_is_refused_without_cuda_or_without_the_package(fake_vllm, tiny_llama, monkeypatch):
    with pytest.raises(EngineError, match="CUDA"):
        load_generator("vllm", tiny_llama, "cpu")
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(EngineError, match="vllm package"):
        load_generator("vllm", tiny_llama, "cuda")
