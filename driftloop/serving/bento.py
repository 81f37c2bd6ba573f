"""Building bentos and deploying them: `bentoml build` of the service with a sealed
bundle, offline, tagged by the bundle's content hash; local deployment through the
supervisor (zero-downtime switch on the stable port); Kubernetes manifests rendered
with GPU requests and a rolling update."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from importlib.resources import files
from pathlib import Path

from driftloop.layout import Layout
from driftloop.serving.bundle import Bundle

BENTO_NAME = "driftloop"
# The service module ships as the `bento` package; read as package data, so a wheel builds it too.
SERVICE_FILE = files("bento") / "service.py"


class BuildError(RuntimeError):
    pass


def bentoml_home(home: Path) -> Path:
    return Layout.at(home).bentoml


def _env(home: Path) -> dict:
    return {**os.environ, "BENTOML_HOME": str(bentoml_home(home)), "BENTOML_DO_NOT_TRACK": "true", "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1"}


def _bentoml() -> str:
    return str(Path(sys.executable).parent / "bentoml")


def bento_exists(tag: str, home: Path) -> bool:
    name, version = tag.split(":")
    return (bentoml_home(home) / "bentos" / name / version / "bento.yaml").is_file()


def build_bento(bundle: Bundle, home: Path, gpus: int = 0) -> str:
    """`bentoml build` of the service with `bundle` packed in; the tag is the bundle
    version, so rebuilding the same champion on the same index is a no-op."""
    tag = f"{BENTO_NAME}:{bundle.version}"
    if bento_exists(tag, home):
        return tag
    context = Path(tempfile.mkdtemp(prefix="bento-build-"))
    try:
        (context / "service.py").write_bytes(SERVICE_FILE.read_bytes())
        shutil.copytree(bundle.folder, context / "bundle")
        bentofile = {
            "service": "service:DriftloopRAG",
            "name": BENTO_NAME,
            "labels": {"model_version": bundle.model_version, "index_version": bundle.spec["index_version"], "bundle": bundle.version},
            "include": ["service.py", "bundle/**"],
            # The bento runs in the driftloop environment; nothing is resolved from an index at build time.
            "python": {"lock_packages": False, "packages": []},
            "envs": [{"name": "DRIFTLOOP_SERVE_GPUS", "value": str(gpus)}],
        }
        if gpus:
            bentofile["docker"] = {"cuda_version": "12.1"}
        (context / "bentofile.yaml").write_text(json.dumps(bentofile), encoding="utf-8")
        done = subprocess.run([_bentoml(), "build", "-f", str(context / "bentofile.yaml"), "--version", bundle.version, str(context)],
                              env=_env(home), capture_output=True, text=True, timeout=600)
        if done.returncode != 0 or not bento_exists(tag, home):
            raise BuildError(f"bentoml build of {tag} failed: {(done.stdout + done.stderr)[-2000:]}")
    finally:
        shutil.rmtree(context, ignore_errors=True)
    return tag


def serve_command(tag: str, port: int) -> list[str]:
    return [_bentoml(), "serve", tag, "--host", "127.0.0.1", "--port", str(port)]


def serve_env(home: Path, extra: dict | None = None) -> dict:
    keep = ("DRIFTLOOP_API_KEY", "DRIFTLOOP_PRICE_PER_1K_PROMPT", "DRIFTLOOP_PRICE_PER_1K_COMPLETION", "DRIFTLOOP_SERVE_DEVICE",
            "DRIFTLOOP_CARBON_COUNTRY", "DRIFTLOOP_CARBON_INTENSITY", "DRIFTLOOP_CPU_POWER_W", "DRIFTLOOP_ENERGY_INTERVAL_S",
            "DRIFTLOOP_SEMANTIC_CACHE_THRESHOLD", "DRIFTLOOP_SEMANTIC_CACHE_ENTRIES", "DRIFTLOOP_SEMANTIC_CACHE_TTL_S",
            "DRIFTLOOP_SEMANTIC_CACHE_MATCH", "DRIFTLOOP_ROUTE")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    return {**env, "BENTOML_HOME": str(bentoml_home(home)), "DRIFTLOOP_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true", **(extra or {})}


def render_kubernetes(tag: str, image_repository: str, gpus: int, namespace: str = "driftloop", replicas: int = 2) -> list[dict]:
    """A Deployment (rolling update, readiness and liveness probes, GPU requests when
    asked) and a Service for the bento's image; applied when a cluster is configured."""
    name, version = tag.split(":")
    labels = {"app.kubernetes.io/name": name, "app.kubernetes.io/version": version, "app.kubernetes.io/part-of": "driftloop"}
    resources = {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"memory": "8Gi"}}
    if gpus:
        resources["limits"]["nvidia.com/gpu"] = str(gpus)
        resources["requests"]["nvidia.com/gpu"] = str(gpus)
    container = {
        "name": "service", "image": f"{image_repository}:{version}", "ports": [{"containerPort": 3000, "name": "http"}],
        "env": [{"name": "DRIFTLOOP_SERVE_GPUS", "value": str(gpus)},
                {"name": "DRIFTLOOP_API_KEY", "valueFrom": {"secretKeyRef": {"name": "driftloop-api", "key": "api-key", "optional": True}}}],
        "resources": resources,
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 5, "failureThreshold": 3},
        "livenessProbe": {"httpGet": {"path": "/livez", "port": "http"}, "initialDelaySeconds": 60, "periodSeconds": 10},
    }
    pod = {"containers": [container]}
    if gpus:
        pod["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
                 # Never fewer ready replicas than asked for: a new pod must pass readiness before an old one goes.
                 "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
                 "template": {"metadata": {"labels": labels}, "spec": pod}},
    }
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": namespace, "labels": labels},
               "spec": {"selector": {"app.kubernetes.io/name": name}, "ports": [{"port": 80, "targetPort": "http", "name": "http"}]}}
    return [deployment, service]
