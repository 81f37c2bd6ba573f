"""Versioned, atomically written artifact folders with a checked manifest.

A version is a folder named by content; it is built under a temporary name and
renamed into place, so a reader sees a whole version or none. The manifest records
each file's SHA-256, and `verify` refuses a folder whose files do not match.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from driftloop.atomic import fsync_dir, write_json


class ArtifactError(RuntimeError):
    """An artifact is missing, incomplete or corrupt."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def publish_folder(staging: Path, target: Path, manifest: dict) -> Path:
    """Seal `staging` with a manifest and move it to `target` (kept if it already exists)."""
    files = {p.relative_to(staging).as_posix(): sha256_file(p) for p in sorted(staging.rglob("*")) if p.is_file()}
    (staging / "manifest.json").write_text(json.dumps({**manifest, "files": files}, indent=2, sort_keys=True))
    for path in staging.rglob("*"):
        if path.is_file():
            with path.open("rb") as handle:
                os.fsync(handle.fileno())
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        shutil.rmtree(staging)
        return target
    os.replace(staging, target)
    fsync_dir(target.parent)
    return target


def staging_dir(parent: Path) -> Path:
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=".staging-", dir=parent))


def verify(folder: Path) -> dict:
    manifest_path = folder / "manifest.json"
    if not manifest_path.is_file():
        raise ArtifactError(f"{folder} has no manifest.json: missing or incomplete artifact")
    manifest = json.loads(manifest_path.read_text())
    for name, expected in manifest["files"].items():
        path = folder / name
        if not path.is_file():
            raise ArtifactError(f"{folder}: file {name} listed in the manifest is missing")
        if sha256_file(path) != expected:
            raise ArtifactError(f"{folder}: file {name} is corrupt (SHA-256 differs from the manifest)")
    return manifest


def write_pointer(path: Path, payload: dict) -> None:
    """Atomically repoint a `current.json` at a version."""
    write_json(path, payload)


def read_pointer(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None
