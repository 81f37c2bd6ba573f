"""vLLM as the generation engine, for GPU clusters: the production image installs it
(deploy/Dockerfile, `--build-arg VLLM=...`) and the profile selects it
(`model_catalog.generator_engine: vllm`). The base model is the same Hugging Face folder
transformers loads; adapters stay peft folders, applied per request as `LoRARequest`s,
and vLLM's automatic prefix caching does the reuse.

vLLM's offline `LLM` returns whole completions, so a streamed row's sink gets its token
ids when its completion is done, not as they are decoded.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

from driftloop.engines import EngineError
from driftloop.evaluation.generate import BASE, DTYPES, Answer, generator_precision


class VllmGenerator:
    def __init__(self, base_path: str, device: str = "cuda", precision: str = "auto", slots: int = 8, max_lora_rank: int = 64) -> None:
        try:
            import vllm
        except ImportError as err:
            raise EngineError("generator engine vllm needs the vllm package (the GPU image's build argument VLLM); it is not installed") from err
        from transformers import AutoTokenizer

        if not device.startswith("cuda"):
            raise EngineError(f"generator engine vllm runs on a CUDA device, not {device!r}; use transformers or llamacpp on CPU")
        self.precision = generator_precision(precision, device)
        self.device = device
        self.tokenizer = AutoTokenizer.from_pretrained(base_path)
        self.llm = vllm.LLM(model=base_path, dtype=DTYPES[self.precision], enable_lora=True, max_loras=4, max_lora_rank=max_lora_rank,
                            enable_prefix_caching=True, max_num_seqs=max(slots, 1))
        self._vllm = vllm
        self.adapters: dict[str, object] = {}
        self.merged: str | None = None

    def add_adapter(self, name: str, path: Path) -> None:
        from vllm.lora.request import LoRARequest

        if name == BASE or name in self.adapters:
            raise ValueError(f"adapter name {name!r} is taken")
        self.adapters[name] = LoRARequest(name, len(self.adapters) + 1, str(path))

    def merge(self, path: Path) -> None:
        self.add_adapter("champion", path)
        self.merged = "champion"

    def add_adapter_over_merged(self, name: str, path: Path, merged: Path | None) -> None:
        self.add_adapter(name, path)

    def reused_tokens(self) -> int:
        return 0  # vLLM counts its prefix-cache hits in its own metrics

    def answer(self, name: str, prompts: Sequence[str], ids: Sequence[str], max_new_tokens: int = 96, batch_size: int = 8,
               temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None, stop: Sequence[str] = (),
               sinks: Sequence[Callable[[int], None] | None] | None = None) -> list[Answer]:
        active = self.merged if name == BASE else name
        if name != BASE and name not in self.adapters:
            raise KeyError(f"no adapter named {name!r}; loaded: {sorted(self.adapters)}")
        sampling = self._vllm.SamplingParams(max_tokens=max_new_tokens, temperature=max(temperature, 0.0), top_p=top_p, seed=seed,
                                             stop=list(stop) or None, include_stop_str_in_output=True)
        started = time.perf_counter()
        outputs = self.llm.generate(list(prompts), sampling, lora_request=self.adapters.get(active) if active else None, use_tqdm=False)
        seconds = (time.perf_counter() - started) / max(len(prompts), 1)
        answers = []
        for n, output in enumerate(outputs):
            completion = output.outputs[0]
            if sinks and sinks[n] is not None:
                for token in completion.token_ids:
                    sinks[n](int(token))
            answers.append(Answer(ids[n], completion.text.strip(), seconds, len(completion.token_ids)))
        return answers

    def answer_nll(self, name: str, prompts: Sequence[str], references: Sequence[str]):
        raise EngineError("the vLLM engine generates; likelihoods are scored by transformers (Answerer.generate_with)")
