"""Profiles: where the same definitions run, chosen by configuration alone.

`local` (the default) runs every step as a subprocess on this machine with the
instance's SQLite storage; a settings file (`DRIFTLOOP_PROFILE_FILE`, optional) may set
its resources, e.g. other models; its deployer is the local supervisor. `production` runs
each step in its own Kubernetes pod (`k8s_job_executor`), binds the same resource classes
to object storage and deploys by rendering Kubernetes manifests. Its
settings come from a YAML file (`DRIFTLOOP_PROFILE_FILE`, default the package's
orchestration/profiles/production.yaml):

    executor:      # k8s_job_executor config, passed through unchanged
    resources:     # field values per resource key; {env: NAME} reads NAME at run time
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from importlib.resources import files
from pathlib import Path

import dagster as dg
import yaml

from driftloop.settings import Settings
from resources.deployer import Deployer, KubernetesDeployer, LocalDeployer

PROFILES = ("local", "production")
# Package data: found in a wheel or an image as in the checkout.
DEFAULT_PRODUCTION_FILE = Path(str(files("orchestration") / "profiles" / "production.yaml"))
# Every step still runs in its own process (a killed or OOM-killed step fails alone and is
# retried), but forked from a server that has imported the code location and the ML stack
# once per run, instead of a fresh interpreter importing them again for every step.
STEP_PRELOAD = ["orchestration.definitions", "torch", "transformers", "peft", "sentence_transformers", "pandas", "great_expectations"]
LOCAL_EXECUTOR = dg.multiprocess_executor.configured(
    {"max_concurrent": 2, "start_method": {"forkserver": {"preload_modules": STEP_PRELOAD}}})


class ProfileError(ValueError):
    pass


@dataclass(frozen=True)
class Profile:
    name: str
    executor: dg.ExecutorDefinition
    deployer: type[Deployer]
    resource_config: dict[str, dict] = field(default_factory=dict)

    def bind(self, classes: dict[str, type[dg.ConfigurableResource]], defaults: dict[str, dict] | None = None,
             overrides: dict[str, dict] | None = None) -> dict[str, dg.ConfigurableResource]:
        """One instance per resource key: `defaults` (from settings) under the profile's own
        values, under a lineage's `overrides`."""
        classes = {**classes, "deployer": self.deployer}
        unknown = set(self.resource_config) - set(classes)
        if unknown:
            raise ProfileError(f"profile {self.name} configures unknown resources {sorted(unknown)}; known: {sorted(classes)}")
        defaults, overrides = defaults or {}, overrides or {}
        return {key: cls(**{name: _value(v) for name, v in {**_accepted(cls, defaults.get(key, {})), **self.resource_config.get(key, {}),
                                                            **(overrides.get(key) or {})}.items()})
                for key, cls in classes.items()}

    def under(self, name: str) -> Profile:
        """The profile for a named lineage: each object-storage prefix it names gets the
        lineage's own folder, so two lineages never write one remote."""
        config = {key: {field: (f"{value.rstrip('/')}/{name}" if field == "remote_url" and isinstance(value, str) and value else value)
                        for field, value in fields.items()}
                  for key, fields in self.resource_config.items()}
        return replace(self, resource_config=config)


def _accepted(cls: type[dg.ConfigurableResource], values: dict) -> dict:
    # A default the bound class has no field for (the local port, for the Kubernetes deployer) is not its setting.
    return {name: value for name, value in values.items() if name in cls.model_fields}


def _value(value):
    # {env: NAME} is resolved when a step starts, so the code location loads without secrets.
    if isinstance(value, dict) and set(value) == {"env"}:
        return dg.EnvVar(value["env"])
    return value


def _settings(profile: str, path: Path, sections: set[str]) -> dict:
    if not path.is_file():
        raise ProfileError(f"{profile} profile: no settings file at {path}; set DRIFTLOOP_PROFILE_FILE")
    settings = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    unknown = set(settings) - sections
    if unknown:
        raise ProfileError(f"{path}: unknown sections {sorted(unknown)}; the {profile} profile takes {' and '.join(sorted(sections))}")
    return settings


def production_profile(path: Path) -> Profile:
    from dagster_k8s import k8s_job_executor

    settings = _settings("production", path, {"executor", "resources"})
    return Profile("production", k8s_job_executor.configured(settings.get("executor") or {}, name="k8s"), KubernetesDeployer,
                   settings.get("resources") or {})


def local_profile(path: str | Path | None) -> Profile:
    """Subprocess steps on this machine; a settings file, when named, may change the
    resources (other models, other folders) but not the executor."""
    if not path:
        return Profile("local", LOCAL_EXECUTOR, LocalDeployer)
    return Profile("local", LOCAL_EXECUTOR, LocalDeployer, _settings("local", Path(path), {"resources"}).get("resources") or {})


def load_profile(settings: Settings, name: str | None = None, path: str | Path | None = None) -> Profile:
    """The profile named by `name`, else the settings' (DRIFTLOOP_PROFILE, local by default)."""
    name = name or settings.profile
    if name == "local":
        return local_profile(path or settings.profile_file)
    if name == "production":
        return production_profile(Path(path or settings.profile_file or DEFAULT_PRODUCTION_FILE))
    raise ProfileError(f"DRIFTLOOP_PROFILE={name!r}: expected one of {', '.join(PROFILES)}")
