"""The model registry as a resource: a local folder, mirrored to object storage when
`remote_url` is set."""

from pathlib import Path

from pydantic import Field

from driftloop.layout import Layout
from driftloop.registry import AdapterRegistry
from resources.object_store import MirroredFolder


class ModelRegistry(MirroredFolder):
    root: str = Field(default="", description="Registry folder; default <DRIFTLOOP_HOME>/artifacts/registry")

    def local_root(self) -> Path:
        base = Path(self.root) if self.root else Layout.from_env().registry
        return base.resolve()

    def registry(self) -> AdapterRegistry:
        return AdapterRegistry(self.local_root())
