"""The code location image's tag: a hash of everything the Dockerfile copies in, so
the same sources always give the same tag and any change gives a new one.

    python deploy/image_tag.py            # prints e.g. sha-3f2a9c0d41be
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Exactly the paths the Dockerfile COPYs, and the Dockerfile itself.
CONTEXT = ("deploy/Dockerfile", "requirements.lock", "pyproject.toml", "README.md", "driftloop", "orchestration", "assets",
           "resources", "sensors", "bento")


def _files(root: Path) -> list[Path]:
    found = []
    for entry in CONTEXT:
        path = root / entry
        candidates = [path] if path.is_file() else sorted(path.rglob("*"))
        found += [p for p in candidates if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"]
    return sorted(found)


def image_tag(root: Path = ROOT) -> str:
    digest = hashlib.sha256()
    for path in _files(root):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return f"sha-{digest.hexdigest()[:12]}"


if __name__ == "__main__":
    print(image_tag(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT))
