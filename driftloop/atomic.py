"""Atomic writes: a reader sees the old file or the whole new one, never half of it.

The bytes go to a temporary file in the target's folder (so the rename cannot cross a
file system), are fsynced, and replace the target in one rename; the folder is fsynced
after, so the rename itself survives a power cut. A failure removes the temporary file.
Every writer in driftloop and the Dagster project writes through here.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_file(path: Path, produce: Callable[[str], None]) -> None:
    """`produce(tmp)` writes the new content to a temporary path (a download, a
    serializer), which is fsynced and then replaces `path` whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        produce(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def _write(path: Path, mode: str, fill: Callable[[IO], None]) -> None:
    def produce(tmp: str) -> None:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as handle:
            fill(handle)

    replace_file(path, produce)


def write_bytes(path: Path, data: bytes) -> None:
    _write(path, "wb", lambda handle: handle.write(data))


def write_text(path: Path, text: str) -> None:
    _write(path, "w", lambda handle: handle.write(text))


def write_json(path: Path, payload, **dump_options) -> None:
    _write(path, "w", lambda handle: json.dump(payload, handle, **{"sort_keys": True, **dump_options}))


def write_jsonl(path: Path, rows: Iterable[dict]) -> int:
    """Rows one per line with sorted keys, in order: equal content gives equal bytes (and
    so an equal DVC hash). Returns the number of rows."""
    count = 0

    def fill(handle) -> None:
        nonlocal count
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False, sort_keys=True))
            handle.write("\n")
            count += 1

    _write(path, "w", fill)
    return count
