"""The model catalog: which models the pipeline uses, loaded once per process."""

import dagster as dg
from pydantic import Field

from driftloop.models.embedding import Embedder, load_embedder


class ModelCatalog(dg.ConfigurableResource):
    """Names resolve to packaged models, local directories or (offline-cached) hub ids."""

    embedding_model: str = Field(default="all-MiniLM-L6-v2", description="Packaged name, a sentence-transformers directory, or a model id.")
    device: str = Field(default="auto", description="auto (CUDA when present), cpu, cuda, cuda:N")
    embedding_precision: str = Field(default="auto", description="auto (bf16 on AMX/AVX512-BF16 CPUs, fp16 on CUDA, else fp32), fp32, bf16, fp16")
    embedding_batch_size: int = Field(default=16, gt=0)

    def embedder(self) -> Embedder:
        # lru_cache inside load_embedder: every asset in this process shares one model.
        return load_embedder(self.embedding_model, self.device, self.embedding_precision)
