"""The one Definitions object of the driftloop code location: every lineage under
orchestration/defs/ (the default one, and any other a defs.yaml declares), on the executor
of the profile that configuration names (see orchestration/profile.py): local by default.
The settings are read when Dagster loads the code location, not when this module is imported."""

from pathlib import Path

import dagster as dg

import orchestration.defs
from driftloop.settings import Settings
from orchestration.lineage import DriftloopLineage, reset_loaded
from orchestration.profile import Profile, load_profile

# The defs module itself, not pyproject.toml's [tool.dg]: an installed wheel (the image) has
# no pyproject.toml, and loads the same lineages from its package data.
PROJECT = Path(__file__).resolve().parent.parent


def build_defs(profile: Profile, settings: Settings) -> dg.Definitions:
    """The default lineage alone, on `profile`."""
    reset_loaded()
    return dg.Definitions.merge(DriftloopLineage().build("the default lineage", settings, profile), dg.Definitions(executor=profile.executor))


@dg.definitions
def defs() -> dg.Definitions:
    settings = Settings.from_env()
    reset_loaded()
    lineages = dg.ComponentTree.from_module(defs_module=orchestration.defs, project_root=PROJECT).build_defs()
    return dg.Definitions.merge(lineages, dg.Definitions(executor=load_profile(settings).executor))
