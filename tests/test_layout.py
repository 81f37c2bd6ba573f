"""The layout rules a newcomer relies on: an import path names the folder it lives in,
and product code finds its files as package data, not by counting parent folders."""

import ast
import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PRODUCT = ["driftloop", "orchestration", "assets", "resources", "sensors", "bento"]
SCANNED = [*PRODUCT, "tests", "bench", "reliability", "deploy"]


def _python_files(folders):
    return [p for folder in folders for p in sorted((REPO / folder).rglob("*.py")) if "build" not in p.relative_to(REPO).parts]


def _project_imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else \
            [a.name for a in node.names] if isinstance(node, ast.Import) else []
        yield from (n for n in names if n.split(".")[0] in PRODUCT)


def test_every_project_import_names_a_folder_or_file_of_the_repository():
    unresolved = []
    for path in _python_files(SCANNED):
        for name in _project_imports(path):
            # `from a.b import c` names module a/b.py or package a/b/.
            target = REPO.joinpath(*name.split("."))
            if not (target.with_suffix(".py").is_file() or (target / "__init__.py").is_file()):
                unresolved.append(f"{path.relative_to(REPO)}: {name}")
    assert not unresolved, "imports that name no folder or file:\n" + "\n".join(unresolved)


def test_packages_are_installed_from_their_own_folders():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    setuptools = project["tool"]["setuptools"]
    assert "package-dir" not in setuptools, "a package-dir remap makes import paths name folders that do not exist"
    for package in setuptools["packages"]:
        assert (REPO.joinpath(*package.split(".")) / "__init__.py").is_file(), package
    assert set(PRODUCT) <= set(setuptools["packages"])


def test_product_code_finds_files_without_counting_parent_folders():
    tricks = re.compile(r"\.parents\[\d+\]|sys\.path\b")
    found = [f"{p.relative_to(REPO)}:{n}: {line.strip()}" for p in _python_files(PRODUCT)
             for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1) if tricks.search(line)]
    assert not found, "\n".join(found)


def test_no_private_name_is_imported_from_another_module():
    found = []
    for path in _python_files(SCANNED):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PRODUCT:
                found += [f"{path.relative_to(REPO)}: {node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
    assert not found, "\n".join(found)
