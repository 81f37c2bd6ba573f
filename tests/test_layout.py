"""The layout rules a newcomer relies on: an import path names the folder it lives in,
product code finds its files as package data, not by counting parent folders, and reads
its settings when it runs, never when a module is imported."""

import ast
import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PRODUCT = ["driftloop", "orchestration", "assets", "resources", "sensors", "bento", "cli"]
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


def test_readme_configuration_table_lists_every_variable_the_code_reads():
    from driftloop.settings import variables

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    table = readme[readme.index("## Configuration"):]
    table = table[: table.index("\n\n", table.index("| variable |"))]
    documented = set(re.findall(r"^\| `(DRIFTLOOP_\w+)`", table, re.M))
    named = {m for p in _python_files(PRODUCT) for m in re.findall(r"\bDRIFTLOOP_[A-Z0-9_]+\b", p.read_text(encoding="utf-8"))}
    used = named | variables()
    assert used - documented == set(), "read by the code, missing from README's configuration table"
    assert documented - used == set(), "in README's configuration table, read by no code"


# The one module-level read: BentoML imports the service module only to start the service,
# and its decorators need the service's settings when the classes are declared.
IMPORT_TIME_READS = {("bento/service.py", "ServiceSettings.from_env")}
READERS = {"os.environ", "os.getenv", "Settings.from_env", "ServiceSettings.from_env", "Settings", "ServiceSettings", "Layout.from_env"}


def _import_time_nodes(tree: ast.Module):
    """Every node Python evaluates when the module is imported: module and class bodies,
    decorators, default values and annotations, but no function body."""
    pending = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            args = node.args
            pending += [*getattr(node, "decorator_list", []), *args.defaults, *(d for d in args.kw_defaults if d is not None)]
            continue
        yield node
        pending += list(ast.iter_child_nodes(node))


def _dotted(node) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def test_nothing_reads_the_environment_when_a_module_is_imported():
    found = []
    for path in _python_files(PRODUCT):
        where = str(path.relative_to(REPO))
        for node in _import_time_nodes(ast.parse(path.read_text(encoding="utf-8"))):
            name = _dotted(node.func) if isinstance(node, ast.Call) else _dotted(node) if isinstance(node, ast.Attribute) else ""
            if name in READERS and (where, name) not in IMPORT_TIME_READS:
                found.append(f"{where}:{node.lineno}: {name}")
    assert not found, "read when the module is imported:\n" + "\n".join(sorted(set(found)))


def test_every_folder_derives_from_one_home_and_four_overrides(tmp_path, monkeypatch):
    from driftloop.layout import Layout

    monkeypatch.chdir(tmp_path)
    for name in ("DRIFTLOOP_HOME", "DRIFTLOOP_REQUEST_LOG", "DRIFTLOOP_INBOX_DIR", "DRIFTLOOP_DVC_REMOTE", "BENTOML_HOME"):
        monkeypatch.delenv(name, raising=False)
    assert Layout.from_env().home == tmp_path.resolve()
    layout = Layout.from_env({"DRIFTLOOP_HOME": str(tmp_path / "home")})
    home = (tmp_path / "home").resolve()
    assert layout.registry == home / "artifacts" / "registry" and layout.deployments == home / "artifacts" / "serving" / "deployments.jsonl"
    assert (layout.request_log, layout.inbox, layout.dvc_remote) == (home / "data" / "serving", home / "data" / "inbox", str(home / "data" / "dvc-remote"))
    moved = Layout.at(home, {"DRIFTLOOP_REQUEST_LOG": "/logs", "DRIFTLOOP_INBOX_DIR": "/in", "DRIFTLOOP_DVC_REMOTE": "s3://b/dvc", "BENTOML_HOME": "/bento"})
    assert (moved.request_log, moved.inbox, moved.dvc_remote, moved.bentoml) == (Path("/logs"), Path("/in"), "s3://b/dvc", Path("/bento"))
    assert moved.registry == layout.registry


def test_no_file_of_the_project_is_over_500_lines():
    long = [f"{p.relative_to(REPO)}: {n}" for p in _python_files(SCANNED) if (n := len(p.read_text(encoding="utf-8").splitlines())) > 500]
    assert not long, "\n".join(long)


def test_the_image_copies_every_package_it_installs():
    # `pip install .` in the image fails on a package folder the Dockerfile did not copy.
    packages = {p.split(".")[0] for p in tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]}
    copied = set(re.findall(r"^COPY (\w+) \1$", (REPO / "deploy" / "Dockerfile").read_text(encoding="utf-8"), re.M))
    assert packages - copied == set(), "installed but not copied into the image"


def test_the_wheel_ships_every_package_folder():
    """A folder of modules missing from pyproject's package list is missing from the wheel and
    the image (which install the project as a wheel), though the checkout runs fine."""
    root = Path(__file__).resolve().parents[1]
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {p.parent.relative_to(root).as_posix().replace("/", ".") for top in listed if "." not in top
               for p in (root / top).rglob("*.py") if "__pycache__" not in p.parts}
    assert folders == listed, f"missing from the wheel: {sorted(folders - listed)}; listed but absent: {sorted(listed - folders)}"
