"""Where embeddings and vector indexes are kept."""

import os
from pathlib import Path

import dagster as dg
from pydantic import Field

from driftloop.retrieval.store import RetrievalStore


class VectorStore(dg.ConfigurableResource):
    root: str = Field(default="", description="Artifact folder; default <DRIFTLOOP_HOME>/artifacts/retrieval")

    def store(self) -> RetrievalStore:
        base = Path(self.root) if self.root else Path(os.environ.get("DRIFTLOOP_HOME") or Path.cwd()) / "artifacts" / "retrieval"
        return RetrievalStore(base.resolve())
