"""What a service serves, sealed in one folder: the champion adapter and the vector index
copied in, the base and embedding models named with their content hashes, the prompt
version. Its content hash is the bento's version, so the same champion on the same index
always builds the same tag, and anything different builds a new one.

The base model stays outside (it is large and shared by every version); the bundle
records its weights hash and the service refuses to start on different weights.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from driftloop.artifacts import ArtifactError, publish_folder, staging_dir, verify

SERVING_FILE = "serving.json"


@dataclass(frozen=True)
class Bundle:
    folder: Path
    spec: dict

    @property
    def version(self) -> str:
        return self.spec["bundle_version"]

    @property
    def model_version(self) -> str:
        return self.spec["model_version"]

    @property
    def adapter_dir(self) -> Path | None:
        return self.folder / "adapter" if self.spec.get("adapter_version") else None

    @property
    def shadow_dir(self) -> Path | None:
        """A second adapter of the same base model, answering copies of live requests."""
        return self.folder / "shadow_adapter" if self.spec.get("shadow_version") else None

    @property
    def index_dir(self) -> Path:
        return self.folder / "index"


def _tree_hash(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def build_bundle(root: Path, *, base_model: dict, adapter: Path | None, adapter_version: str | None, index_folder: Path,
                 embedding_model: str, prompt_version: str, settings: dict | None = None, shadow_adapter: Path | None = None,
                 shadow_version: str | None = None, router: Path | None = None) -> Bundle:
    """Seal a bundle under `root/<bundle_version>` (reused when it already exists);
    `shadow_adapter`, when given, is served beside the champion as a per-request adapter;
    `router`, a router.json (driftloop.routing) trained on this index, routes its requests."""
    verify(index_folder)
    for folder in (adapter, shadow_adapter):
        if folder is not None:
            verify(folder)
    if (shadow_adapter is None) != (shadow_version is None) or (shadow_version and shadow_version == adapter_version):
        raise ValueError(f"a shadow adapter needs its own version, other than the champion's (got {shadow_version!r})")
    staging = staging_dir(root)
    try:
        if adapter is not None:
            shutil.copytree(adapter, staging / "adapter")
        if shadow_adapter is not None:
            shutil.copytree(shadow_adapter, staging / "shadow_adapter")
        shutil.copytree(index_folder, staging / "index")
        router_version = None
        if router is not None:
            shutil.copy2(router, staging / "router.json")
            router_version = json.loads(Path(router).read_text(encoding="utf-8"))["version"]
        if (settings or {}).get("generator_engine") == "llamacpp":
            _export_for_llamacpp(staging, Path(base_model["path"]))
        spec = {
            "model_version": adapter_version or f"base:{base_model['version']}",
            "adapter_version": adapter_version,
            "base_model": base_model,
            "index_version": verify(index_folder)["version"],
            "embedding_model": embedding_model,
            "prompt_version": prompt_version,
            "settings": settings or {},
        }
        if shadow_version:
            spec["shadow_version"] = shadow_version
        if router_version:
            spec["router_version"] = router_version
        content = hashlib.sha256(json.dumps(spec, sort_keys=True).encode() + _tree_hash(staging).encode()).hexdigest()[:16]
        spec["bundle_version"] = content
        (staging / SERVING_FILE).write_text(json.dumps(spec, indent=2, sort_keys=True), encoding="utf-8")
        target = root / content
        publish_folder(staging, target, {"kind": "serving_bundle", "version": content})
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return load_bundle(target)


def _export_for_llamacpp(staging: Path, base_path: Path) -> None:
    """Each adapter sealed in beside its peft folder as llama.cpp's LoRA GGUF (covered by
    the bundle's hash); an adapter llama.cpp cannot express fails the build here, before
    anything deploys."""
    from driftloop.engines.gguf import export_lora_gguf
    from driftloop.engines.llamacpp import exported_beside

    for name in ("adapter", "shadow_adapter"):
        if (staging / name).is_dir():
            export_lora_gguf(staging / name, base_path, exported_beside(staging / name))


def load_bundle(folder: Path) -> Bundle:
    folder = Path(folder)
    verify(folder)
    path = folder / SERVING_FILE
    if not path.is_file():
        raise ArtifactError(f"{folder} is not a serving bundle: no {SERVING_FILE}")
    return Bundle(folder, json.loads(path.read_text(encoding="utf-8")))
