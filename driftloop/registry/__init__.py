"""The model registry: adapters stored by content, never overwritten, with their lineage."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from driftloop.retrieval.artifacts import ArtifactError, publish_folder, sha256_file, staging_dir, verify


@dataclass(frozen=True)
class AdapterVersion:
    version: str
    path: Path
    lineage: dict


class AdapterRegistry:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @property
    def adapters(self) -> Path:
        return self.root / "adapters"

    def publish(self, adapter_dir: Path, lineage: dict) -> AdapterVersion:
        """Store a saved peft adapter under a version derived from its weights and config."""
        weights, config = adapter_dir / "adapter_model.safetensors", adapter_dir / "adapter_config.json"
        if not weights.is_file() or not config.is_file():
            raise ArtifactError(f"{adapter_dir} is not a saved adapter (adapter_model.safetensors and adapter_config.json expected)")
        digest = hashlib.sha256(f"{sha256_file(weights)}:{sha256_file(config)}".encode()).hexdigest()[:16]
        version = f"lora-{digest}"
        target = self.adapters / version
        if target.is_dir():
            return self.get(version)
        staging = staging_dir(self.adapters)
        for file in adapter_dir.iterdir():
            if file.is_file():
                shutil.copy2(file, staging / file.name)
        (staging / "lineage.json").write_text(json.dumps(lineage, indent=2, sort_keys=True, default=str))
        publish_folder(staging, target, {"version": version, "kind": "lora_adapter"})
        return AdapterVersion(version, target, lineage)

    def get(self, version: str) -> AdapterVersion:
        path = self.adapters / version
        if not path.is_dir():
            raise ArtifactError(f"adapter {version} is not in the registry at {self.adapters}")
        verify(path)
        return AdapterVersion(version, path, json.loads((path / "lineage.json").read_text()))

    def versions(self) -> list[str]:
        return sorted(p.name for p in self.adapters.glob("lora-*") if (p / "manifest.json").is_file()) if self.adapters.is_dir() else []
