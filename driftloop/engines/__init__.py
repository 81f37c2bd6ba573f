"""Generation engines, a setting (`ModelCatalog.generator_engine`): the same bundle and the
same evaluation generate through `transformers` (any Hugging Face folder, CPU or GPU, the
default), llama.cpp (the GGUF the base model came from, on CPU, `xllamacpp`) or vLLM
(GPU clusters). Evaluation and serving read the one setting, so the gate judges answers
of the engine and quantisation that serves.

Every engine offers what `driftloop.evaluation.generate.Answerer` offers the service:
`tokenizer`, `precision`, `merge(adapter)`, `add_adapter(name, adapter)`,
`add_adapter_over_merged(name, adapter, merged)`, `answer(name, prompts, ids, ...)` and
`reused_tokens()`."""

from __future__ import annotations

from pathlib import Path

ENGINES = ("transformers", "llamacpp", "vllm")


class EngineError(RuntimeError):
    """The engine cannot run this model here; the message says what is missing."""


def resolve_engine(engine: str, device: str, base_path: str) -> str:
    """`auto`: llama.cpp on a CPU without fast bf16 when the base model came from a GGUF,
    transformers everywhere else. Measured (BENCHMARKS.md, "Generator engines"): with
    torch held to AVX2 kernels and fp32, llama.cpp answered evaluation's batches 2.0x
    faster; on AVX512-BF16 the two tied and on AMX transformers served 1.15x faster."""
    if engine != "auto":
        return check_engine(engine)
    from driftloop.models.hardware import cpu_has_fast_bf16

    if not device.startswith("cpu") or cpu_has_fast_bf16():
        return "transformers"
    from driftloop.engines.llamacpp import base_gguf

    try:
        base_gguf(Path(base_path))
    except EngineError:
        return "transformers"
    return "llamacpp"


def check_engine(engine: str) -> str:
    if engine not in ENGINES:
        raise EngineError(f"generator engine {engine!r} is not one of {', '.join(ENGINES)}")
    return engine


def load_generator(engine: str, base_path: str, device: str = "cpu", *, precision: str = "auto", prefix_cache_mb: int = 512,
                   slots: int = 8):
    """The generator of `engine` on the base model at `base_path`; `slots`: requests one
    llama.cpp or vLLM engine decodes together."""
    check_engine(engine)
    if engine == "llamacpp":
        from driftloop.engines.llamacpp import LlamaCppGenerator

        return LlamaCppGenerator(base_path, slots=slots)
    if engine == "vllm":
        from driftloop.engines.vllm import VllmGenerator

        return VllmGenerator(base_path, device, precision=precision, slots=slots)
    from driftloop.evaluation.generate import Answerer

    return Answerer(base_path, device, precision=precision, prefix_cache_mb=prefix_cache_mb)
