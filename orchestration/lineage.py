"""The lineage as a Dagster Component: a corpus, its models and settings, and everything
driftloop builds from them (datasets, index, adapters, registry and champion, service,
schedules and sensors), instantiated from a `defs.yaml`.

Each folder under orchestration/defs/ holds one lineage. The default one has no name and
keeps the keys, jobs and home driftloop always had; every other lineage prefixes its
asset keys, groups, jobs, sensors and resource keys with its name and keeps its data and
artifacts under its own home, so two lineages in one code location never touch each
other's files, models or service. `dg scaffold defs orchestration.lineage.DriftloopLineage
<name>` writes a working defs.yaml for a new one.

    type: orchestration.lineage.DriftloopLineage
    attributes:
      name: runbooks
      source: /srv/docs/runbooks            # a folder of documents or a .jsonl file
      serve_port: 3011                       # its service (the next port is its supervisor's)
      resources:                             # fields of its resources, as in a profile file
        models: {generator_model: SmolLM2-360M-Instruct}
      assets:                                # its defaults for each asset's settings
        retrieval/chunks: {chunk_tokens: 300}
        evaluation/eval_report: {min_questions: 40}
      schedules: {retrain_cron: "0 4 * * 0", timezone: Europe/Paris}
      sensors: running
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import dagster as dg
import yaml
from pydantic import Field

from assets import data, evaluation, monitoring, retrieval, serving, training
from assets.stage import ConfigError
from driftloop.layout import Layout
from driftloop.settings import Settings, SettingsError
from orchestration.jobs import build_jobs
from orchestration.profile import Profile, ProfileError, load_profile
from orchestration.schedules import build_schedules
from resources.dvc import DvcStore
from resources.lineage import Lineage, check_name, lineage_home
from resources.models import ModelCatalog
from resources.registry import ModelRegistry
from resources.vector_store import VectorStore
from sensors.canary import canary_sensor
from sensors.drift import drift_sensors
from sensors.new_documents import new_documents_sensor
from sensors.run_failures import run_failure_sensor

RESOURCES = {"dvc": DvcStore, "models": ModelCatalog, "vector_store": VectorStore, "model_registry": ModelRegistry}
STAGES = (data, retrieval, training, evaluation, serving, monitoring)


class LineageError(ValueError):
    pass


class Schedules(dg.Model):
    retrain_cron: str | None = Field(default=None, description="The weekly retrain's cron; default DRIFTLOOP_RETRAIN_CRON.")
    drift_cron: str | None = Field(default=None, description="The daily drift check's cron; default DRIFTLOOP_DRIFT_CRON.")
    timezone: str | None = Field(default=None, description="The schedules' time zone; default DRIFTLOOP_TIMEZONE.")


@dataclass(frozen=True)
class Built:
    """One lineage as loaded: what its neighbours must not share."""

    lineage: Lineage
    port: int
    where: str


# The lineages the current load has built, by their defs.yaml: a second lineage with a name,
# port or home already taken is refused by name. `reset_loaded()` starts a load afresh.
_loaded: dict[str, Built] = {}


def reset_loaded() -> None:
    _loaded.clear()


def _claim(built: Built) -> None:
    home = Path(built.lineage.layout().home)
    for other in (b for where, b in _loaded.items() if where != built.where):
        other_home = Path(other.lineage.layout().home)
        if other.lineage.name == built.lineage.name:
            raise LineageError(f"{built.where}: lineage name {built.lineage.label()!r} is taken by {other.where}; each lineage needs its own name")
        if {built.port, built.port + 1} & {other.port, other.port + 1}:
            raise LineageError(f"{built.where}: serve_port {built.port} (and its supervisor's {built.port + 1}) collides with "
                               f"{other.where}'s {other.port}/{other.port + 1}; give each lineage ports of its own")
        if home == other_home or (built.lineage.name and other.lineage.name and (home in other_home.parents or other_home in home.parents)):
            raise LineageError(f"{built.where}: home {home} overlaps {other.where}'s {other_home}; lineages never share a folder")
    _loaded[built.where] = built


def lineage_settings(base: Settings, name: str, source: str, serve_port: int | None, schedules: Schedules | None,
                     sensors: str | None) -> Settings:
    """The default lineage's settings are the environment's; a named one takes its own
    source, port, schedules and sensor status, and the environment's operational rest."""
    update = {k: v for k, v in (schedules.model_dump() if schedules else {}).items() if v is not None}
    if sensors:
        update["sensors"] = sensors
    if serve_port is not None:
        update["serve_port"] = serve_port
    if name:
        # DRIFTLOOP_SOURCE_DIR and DRIFTLOOP_RUN_CONFIG speak for the default lineage only.
        update.update(source_dir=source, run_config="")
    elif source:
        update["source_dir"] = source
    try:
        return Settings(**{**base.model_dump(), **update})
    except Exception as err:  # pydantic names the field
        raise LineageError(f"lineage {name or 'default'}: {err}") from None


