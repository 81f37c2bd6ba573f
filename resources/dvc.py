"""DVC as a resource: every dataset version is added to DVC and pushed to a remote.

The DVC workspace is its own directory (initialised with --no-scm), separate from
the project's git tree, so running the pipeline never dirties the code repository.
The md5 that DVC records is the dataset's Dagster data version, and `restore`
brings back any recorded version from the remote.
"""


import fcntl
import time
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import yaml
from pydantic import Field

from driftloop.layout import Layout


@dataclass(frozen=True)
class DvcVersion:
    md5: str
    size: int
    path: Path
    dvc_file: str
    remote: str


class DvcStore(dg.ConfigurableResource):
    """Where datasets live, and the DVC remote they are pushed to."""

    workspace_dir: str = Field(default="", description="DVC workspace; default <DRIFTLOOP_HOME>/data/workspace")
    remote_url: str = Field(default="", description="DVC remote URL or path; default $DRIFTLOOP_DVC_REMOTE, else <DRIFTLOOP_HOME>/data/dvc-remote")
    remote_name: str = "driftloop"
    endpoint_url: str = Field(default="", description="S3-compatible endpoint for an s3:// remote (MinIO, Ceph, ...); empty: AWS or $AWS_ENDPOINT_URL")

    @property
    def root(self) -> Path:
        return Path(self.workspace_dir).resolve() if self.workspace_dir else Layout.from_env().dvc_workspace

    @property
    def remote(self) -> str:
        return self.remote_url or Layout.from_env().dvc_remote

    @property
    def quarantine_dir(self) -> Path:
        return self.root.parent / "quarantine"

    def dataset_path(self, name: str) -> Path:
        return self.root / "datasets" / f"{name}.jsonl"

    def _repo(self):
        from dvc.repo import Repo

        if not (self.root / ".dvc" / "config").is_file():
            self.root.mkdir(parents=True, exist_ok=True)
            # Steps in parallel processes may both find no workspace; one initializes it, and
            # none opens it half-made (without its no_scm setting DVC looks for git and fails).
            with (self.root.parent / ".dvc-init.lock").open("w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                if not (self.root / ".dvc" / "config").is_file():
                    Repo.init(str(self.root), no_scm=True, force=True)
        repo = Repo(str(self.root))
        with repo.config.edit() as conf:
            conf["core"]["analytics"] = False
            conf["core"]["remote"] = self.remote_name
            conf["remote"][self.remote_name] = {"url": self.remote, **({"endpointurl": self.endpoint_url} if self.endpoint_url else {})}
        return repo

    def _locked(self, action):
        """DVC holds a repository lock; steps in parallel processes wait for it."""
        from dvc.lock import LockError

        for attempt in range(60):
            try:
                return action()
            except LockError:
                time.sleep(0.5 + attempt * 0.1)
        return action()

    def commit(self, name: str) -> DvcVersion:
        """Track the dataset file with DVC and push it; returns its recorded version."""
        path = self.dataset_path(name)
        if not path.is_file():
            raise FileNotFoundError(f"dataset {name} has no file at {path}")

        def add_and_push():
            repo = self._repo()
            try:
                repo.add(str(path))
                repo.push(targets=[str(path) + ".dvc"], remote=self.remote_name)
            finally:
                repo.close()

        self._locked(add_and_push)
        return self.version(name)

    def version(self, name: str) -> DvcVersion:
        dvc_file = Path(str(self.dataset_path(name)) + ".dvc")
        text = dvc_file.read_text(encoding="utf-8")
        out = yaml.safe_load(text)["outs"][0]
        return DvcVersion(md5=out["md5"], size=int(out["size"]), path=self.dataset_path(name), dvc_file=text, remote=self.remote)

    def restore(self, name: str, md5: str) -> Path:
        """Bring the dataset back to a recorded version: rewrite its .dvc file, then pull."""
        dvc_file = Path(str(self.dataset_path(name)) + ".dvc")
        if not dvc_file.is_file():
            raise FileNotFoundError(f"dataset {name} has never been tracked in {self.root}")
        spec = yaml.safe_load(dvc_file.read_text(encoding="utf-8"))
        spec["outs"][0]["md5"] = md5
        spec["outs"][0].pop("size", None)

        def pull():
            repo = self._repo()
            try:
                dvc_file.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
                repo.pull(targets=[str(dvc_file)], remote=self.remote_name, force=True)
            finally:
                repo.close()

        self._locked(pull)
        return self.dataset_path(name)
