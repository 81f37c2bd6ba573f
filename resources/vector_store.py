"""Where embeddings and vector indexes are kept: a local folder, mirrored to object
storage when `remote_url` is set."""

import os
from pathlib import Path

from pydantic import Field

from resources.object_store import MirroredFolder
from driftloop.retrieval.store import RetrievalStore


class VectorStore(MirroredFolder):
    root: str = Field(default="", description="Artifact folder; default <DRIFTLOOP_HOME>/artifacts/retrieval")

    def local_root(self) -> Path:
        base = Path(self.root) if self.root else Path(os.environ.get("DRIFTLOOP_HOME") or Path.cwd()) / "artifacts" / "retrieval"
        return base.resolve()

    def store(self) -> RetrievalStore:
        return RetrievalStore(self.local_root())