def lineage_resources(profile: Profile, lineage: Lineage, settings: Settings, overrides: dict[str, dict]) -> dict[str, dg.ConfigurableResource]:
    """The profile's resources for this lineage, under its resource keys: a named lineage's
    folders under its home and its object-storage prefixes under its name."""
    classes = {**RESOURCES, "deployer": profile.deployer}
    unknown = sorted(set(overrides) - set(classes))
    if unknown:
        raise LineageError(f"lineage {lineage.label()}: resources {unknown} do not exist; choose from {sorted(classes)}")
    for key, values in overrides.items():
        bad = sorted(set(values or {}) - set(classes[key].model_fields))
        if bad:
            raise LineageError(f"lineage {lineage.label()}: resources.{key} has no field {bad}; {classes[key].__name__} has {sorted(classes[key].model_fields)}")
    defaults: dict[str, dict] = {"deployer": {"port": settings.serve_port}}
    if lineage.home:  # every named lineage; the default one when its defs.yaml names a home
        layout = lineage.layout()
        defaults["dvc"] = {"workspace_dir": str(layout.dvc_workspace), "remote_url": layout.dvc_remote}
        defaults["vector_store"] = {"root": str(layout.retrieval)}
        defaults["model_registry"] = {"root": str(layout.registry)}
        defaults["models"] = {"cache_dir": str(layout.base_models)}
        defaults["deployer"]["home"] = str(layout.home)
    if lineage.name:
        profile = profile.under(lineage.name)
    try:
        bound = profile.bind(RESOURCES, defaults, overrides)
    except ProfileError:
        raise
    except ValueError as err:
        raise LineageError(f"lineage {lineage.label()}: {err}") from None
    return {lineage.resource_key(key): resource for key, resource in bound.items()}


def build_lineage_defs(lineage: Lineage, settings: Settings, profile: Profile, resources: dict[str, dict] | None = None,
                       asset_settings: dict[str, dict] | None = None) -> dg.Definitions:
    """Every definition of one lineage: its assets and checks, jobs, schedules, sensors and
    resources, named for it."""
    asset_settings = asset_settings or {}
    known = {name for stage in STAGES for name in stage.stage.asset_names()}
    unknown = sorted(set(asset_settings) - known)
    if unknown:
        raise LineageError(f"lineage {lineage.label()}: assets {unknown} do not exist; settings go to one of {sorted(known)}")
    assets, checks = [], []
    try:
        for stage in STAGES:
            built = stage.build(lineage, asset_settings)
            assets_, checks_ = built if isinstance(built, tuple) else (built, [])
            assets += assets_
            checks += checks_
    except ConfigError as err:
        raise LineageError(str(err)) from None
    jobs = build_jobs(lineage)
    return dg.Definitions(
        assets=assets,
        asset_checks=checks,
        jobs=list(jobs.values()),
        schedules=build_schedules(settings, lineage, jobs),
        sensors=[run_failure_sensor(lineage, None if not lineage.name else list(jobs.values())), *drift_sensors(settings, lineage),
                 new_documents_sensor(settings, lineage), canary_sensor(settings, lineage)],
        resources=lineage_resources(profile, lineage, settings, resources or {}),
    )


