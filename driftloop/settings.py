"""Every DRIFTLOOP_* setting that is not a path, read once into a typed object.

Paths belong to `driftloop.layout.Layout`. Two objects here, one per kind of process:
`Settings` for the code location (sensors, schedules, the deployer's port, the source
corpus), read when Dagster loads the definitions or a step starts; `ServiceSettings` for a
running inference service, read when BentoML starts it. A bad value fails there, naming
the variable, instead of deep inside a sensor tick or a request. Nothing reads the
environment when a module is imported; tests build either object with keyword arguments.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

PREFIX = "DRIFTLOOP_"
# An empty variable counts as unset, as it did for os.environ.get(...) or default.
CONFIG = SettingsConfigDict(env_prefix=PREFIX, extra="ignore", frozen=True, env_ignore_empty=True)


class SettingsError(ValueError):
    pass


class _FromEnv(BaseSettings):
    model_config = CONFIG

    @classmethod
    def from_env(cls):
        """The settings the environment holds; a bad value is an error naming its variable."""
        try:
            return cls()
        except ValidationError as err:
            problems = "; ".join(f"{PREFIX}{'_'.join(map(str, e['loc'])).upper()}={e.get('input')!r}: {e['msg']}" for e in err.errors())
            raise SettingsError(problems) from None


class Settings(_FromEnv):

    profile: Literal["local", "production"] = Field(default="local", description="local or production (Kubernetes)")
    profile_file: str = Field(default="", description="the profile's settings file")
    source_dir: str = Field(default="", description="corpus folder or .jsonl file; empty: the packaged Python docs")
    run_config: str = Field(default="", description="run config (YAML) for the runs sensors and schedules start")
    sensors: Literal["running", "stopped"] = Field(default="stopped", description="running starts the sensors with the daemon")
    sensor_interval_s: int = Field(default=60, ge=1, description="seconds between sensor ticks")
    drift_check_every: int = Field(default=100, ge=1, description="new served requests per drift check")
    drift_check_idle_s: float = Field(default=900.0, gt=0, description="check the remaining requests once traffic has paused this long")
    drift_retrain_cooldown_s: float = Field(default=24 * 3600.0, ge=0, description="least time between two drift-triggered retrains")
    drift_cron: str = Field(default="0 2 * * *", description="the daily drift check's schedule")
    retrain_cron: str = Field(default="0 3 * * 0", description="the weekly retrain's schedule")
    timezone: str = Field(default="UTC", description="the schedules' time zone")
    serve_port: int = Field(default=3001, ge=1, le=65535, description="the stable serving port")
    ui_port: int = Field(default=3000, ge=1, le=65535, description="UI port for make demo")


class ServiceSettings(_FromEnv):

    bundle: str = Field(default="", description="a bundle folder for a service started outside a bento")
    serve_device: str = Field(default="auto", description="cpu, cuda or auto for the service's models")
    serve_gpus: int = Field(default=0, ge=0, description="GPUs a bento asks for")
    serve_cpus: int = Field(default=2, ge=1, description="CPUs a bento asks for when it has no GPU")
    serve_precision: Literal["", "auto", "fp32", "bf16", "fp16"] = Field(default="", description="generator precision override")
    max_concurrency: int = Field(default=64, ge=1, description="requests BentoML admits at once")
    max_batch: int = Field(default=8, ge=1, description="prompts per generation batch")
    prefix_cache_mb: int = Field(default=512, ge=0, description="memory for reused prompt keys and values (0: none)")
    batch_window_ms: float = Field(default=10.0, ge=0, description="how long a batch waits to fill")
    max_queue: int = Field(default=64, ge=1, description="queued prompts before the service answers 503")
    max_queue_wait_s: float = Field(default=120.0, gt=0, description="longest a prompt waits in the queue")
    retrieval_threads: int = Field(default=1, ge=1, description="torch threads of the retrieval lane")
    warmup_requests: int = Field(default=12, ge=0, description="requests the service answers to itself before it is ready")
    price_per_1k_prompt: float | None = Field(default=None, ge=0, description="cost per 1,000 prompt tokens in the request log")
    price_per_1k_completion: float | None = Field(default=None, ge=0, description="cost per 1,000 completion tokens")
    canary: str = Field(default="", description="the prompt-injection canary (pin it across replicas)")
    role: Literal["primary", "shadow"] = Field(default="primary", description="shadow for a shadow deployment")
    api_key: str = Field(default="", description="key every service endpoint but health and metrics requires")
    semantic_cache_threshold: float | None = Field(default=None, gt=0, le=1, description="cosine similarity from which a question "
                                                   "gets a cached answer (0.97 and up: one word can flip a question); unset: no cache")
    semantic_cache_entries: int = Field(default=10_000, ge=1, description="answers the semantic cache keeps (least recently used out)")
    semantic_cache_ttl_s: float = Field(default=0.0, ge=0, description="oldest a cached answer may be; 0: no limit")
    route: Literal["on", "off"] = Field(default="on", description="on: the bundle's router (when it has one) answers out-of-scope and "
                                        "extractive questions without generation; off: every request is generated")
    semantic_cache_match: Literal["words", "embedding"] = Field(default="words", description="words: a hit also needs the same content "
                                                                "words (names, numbers); embedding: the similarity alone")


class EnergySettings(_FromEnv):
    """How energy is measured and turned into emissions, wherever work runs (steps and the service)."""

    carbon_country: str = Field(default="USA", min_length=3, max_length=3, description="ISO 3166 alpha-3 country whose grid intensity "
                                "CodeCarbon applies")
    carbon_intensity: float | None = Field(default=None, ge=0, description="grid carbon intensity in g CO2e per kWh, instead of the country's")
    cpu_power_w: int | None = Field(default=None, gt=0, description="the CPU's power in watts where its counters cannot be read "
                                    "(default: CodeCarbon's TDP table, else 4 W per thread)")
    energy_interval_s: float = Field(default=15.0, gt=0, description="seconds between power readings")


def variables() -> set[str]:
    """The environment variable behind every field, for the README's configuration table."""
    return {PREFIX + name.upper() for cls in (Settings, ServiceSettings, EnergySettings) for name in cls.model_fields}
