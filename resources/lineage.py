"""Which lineage a step belongs to: its name (the prefix of its asset keys, groups, jobs
and resources), its home (every folder it writes) and its source of documents.

One code location may hold several lineages (orchestration/lineage.py), each over its own
corpus. The default lineage has no name: its keys are `data/qa_pairs` and its home is
DRIFTLOOP_HOME, as they always were. Another lineage, say `runbooks`, owns
`runbooks/data/qa_pairs` and `<DRIFTLOOP_HOME>/lineages/runbooks`, and nothing it runs
reads or writes outside them.
"""

from __future__ import annotations

import re
from pathlib import Path

import dagster as dg
from pydantic import Field

from driftloop.layout import Layout

NAME = re.compile(r"[a-z][a-z0-9_]{0,39}")


def check_name(name: str) -> str:
    if name and (not NAME.fullmatch(name) or "__" in name or name.endswith("_")):
        raise ValueError(f"lineage name {name!r}: use lower-case letters, digits and single underscores, starting with a letter "
                         "(it prefixes asset keys, jobs and resource keys)")
    return name


class Lineage(dg.ConfigurableResource):
    name: str = Field(default="", description="Prefix of this lineage's asset keys, groups, jobs, sensors and resource keys; "
                      "empty for the default lineage.")
    home: str = Field(default="", description="Root of this lineage's data and artifacts; empty: DRIFTLOOP_HOME, else the working directory.")
    source: str = Field(default="", description="Its documents (a folder or a .jsonl file); empty: DRIFTLOOP_SOURCE_DIR, else the Python docs.")

    def layout(self) -> Layout:
        # A named lineage's folders all live under its home: the DRIFTLOOP_* path overrides
        # of the environment belong to the default lineage, so two lineages never share one.
        return Layout.at(self.home, {}) if self.home else Layout.from_env()

    def key(self, key: dg.AssetKey) -> dg.AssetKey:
        return dg.AssetKey([self.name, *key.path]) if self.name else key

    def group(self, group: str) -> str:
        return f"{self.name}_{group}" if self.name else group

    def job(self, job: str) -> str:
        return f"{self.name}__{job}" if self.name else job

    def resource_key(self, key: str) -> str:
        return f"{self.name}_{key}" if self.name else key

    def label(self) -> str:
        return self.name or "default"


def lineage_home(name: str, home: str | Path | None = None) -> Path:
    """A named lineage's home: `home` when given, else <DRIFTLOOP_HOME>/lineages/<name>."""
    return Path(home).resolve() if home else Layout.from_env().home / "lineages" / name
