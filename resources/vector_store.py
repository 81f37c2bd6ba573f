"""Where embeddings and vector indexes are kept: a local folder, mirrored to object
storage when `remote_url` is set."""

from pathlib import Path

from pydantic import Field

from driftloop.layout import Layout
from driftloop.retrieval.store import RetrievalStore
from resources.object_store import MirroredFolder


class VectorStore(MirroredFolder):
    root: str = Field(default="", description="Artifact folder; default <DRIFTLOOP_HOME>/artifacts/retrieval")

    def local_root(self) -> Path:
        base = Path(self.root) if self.root else Layout.from_env().retrieval
        return base.resolve()

    def store(self) -> RetrievalStore:
        return RetrievalStore(self.local_root())