class DriftloopLineage(dg.Component, dg.Model, dg.Resolvable):
    """A driftloop lineage over one corpus: datasets, index, LoRA adapters, evaluation gate,
    registry and champion, BentoML service, schedules and drift sensors."""

    name: str = Field(default="", description="Prefix of its asset keys, jobs, sensors and resource keys (lower case, digits, "
                      "single underscores); empty for the default lineage, which keeps driftloop's own names.")
    source: str = Field(default="", description="Its documents: a folder (.md .rst .txt .html .pdf .docx) or a .jsonl file. "
                        "Required for a named lineage; the default one reads DRIFTLOOP_SOURCE_DIR, else the Python docs.")
    home: str = Field(default="", description="Where its data and artifacts live; default <DRIFTLOOP_HOME>/lineages/<name> "
                      "(the default lineage: DRIFTLOOP_HOME).")
    serve_port: int | None = Field(default=None, ge=1, le=65534, description="Its service's port (the next one is its supervisor's); "
                                   "default DRIFTLOOP_SERVE_PORT. Required for a named lineage.")
    resources: dict[str, dict[str, Any]] = Field(default_factory=dict, description="Fields of its resources by key (models, dvc, "
                                                 "vector_store, model_registry, deployer), over the profile's.")
    assets: dict[str, dict[str, Any]] = Field(default_factory=dict, description="Its defaults for each asset's settings, by asset "
                                              "key (retrieval/chunks, training/lora_adapter, evaluation/eval_report, ...).")
    schedules: Schedules | None = Field(default=None, description="Its schedules' crons and time zone.")
    sensors: Literal["running", "stopped"] | None = Field(default=None, description="Whether its sensors start with the daemon; "
                                                          "default DRIFTLOOP_SENSORS.")

    def lineage(self) -> Lineage:
        try:
            name = check_name(self.name)
        except ValueError as err:
            raise LineageError(str(err)) from None
        if name and not self.source:
            raise LineageError(f"lineage {name}: `source` is required (a folder of documents or a .jsonl file)")
        if name and self.serve_port is None:
            raise LineageError(f"lineage {name}: `serve_port` is required, so that its service never takes another lineage's port")
        home = str(lineage_home(name, self.home)) if name else (str(Path(self.home).resolve()) if self.home else "")
        source = str(Path(self.source).expanduser().resolve()) if self.source and not _is_packaged(self.source) else self.source
        return Lineage(name=name, home=home, source=source)

    def build(self, where: str, settings: Settings | None = None, profile: Profile | None = None) -> dg.Definitions:
        try:
            settings = settings or Settings.from_env()
        except SettingsError as err:
            raise LineageError(str(err)) from None
        lineage = self.lineage()
        settings = lineage_settings(settings, lineage.name, lineage.source, self.serve_port, self.schedules, self.sensors)
        _claim(Built(lineage, settings.serve_port, where))
        return build_lineage_defs(lineage, settings, profile or load_profile(settings), self.resources, self.assets)

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        return self.build(str(context.path / "defs.yaml"))


def _is_packaged(source: str) -> bool:
    # Names the corpus resolver knows ("python-docs") rather than paths.
    return "/" not in source and not Path(source).exists()


class LineageScaffolder(dg.Scaffolder):
    """`dg scaffold defs orchestration.lineage.DriftloopLineage runbooks`: a defs.yaml for a
    lineage named after its folder, on the first free pair of ports, reading documents
    from <DRIFTLOOP_HOME>/documents/<name> (edit `source`)."""

    def scaffold(self, request: dg.ScaffoldRequest) -> None:
        name = check_name(request.target_path.name.replace("-", "_").lower())
        taken = _ports_in(request.target_path.parent)
        port = next(p for p in range(3011, 65000, 10) if not {p, p + 1} & taken)
        attributes = {"name": name, "source": str(Layout.from_env().home / "documents" / name), "serve_port": port,
                      "sensors": "stopped"}
        request.target_path.mkdir(parents=True, exist_ok=True)
        text = yaml.safe_dump({"type": request.type_name, "attributes": attributes}, sort_keys=False)
        (request.target_path / "defs.yaml").write_text(
            "# A driftloop lineage (orchestration/lineage.py): its own keys, data, models, service and sensors.\n" + text
            + "# resources: {models: {generator_model: SmolLM2-135M-Instruct}}\n"
            + "# assets: {retrieval/chunks: {chunk_tokens: 200}, evaluation/eval_report: {min_questions: 20}}\n"
            + '# schedules: {retrain_cron: "0 3 * * 0", drift_cron: "0 2 * * *", timezone: UTC}\n', encoding="utf-8")


def _ports_in(defs_dir: Path) -> set[int]:
    settings = Settings.from_env()
    taken = {settings.serve_port, settings.serve_port + 1, settings.ui_port}
    for path in defs_dir.rglob("defs.yaml"):
        attributes = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("attributes") or {}
        if isinstance(attributes.get("serve_port"), int):
            taken |= {attributes["serve_port"], attributes["serve_port"] + 1}
    return taken


DriftloopLineage = dg.scaffold_with(LineageScaffolder)(DriftloopLineage)
