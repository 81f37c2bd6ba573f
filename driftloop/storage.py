"""Mirroring an artifact folder to and from object storage (S3 or any S3-compatible
server, or any other fsspec URL).

The local folder stays the working copy every reader and writer uses; object storage
is the durable copy that other pods, the serving image build and other clusters read.
Version folders are content-addressed and never rewritten, so a mirror only copies
what the other side lacks or holds different bytes of. Nothing is deleted on either
side: the registry and the retrieval store are append-only by design.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from driftloop.atomic import replace_file


@dataclass(frozen=True)
class SyncResult:
    copied: list[str]
    unchanged: int


def _filesystem(url: str, endpoint_url: str = ""):
    import fsspec

    protocol = url.split("://", 1)[0] if "://" in url else "file"
    options = {}
    if protocol in {"s3", "s3a"} and endpoint_url:
        options["endpoint_url"] = endpoint_url
    fs, root = fsspec.url_to_fs(url, **options)
    return fs, root.rstrip("/")


def _hidden(relative: str) -> bool:
    # Staging folders and temporary pointer files start with a dot: never a finished artifact.
    return any(part.startswith(".") for part in PurePosixPath(relative).parts)


def _md5(handle) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    for block in iter(lambda: handle.read(1 << 20), b""):
        digest.update(block)
    return digest.hexdigest()


def _same(local: Path, fs, remote_path: str, info: dict) -> bool:
    if local.stat().st_size != int(info.get("size") or 0):
        return False
    with local.open("rb") as handle:
        local_md5 = _md5(handle)
    etag = str(info.get("ETag") or info.get("etag") or "").strip('"')
    if etag:
        # A multipart upload's ETag is not an MD5; those are large content-addressed files, where equal size is equal content.
        return "-" in etag or etag == local_md5
    with fs.open(remote_path, "rb") as handle:
        return _md5(handle) == local_md5


def _push_order(relative: str) -> tuple:
    # Deepest files first and each folder's manifest last, so a reader of the remote copy
    # never finds a pointer or a manifest before the files they name.
    parts = PurePosixPath(relative).parts
    return (-len(parts), parts[-1] == "manifest.json", relative)


def _remote_files(fs, root: str) -> dict[str, dict]:
    if not fs.exists(root):
        return {}
    found = fs.find(root, detail=True)
    prefix = root + "/"
    return {name[len(prefix):]: info for name, info in found.items() if name.startswith(prefix) and info.get("type") != "directory"}


def push(local_root: Path, url: str, endpoint_url: str = "") -> SyncResult:
    """Copy every finished file under `local_root` that the remote lacks or holds different bytes of."""
    fs, root = _filesystem(url, endpoint_url)
    remote = _remote_files(fs, root)
    local_files = sorted((p.relative_to(local_root).as_posix() for p in local_root.rglob("*") if p.is_file()), key=_push_order)
    copied, unchanged = [], 0
    for relative in local_files:
        if _hidden(relative):
            continue
        info = remote.get(relative)
        if info is not None and _same(local_root / relative, fs, f"{root}/{relative}", info):
            unchanged += 1
            continue
        fs.put_file(str(local_root / relative), f"{root}/{relative}")
        copied.append(relative)
    return SyncResult(copied=copied, unchanged=unchanged)


def pull(url: str, local_root: Path, endpoint_url: str = "") -> SyncResult:
    """Bring down every remote file the local folder lacks or holds different bytes of;
    each lands under a temporary name and is renamed into place."""
    fs, root = _filesystem(url, endpoint_url)
    copied, unchanged = [], 0
    for relative, info in sorted(_remote_files(fs, root).items(), key=lambda item: _push_order(item[0])):
        if _hidden(relative):
            continue
        target = local_root / relative
        if target.is_file() and _same(target, fs, f"{root}/{relative}", info):
            unchanged += 1
            continue
        replace_file(target, lambda tmp, source=f"{root}/{relative}": fs.get_file(source, tmp))
        copied.append(relative)
    return SyncResult(copied=copied, unchanged=unchanged)
