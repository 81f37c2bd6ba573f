"""The `dg` command lines driftloop starts: the CLI Dagster documents today, in place of
`dagster dev` / `dagster job execute` / `dagster asset materialize`, which Dagster 1.13
marks superseded. `dg` finds the project through `[tool.dg]` in pyproject.toml, so every
command runs from the project root (the working directory its caller passes)."""

import json
import sys
from pathlib import Path


def dg(*args: str) -> list[str]:
    return [str(Path(sys.executable).parent / "dg"), *args]


def ui(port: int) -> list[str]:
    """The webserver and the daemon (sensors, schedules, run queue) on loopback."""
    return dg("dev", "-h", "127.0.0.1", "-p", str(port))


def launch(*, job: str | None = None, assets: str | None = None, config: Path | str | None = None,
           config_json: dict | None = None, partition: str | None = None, partition_range: str | None = None) -> list[str]:
    """One run, executed in this process's environment; exits non-zero when the run fails."""
    if (job is None) == (assets is None):
        raise ValueError("launch needs exactly one of job and assets")
    command = dg("launch", *(["--job", job] if job else ["--assets", assets]))
    if config is not None:
        command += ["-c", str(config)]
    if config_json is not None:
        command += ["--config-json", json.dumps(config_json)]
    if partition is not None:
        command += ["--partition", partition]
    if partition_range is not None:
        command += ["--partition-range", partition_range]
    return command
