"""The model catalog: which models the pipeline uses, loaded once per process."""

from pathlib import Path
from typing import Literal

import dagster as dg
from pydantic import Field

from driftloop.layout import Layout
from driftloop.models.embedding import Embedder, load_embedder
from driftloop.models.generator import BaseModel, resolve_base_model
from driftloop.models.hardware import resolve_device


class ModelCatalog(dg.ConfigurableResource):
    """Names resolve to packaged models, local directories or (offline-cached) hub ids."""

    embedding_model: str = Field(default="all-MiniLM-L6-v2", description="Packaged name, a sentence-transformers directory, or a model id.")
    device: str = Field(default="auto", description="auto (CUDA when present), cpu, cuda, cuda:N")
    embedding_precision: str = Field(default="auto", description="auto (on a CPU OpenVINO, bf16 inference on AMX/AVX512-BF16 CPUs and fp32 elsewhere; fp16 on CUDA), "
                                     "openvino, fp32, bf16, fp16 (torch)")
    embedding_batch_size: int = Field(default=16, gt=0)
    generator_precision: str = Field(default="auto", description="auto (bf16 on a GPU or on AMX/AVX512-BF16 CPUs, else fp32), fp32, bf16, fp16; "
                                     "evaluation and serving use the same, so the gate judges what serves")
    generator_engine: Literal["transformers", "llamacpp", "vllm", "auto"] = Field(
        default="transformers", description="transformers (any Hugging Face folder, CPU or GPU), llamacpp (the base model's GGUF on CPU, "
        "adapters exported to llama.cpp's LoRA GGUF), vllm (GPU; the image's vllm extra), auto (llamacpp on a CPU without fast bf16 "
        "when the base came from a GGUF, else transformers); evaluation and serving use the same")
    generator_model: str = Field(default="SmolLM2-135M-Instruct", description="Packaged name, a local model directory, a .gguf file, or a cached hub id.")
    cache_dir: str = Field(default="", description="Converted base models; default <DRIFTLOOP_HOME>/artifacts/base_models")

    def embedder(self) -> Embedder:
        # lru_cache inside load_embedder: every asset in this process shares one model.
        return load_embedder(self.embedding_model, self.device, self.embedding_precision, str(self._cache()))

    def engine(self, base: BaseModel) -> str:
        """The generator engine on this machine, `auto` resolved."""
        from driftloop.engines import resolve_engine

        return resolve_engine(self.generator_engine, resolve_device(self.device), base.path)

    def _cache(self) -> Path:
        return (Path(self.cache_dir) if self.cache_dir else Layout.from_env().base_models).resolve()

    def base_model(self) -> BaseModel:
        return resolve_base_model(self.generator_model, self._cache())
