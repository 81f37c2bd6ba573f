"""Putting a built bento live, and the one audit trail of what went live.

Two targets: this machine, where the supervisor starts the new version beside the running
one, waits for it to be ready and switches the stable port (the old one keeps serving when
anything fails), or first gives it a canary's share of traffic until the canary decision
promotes or rolls it back; and Kubernetes, where manifests with GPU requests and a rolling
update are rendered for `kubectl apply` or a GitOps repository. Every deploy, failed
deploy, canary start and end, shadow and shadow stop is one line of `Layout.deployments`. No Dagster here: the deployer
resource (resources/deployer.py) binds a target, the serving assets call it.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import NoReturn

from driftloop.atomic import fsync_dir, write_text
from driftloop.layout import Layout
from driftloop.serving.bento import render_kubernetes, serve_command, serve_env
from driftloop.serving.supervisor.client import DeployError, SupervisorClient, ensure_supervisor
from driftloop.serving.supervisor.processes import free_port

__all__ = ["DeployError", "Deployed", "LocalTarget", "KubernetesTarget", "record_deployment"]

NO_SHADOW_ON_KUBERNETES = "shadow mode runs beside the local supervisor; on Kubernetes, deploy the challenger as a release of its own"
NO_CANARY_ON_KUBERNETES = ("canary releases run on the local supervisor; on Kubernetes, split traffic with the cluster's ingress "
                           "or service mesh (canary_share 0 renders the plain rolling update)")


@dataclass(frozen=True)
class Deployed:
    tag: str
    model_version: str
    action: str
    target: str
    url: str = ""
    previous: str | None = None
    manifests: Path | None = None
    active: dict = field(default_factory=dict)


def record_deployment(layout: Layout, record: dict) -> None:
    """One line of the audit trail, on disk before the caller reports success."""
    path = layout.deployments
    path.parent.mkdir(parents=True, exist_ok=True)
    created = not path.exists()
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps({"at": datetime.now(UTC).isoformat(), **record}) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    if created:
        fsync_dir(path.parent)


@dataclass(frozen=True)
class LocalTarget:
    """The supervisor on this machine: `port` is the stable port clients call."""

    layout: Layout
    port: int
    control_port: int = 0
    ready_timeout_s: float = 600

    @property
    def control_url(self) -> str:
        return f"http://127.0.0.1:{self.control_port or self.port + 1}"

    def deploy(self, tag: str, model_version: str, audit: dict) -> Deployed:
        client = ensure_supervisor(self.port, self.control_port or self.port + 1, self.layout.supervisor)
        backend = free_port()
        base = {"target": "local", "tag": tag, "model_version": model_version, **audit}
        try:
            outcome = client.deploy(tag, serve_command(tag, backend), backend, ready_path="/readyz", env=serve_env(self.layout.home),
                                    cwd=str(self.layout.home), ready_timeout_s=self.ready_timeout_s)
        except DeployError as err:
            record_deployment(self.layout, {**base, "action": "failed", "error": str(err)[:2000]})
            raise DeployError(f"{tag} did not go live; the previous version keeps serving: {err}") from err
        record_deployment(self.layout, {**base, **outcome})
        return Deployed(tag, model_version, outcome["action"], "local", url=f"http://127.0.0.1:{self.port}",
                        previous=outcome.get("previous"), active=client.status().get("active") or {})

    def require_running(self) -> SupervisorClient:
        """The supervisor that serves now; a shadow needs one to copy traffic from."""
        client = SupervisorClient(self.control_url)
        if not client.alive():
            raise DeployError(f"nothing serves on port {self.port}; deploy first (serving/deployment)")
        return client

    def shadow(self, tag: str, model_version: str, audit: dict) -> str:
        client = self.require_running()
        port = free_port()
        outcome = client.shadow(tag, serve_command(tag, port), port, env=serve_env(self.layout.home, {"DRIFTLOOP_ROLE": "shadow"}),
                                cwd=str(self.layout.home), ready_timeout_s=self.ready_timeout_s)
        record_deployment(self.layout, {"target": "local", "action": "shadowing", "tag": tag, "model_version": model_version, **audit})
        return outcome["action"]

    def stop_shadow(self, audit: dict) -> str:
        outcome = self.require_running().stop_shadow()
        record_deployment(self.layout, {"target": "local", "action": "shadow_stopped", "tag": outcome.get("previous"), **audit})
        return outcome["action"]

    def serving(self) -> dict | None:
        """The supervisor's status (active, canary, shadow), or None when nothing runs."""
        client = SupervisorClient(self.control_url)
        return client.status() if client.alive() else None

    def canary(self, tag: str, model_version: str, policy: dict, audit: dict) -> Deployed:
        """Start `tag` beside the serving version with `policy["share"]` of inference traffic;
        a plain deploy when nothing serves yet (there is nothing to compare with)."""
        status = self.serving()
        active = (status or {}).get("active")
        if not active:
            return self.deploy(tag, model_version, audit)
        if active["name"] == tag:
            return Deployed(tag, model_version, "unchanged", "local", url=f"http://127.0.0.1:{self.port}", active=active)
        baseline_version = self.version_of(active["name"])
        if baseline_version == model_version:
            # The same adapter (a refreshed index): the request log could not tell the sides apart.
            return self.deploy(tag, model_version, audit)
        if baseline_version is None:
            raise DeployError(f"the serving version {active['name']} is not in {self.layout.deployments}; a canary needs the "
                              "version it is compared with (deploy without a canary once)")
        port = free_port()
        base = {"target": "local", "tag": tag, "model_version": model_version, "baseline": active["name"],
                "baseline_version": baseline_version, **audit}
        try:
            outcome = SupervisorClient(self.control_url).canary(
                tag, serve_command(tag, port), port, share=policy["share"], model_version=model_version, baseline_version=baseline_version,
                policy=policy, env=serve_env(self.layout.home), cwd=str(self.layout.home), ready_timeout_s=self.ready_timeout_s)
        except DeployError as err:
            record_deployment(self.layout, {**base, "action": "failed", "error": str(err)[:2000]})
            raise DeployError(f"{tag} did not start as a canary; the previous version keeps serving: {err}") from err
        record_deployment(self.layout, {**base, **outcome, "policy": policy})
        return Deployed(tag, model_version, outcome["action"], "local", url=f"http://127.0.0.1:{self.port}", previous=active["name"],
                        active=active)

    def end_canary(self, name: str, promote: bool, audit: dict) -> dict:
        """Promote the running canary `name` to all traffic, or roll it back; recorded either way.
        A promotion is recorded as the deploy that put the version live."""
        status = self.serving() or {}
        canary = status.get("canary") or {}
        outcome = self.require_running().end_canary(name, promote)
        record = {"target": "local", "tag": name, "model_version": canary.get("model_version"), **audit, **outcome}
        if promote:
            record.update(action="deployed", via="canary", previous=canary.get("baseline"))
        else:
            record.update(action="canary_rolled_back")
        record_deployment(self.layout, record)
        return outcome

    def version_of(self, tag: str) -> str | None:
        """The model version the audit trail records for bento `tag`."""
        found = None
        try:
            lines = self.layout.deployments.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return None
        for line in lines:
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if record.get("tag") == tag and record.get("model_version"):
                    found = record["model_version"]
        return found


