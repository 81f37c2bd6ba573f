"""Where everything lives: every folder and file of a driftloop home, derived from one root.

A home holds the DVC-versioned data (`data/`) and the content-addressed artifacts
(`artifacts/`). Its root is DRIFTLOOP_HOME, else the working directory; four places may be
pointed elsewhere on their own (a request log on a shared volume, an inbox another system
fills, a DVC remote, BentoML's store). The environment is read when a layout is made, in
a run, a sensor tick or a service start, never when a module is imported.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Layout:
    home: Path
    request_log: Path
    inbox: Path
    dvc_remote: str
    bentoml: Path

    @classmethod
    def at(cls, home: Path | str, environ: Mapping[str, str] | None = None) -> Layout:
        env = os.environ if environ is None else environ
        home = Path(home).resolve()
        return cls(
            home=home,
            request_log=Path(env.get("DRIFTLOOP_REQUEST_LOG") or home / "data" / "serving"),
            inbox=Path(env.get("DRIFTLOOP_INBOX_DIR") or home / "data" / "inbox"),
            dvc_remote=env.get("DRIFTLOOP_DVC_REMOTE") or str(home / "data" / "dvc-remote"),
            bentoml=Path(env.get("BENTOML_HOME") or home / "artifacts" / "bentoml"),
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Layout:
        env = os.environ if environ is None else environ
        return cls.at(env.get("DRIFTLOOP_HOME") or Path.cwd(), env)

    # Versioned data (DVC) and what the service and sensors write beside it.
    @property
    def data(self) -> Path:
        return self.home / "data"

    @property
    def dvc_workspace(self) -> Path:
        return self.data / "workspace"

    @property
    def alerts(self) -> Path:
        return self.data / "alerts"

    # Content-addressed artifacts, one folder per stage.
    @property
    def artifacts(self) -> Path:
        return self.home / "artifacts"

    @property
    def base_models(self) -> Path:
        return self.artifacts / "base_models"

    @property
    def registry(self) -> Path:
        return self.artifacts / "registry"

    @property
    def retrieval(self) -> Path:
        return self.artifacts / "retrieval"

    @property
    def serving(self) -> Path:
        return self.artifacts / "serving"

    @property
    def routers(self) -> Path:
        return self.serving / "routers"

    @property
    def bundles(self) -> Path:
        return self.serving / "bundles"

    @property
    def kubernetes(self) -> Path:
        return self.serving / "kubernetes"

    @property
    def supervisor(self) -> Path:
        return self.serving / "supervisor"

    @property
    def deployments(self) -> Path:
        """The audit trail of deployments: one line per deploy, rollback or shadow."""
        return self.serving / "deployments.jsonl"

    @property
    def monitoring(self) -> Path:
        return self.artifacts / "monitoring"

    @property
    def inference_log(self) -> Path:
        return self.monitoring / "inference_log"

    @property
    def drift_reports(self) -> Path:
        return self.monitoring / "drift"

    @property
    def drift_reference(self) -> Path:
        return self.monitoring / "reference"
