"""Assemble the corpus shapes of bench/corpora from packages no one here wrote.

    python bench/corpora/assemble.py [--cache DIR] [--out DIR] [shape ...]

Each shape is fetched with the registry's own client (`apt-get download` for Debian,
`pip download --no-binary :all:` for a PyPI sdist), unpacked into the cache
(`dpkg-deb -x`, `tarfile`), and the pages of that shape are copied into
`<out>/<shape>/` (default bench/corpora/build/, not committed), one folder per corpus,
ready for DRIFTLOOP_SOURCE_DIR. `<out>/manifest.json` records each package, version
and licence. The hand-written questions were written against the versions in
`Shape.written_against`; another version is assembled with a warning, since a page the
questions name may have moved.

Man pages are roff; they are converted with mandoc (`-T html`), itself fetched from
Debian: mandoc is the BSD man page compiler, kept by its upstream and in every Debian
release, and its HTML keeps the sections as <h1>/<h2> (its `-T markdown` reads mdoc only,
and groff's HTML writes layout tables instead of sections).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_CACHE = Path.home() / ".cache" / "driftloop-corpora"
DEFAULT_OUT = HERE / "build"
GIT_GUIDES = ["user-manual.html", "gittutorial.html", "gittutorial-2.html", "gitcore-tutorial.html", "giteveryday.html",
              "gitworkflows.html", "gitcvs-migration.html", "gitsubmodules.html", "MyFirstContribution.html", "howto/*.html"]
# Character set tables (iso-8859-*, koi8-r, ...) are tables of code points, not prose.
CHARSET_PAGES = ["iso*", "latin*", "koi8*", "cp125*", "armscii*", "tis-620*", "ascii*", "charsets*", "utf*", "unicode*"]


@dataclass(frozen=True)
class Shape:
    name: str
    what: str
    registry: str          # deb or pypi
    package: str
    written_against: str   # the version the hand-written questions were written against
    license: str
    root: str              # folder inside the unpacked package
    include: tuple[str, ...]
    exclude: tuple[str, ...] = ()
    convert: str = "copy"  # or "man": roff through mandoc to HTML


SHAPES = {s.name: s for s in [
    Shape("reference", "PostgreSQL 15 SQL command reference: every page shares Synopsis/Description/Parameters/Examples",
          "deb", "postgresql-doc-15", "15.18-0+deb12u1", "PostgreSQL License", "usr/share/doc/postgresql-doc-15/html", ("sql-*.html",)),
    Shape("faq", "The Debian FAQ: chapters of numbered questions with their answers, navigation bars on every page",
          "deb", "debian-faq", "11.1", "verbatim-copying permission (SPI; see debian-faq's copyright)", "usr/share/doc/debian/FAQ", ("*.en.html",)),
    Shape("tutorial", "Git's tutorials, user manual and how-tos: long narrative prose with examples",
          "deb", "git-doc", "1:2.39.5-0+deb12u3", "GPL-2", "usr/share/doc/git-doc", tuple(GIT_GUIDES)),
    Shape("manpages", "Linux man-pages section 7 overviews (roff, converted by mandoc): NAME/DESCRIPTION/SEE ALSO on every page",
          "deb", "manpages", "6.03-2", "Linux man-pages licences (mostly verbatim, some GPL-2+/BSD; see manpages' copyright)",
          "usr/share/man/man7", ("*.7.gz",), tuple(f"{p}.7.gz" for p in CHARSET_PAGES), convert="man"),
    Shape("markdown", "Black's documentation: a software project's MyST markdown docs (docs/**/*.md), change log included",
          "pypi", "black", "24.10.0", "MIT", "black-24.10.0/docs", ("*.md", "*/*.md")),
]}


def run(argv: list[str], cwd: Path | None = None) -> str:
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"assemble: `{' '.join(argv)}` failed ({done.returncode}): {done.stderr.strip()[-800:]}")
    return done.stdout


def fetch_deb(package: str, cache: Path) -> tuple[Path, str]:
    """The newest .deb of `package` in the cache (downloaded when missing), unpacked; and its version."""
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    found = sorted(debs.glob(f"{package}_*.deb"))
    if not found:
        run(["apt-get", "download", package], cwd=debs)
        found = sorted(debs.glob(f"{package}_*.deb"))
    deb = found[-1]
    version = run(["dpkg-deb", "-f", str(deb), "Version"]).strip()
    root = cache / "unpacked" / f"{package}_{version}"
    if not root.is_dir():
        staging = root.with_name(root.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        staging.parent.mkdir(parents=True, exist_ok=True)
        run(["dpkg-deb", "-x", str(deb), str(staging)])
        staging.rename(root)
    return root, version


def fetch_pypi(package: str, version: str, cache: Path) -> tuple[Path, str]:
    sdists = cache / "sdists"
    sdists.mkdir(parents=True, exist_ok=True)
    archive = sdists / f"{package}-{version}.tar.gz"
    if not archive.is_file():
        run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:", f"{package}=={version}", "-d", str(sdists)])
    root = cache / "unpacked" / f"{package}_{version}"
    if not root.is_dir():
        staging = root.with_name(root.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        with tarfile.open(archive) as tar:
            tar.extractall(staging, filter="data")
        staging.rename(root)
    return root, version


def select(folder: Path, shape: Shape) -> list[Path]:
    pages = {p for pattern in shape.include for p in folder.glob(pattern) if p.is_file() and not p.is_symlink()}
    return sorted(p for p in pages if not any(fnmatch.fnmatch(p.name, x) for x in shape.exclude))


def man_to_html(page: Path, mandoc: Path) -> str:
    import gzip

    roff = gzip.decompress(page.read_bytes()).decode("utf-8", "replace")
    done = subprocess.run([str(mandoc), "-T", "html", "-man"], input=roff, capture_output=True, text=True)
    if done.returncode > 1:  # 1 = warnings only
        raise SystemExit(f"assemble: mandoc failed on {page.name}: {done.stderr.strip()[-400:]}")
    return done.stdout


def assemble(shape: Shape, cache: Path, out: Path) -> dict:
    if shape.registry == "deb":
        root, version = fetch_deb(shape.package, cache)
    else:
        root, version = fetch_pypi(shape.package, shape.written_against, cache)
    if version != shape.written_against:
        print(f"assemble: warning: {shape.name} uses {shape.package} {version}; its questions were written against {shape.written_against}",
              file=sys.stderr)
    folder = root / shape.root
    pages = select(folder, shape)
    if not pages:
        raise SystemExit(f"assemble: no pages matched {shape.include} under {folder}")
    target = out / shape.name
    shutil.rmtree(target, ignore_errors=True)
    mandoc = fetch_deb("mandoc", cache)[0] / "usr" / "bin" / "mandoc" if shape.convert == "man" else None
    for page in pages:
        rel = page.relative_to(folder)
        if mandoc is not None:
            dest = target / f"{rel.name.removesuffix('.gz')}.html"
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(man_to_html(page, mandoc), encoding="utf-8")
        else:
            dest = target / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(page, dest)
    return {"shape": shape.name, "what": shape.what, "registry": shape.registry, "package": shape.package, "version": version,
            "license": shape.license, "pages": len(pages), "folder": str(target)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("shapes", nargs="*", help=f"shapes to assemble, of {', '.join(SHAPES)} (default: all)")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    unknown = sorted(set(args.shapes) - set(SHAPES))
    if unknown:
        parser.error(f"unknown shapes {unknown}; known: {', '.join(SHAPES)}")
    args.out.mkdir(parents=True, exist_ok=True)
    manifest_path = args.out / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    for name in args.shapes or list(SHAPES):
        entry = assemble(SHAPES[name], args.cache, args.out)
        manifest[name] = entry
        print(f"{name:10s} {entry['pages']:4d} pages  {entry['package']} {entry['version']} ({entry['license']})  -> {entry['folder']}")
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
