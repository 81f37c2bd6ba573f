"""The default corpus: Python's own documentation, present on every interpreter.

pydoc's reference topics plus the docstrings of the pure-Python standard library,
read with `ast` so that no module is imported (importing `antigravity` opens a
browser; others have side effects too).
"""

from __future__ import annotations

import ast
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

from driftloop.data.records import Document, normalize_text

EXCLUDED_PACKAGES = frozenset(
    {
        "antigravity", "this", "idlelib", "lib2to3", "tkinter", "turtledemo", "ensurepip",
        "test", "pydoc_data", "distutils", "venv", "__phello__", "site-packages",
    }
)


def pydoc_topic_documents() -> Iterator[Document]:
    from pydoc_data.topics import topics

    for key in sorted(topics):
        text = normalize_text(topics[key])
        first_line = text.split("\n", 1)[0].strip()
        yield Document(
            doc_id=f"pydoc-topic/{key}",
            uri=f"python://pydoc_data.topics#{key}",
            title=first_line or key,
            format="pydoc",
            text=text,
        )


def _signature(node: ast.FunctionDef | ast.AsyncFunctionDef) -> str:
    args = ast.unparse(node.args)
    return f"({args})"


def _render_module(name: str, tree: ast.Module) -> str:
    parts = [f"# Module `{name}`", "", ast.get_docstring(tree) or ""]
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
            doc = ast.get_docstring(node)
            if isinstance(node, ast.ClassDef):
                parts += ["", f"## Class `{name}.{node.name}`", "", doc or ""]
                for member in node.body:
                    if isinstance(member, (ast.FunctionDef, ast.AsyncFunctionDef)) and not member.name.startswith("_"):
                        member_doc = ast.get_docstring(member)
                        if member_doc:
                            parts += ["", f"### `{name}.{node.name}.{member.name}{_signature(member)}`", "", member_doc]
            elif doc:
                parts += ["", f"## `{name}.{node.name}{_signature(node)}`", "", doc]
    return normalize_text("\n".join(parts))


def _stdlib_sources(stdlib: Path) -> Iterator[tuple[str, Path]]:
    for name in sorted(sys.stdlib_module_names):
        if name.startswith("_") or name in EXCLUDED_PACKAGES:
            continue
        package = stdlib / name
        if (package / "__init__.py").is_file():
            for path in sorted(package.rglob("*.py")):
                rel = path.relative_to(stdlib).with_suffix("")
                parts = [p for p in rel.parts if p != "__init__"]
                if any(p.startswith("_") or p in EXCLUDED_PACKAGES or p == "tests" for p in parts[1:]):
                    continue
                yield ".".join(parts), path
        elif (stdlib / f"{name}.py").is_file():
            yield name, stdlib / f"{name}.py"


def stdlib_documents(min_chars: int = 200) -> Iterator[Document]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for name, path in _stdlib_sources(stdlib):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        text = _render_module(name, tree)
        # A module without docstrings renders to its heading only: no knowledge to add.
        if len(text) < min_chars:
            continue
        yield Document(
            doc_id=f"stdlib/{name}",
            uri=f"python://stdlib/{path.relative_to(stdlib).as_posix()}",
            title=f"Module {name}",
            format="md",
            text=text,
        )


def python_docs() -> Iterator[Document]:
    yield from pydoc_topic_documents()
    yield from stdlib_documents()
