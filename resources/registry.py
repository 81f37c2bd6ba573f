"""The model registry as a resource: a local folder by default."""

import os
from pathlib import Path

import dagster as dg
from pydantic import Field

from driftloop.registry import AdapterRegistry


class ModelRegistry(dg.ConfigurableResource):
    root: str = Field(default="", description="Registry folder; default <DRIFTLOOP_HOME>/artifacts/registry")

    def registry(self) -> AdapterRegistry:
        base = Path(self.root) if self.root else Path(os.environ.get("DRIFTLOOP_HOME") or Path.cwd()) / "artifacts" / "registry"
        return AdapterRegistry(base.resolve())