@dataclass(frozen=True)
class KubernetesTarget:
    """Manifests for a cluster: the bento's image in `image_repository`, `replicas` pods."""

    layout: Layout
    image_repository: str
    namespace: str = "driftloop"
    replicas: int = 2
    gpus: int = 0

    def deploy(self, tag: str, model_version: str, audit: dict) -> Deployed:
        import yaml

        manifests = render_kubernetes(tag, self.image_repository, self.gpus, self.namespace, self.replicas)
        path = self.layout.kubernetes / tag.split(":")[1] / "service.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, yaml.safe_dump_all(manifests, sort_keys=False))
        record_deployment(self.layout, {"target": "kubernetes", "tag": tag, "model_version": model_version, "manifests": str(path.parent),
                                        **audit})
        return Deployed(tag, model_version, "rendered", "kubernetes", manifests=path)

    def require_running(self) -> NoReturn:
        raise DeployError(NO_SHADOW_ON_KUBERNETES)

    def shadow(self, tag: str, model_version: str, audit: dict) -> NoReturn:
        raise DeployError(NO_SHADOW_ON_KUBERNETES)

    def stop_shadow(self, audit: dict) -> NoReturn:
        raise DeployError(NO_SHADOW_ON_KUBERNETES)

    def serving(self) -> None:
        return None

    def canary(self, tag: str, model_version: str, policy: dict, audit: dict) -> NoReturn:
        raise DeployError(NO_CANARY_ON_KUBERNETES)

    def end_canary(self, name: str, promote: bool, audit: dict) -> NoReturn:
        raise DeployError(NO_CANARY_ON_KUBERNETES)
