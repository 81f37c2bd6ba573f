"""Serving stage: the champion built into a bento, and that bento deployed.

Only the registry's champion alias is ever built, and the alias only moves past the
promotion gate, so a model that failed its gate cannot reach this stage; a failed
build or deploy leaves the version that was serving in place.
"""

import json
import os
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
from pydantic import Field

from assets.common import OWNERS, json_meta
from assets.evaluation import CHAMPION, EVAL_REPORT, launched_by
from assets.retrieval import VECTOR_INDEX
from driftloop.layout import Layout
from resources.models import ModelCatalog
from resources.registry import ModelRegistry
from resources.vector_store import VectorStore

BENTO = dg.AssetKey(["serving", "bento"])
DEPLOYMENT = dg.AssetKey(["serving", "deployment"])
SHADOW = dg.AssetKey(["serving", "shadow"])


def _layout() -> Layout:
    return Layout.from_env()


class BentoConfig(dg.Config):
    prompt_version: str = "rag.v1"
    gpus: int = Field(default=0, ge=0, description="GPUs the service asks for; 0 serves on the CPU.")
    max_input_chars: int = Field(default=4000, ge=1)
    max_input_tokens: int = Field(default=1024, ge=1)
    price_per_1k_prompt: float = Field(default=0.0, ge=0.0, description="Cost per 1k prompt tokens, for the request log.")
    price_per_1k_completion: float = Field(default=0.0, ge=0.0)


@dg.asset(key=BENTO, deps=[CHAMPION, VECTOR_INDEX], group_name="serving", kinds={"bentoml"}, owners=OWNERS, code_version="1",
          tags={"stage": "serving"})
def bento(context: dg.AssetExecutionContext, config: BentoConfig, models: ModelCatalog, vector_store: VectorStore,
          model_registry: ModelRegistry) -> dg.MaterializeResult:
    """`bentoml build` of the service with the champion adapter, the promoted index and the
    prompt sealed in, offline, tagged by content hash (never `latest`)."""
    from driftloop.artifacts import ArtifactError
    from driftloop.serving.bento import BuildError, build_bento
    from driftloop.serving.bundle import build_bundle

    registry = model_registry.registry()
    champion = registry.champion()
    if champion is None:
        raise dg.Failure(description="serving/bento: there is no champion; only a model that passed its promotion gate is ever built")
    base = models.base_model()
    try:
        bundle = build_bundle(_layout().bundles,
                              base_model={"name": base.name, "path": base.path, "version": base.version}, adapter=champion.path,
                              adapter_version=champion.version, index_folder=vector_store.store().current_index_folder(),
                              embedding_model=models.embedding_model, prompt_version=config.prompt_version,
                              settings={"embedding_precision": models.embedding_precision, "generator_precision": models.generator_precision,
                                        "max_input_chars": config.max_input_chars,
                                        "max_input_tokens": config.max_input_tokens, "price_per_1k_prompt": config.price_per_1k_prompt,
                                        "price_per_1k_completion": config.price_per_1k_completion})
        tag = build_bento(bundle, _layout().home, config.gpus)
    except (ArtifactError, BuildError) as err:
        raise dg.Failure(description=f"serving/bento: {err}") from err
    context.log.info(f"built {tag} for {bundle.model_version} on index {bundle.spec['index_version']}")
    return dg.MaterializeResult(
        data_version=dg.DataVersion(bundle.version),
        metadata={"tag": dg.MetadataValue.text(tag), "model_version": dg.MetadataValue.text(bundle.model_version),
                  "index_version": dg.MetadataValue.text(bundle.spec["index_version"]), "bundle": dg.MetadataValue.path(str(bundle.folder)),
                  "gpus": dg.MetadataValue.int(config.gpus)},
    )


class DeploymentConfig(dg.Config):
    target: str = Field(default="local", pattern="^(local|kubernetes)$")
    port: int = Field(default=int(os.environ.get("DRIFTLOOP_SERVE_PORT", "3001")), ge=1, le=65535, description="The stable local port.")
    control_port: int = Field(default=0, ge=0, le=65535, description="The local supervisor's control port; 0: port + 1.")
    ready_timeout_s: int = Field(default=600, ge=10)
    image_repository: str = Field(default="registry.local/driftloop", description="kubernetes: where the bento's image is pushed.")
    namespace: str = "driftloop"
    replicas: int = Field(default=2, ge=1)
    gpus: int = Field(default=0, ge=0)


def _audit(record: dict) -> None:
    path = _layout().deployments
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps({"at": datetime.now(UTC).isoformat(), **record}) + "\n")


# A deploy is idempotent (the same tag already serving is "unchanged"), so a worker
# killed mid-switch is simply retried; the supervisor keeps the old version serving.
@dg.asset(key=DEPLOYMENT, deps=[BENTO], group_name="serving", kinds={"bentoml", "kubernetes"}, owners=OWNERS, code_version="1",
          tags={"stage": "serving"}, retry_policy=dg.RetryPolicy(max_retries=2, delay=5))
def deployment(context: dg.AssetExecutionContext, config: DeploymentConfig) -> dg.MaterializeResult:
    """Deploy the latest bento. Locally, a supervisor starts it beside the running version,
    waits until it is ready, switches the stable port to it and stops the old one; for
    Kubernetes, manifests with GPU requests and a rolling update are rendered."""
    from driftloop.serving.bento import render_kubernetes, serve_command, serve_env

    event = context.instance.get_latest_materialization_event(BENTO)
    if event is None or event.asset_materialization is None:
        raise dg.Failure(description="serving/deployment: no bento has been built; materialize serving/bento first")
    meta = {k: v.value for k, v in event.asset_materialization.metadata.items()}
    tag, model_version = meta["tag"], meta["model_version"]
    by = launched_by(context.run.tags) or "manual"
    if config.target == "kubernetes":
        import yaml

        folder = _layout().kubernetes / tag.split(":")[1]
        folder.mkdir(parents=True, exist_ok=True)
        manifests = render_kubernetes(tag, config.image_repository, config.gpus, config.namespace, config.replicas)
        (folder / "service.yaml").write_text(yaml.safe_dump_all(manifests, sort_keys=False), encoding="utf-8")
        _audit({"target": "kubernetes", "tag": tag, "model_version": model_version, "manifests": str(folder), "run_id": context.run.run_id, "by": by})
        return dg.MaterializeResult(metadata={"tag": dg.MetadataValue.text(tag), "target": dg.MetadataValue.text("kubernetes"),
                                              "manifests": dg.MetadataValue.path(str(folder / "service.yaml"))})

    from driftloop.serving.supervisor.client import DeployError, ensure_supervisor
    from driftloop.serving.supervisor.processes import free_port

    control = config.control_port or config.port + 1
    client = ensure_supervisor(config.port, control, _layout().supervisor)
    backend = free_port()
    try:
        outcome = client.deploy(tag, serve_command(tag, backend), backend, ready_path="/readyz", env=serve_env(_layout().home),
                                cwd=str(_layout().home), ready_timeout_s=config.ready_timeout_s)
    except DeployError as err:
        _audit({"target": "local", "tag": tag, "model_version": model_version, "action": "failed", "error": str(err)[:2000],
                "run_id": context.run.run_id, "by": by})
        raise dg.Failure(description=f"serving/deployment: {tag} did not go live; the previous version keeps serving: {err}") from err
    # A version a drift retrain put live carries that drift's window, so the drift sensor can
    # tell a shift the retrain did not cure from a new one.
    drift_window = context.run.tags.get("driftloop/drift_window")
    _audit({"target": "local", "tag": tag, "model_version": model_version, **outcome, "run_id": context.run.run_id, "by": by,
            **({"drift_window": drift_window} if drift_window else {})})
    context.log.info(f"{tag} ({model_version}) {outcome['action']} on http://127.0.0.1:{config.port}")
    return dg.MaterializeResult(metadata={
        "tag": dg.MetadataValue.text(tag), "model_version": dg.MetadataValue.text(model_version),
        "url": dg.MetadataValue.url(f"http://127.0.0.1:{config.port}"), "action": dg.MetadataValue.text(outcome["action"]),
        "previous": dg.MetadataValue.text(str(outcome.get("previous"))), "supervisor": json_meta(client.status().get("active") or {}),
    })


class ShadowConfig(dg.Config):
    challenger_version: str = Field(default="", description="Adapter to shadow; empty: the challenger of the latest evaluation report.")
    stop: bool = Field(default=False, description="Stop shadowing instead.")
    port: int = Field(default=int(os.environ.get("DRIFTLOOP_SERVE_PORT", "3001")), ge=1, le=65535, description="The stable local port.")
    control_port: int = Field(default=0, ge=0, le=65535)
    ready_timeout_s: int = Field(default=600, ge=10)


@dg.asset(key=SHADOW, deps=[EVAL_REPORT, DEPLOYMENT], group_name="serving", kinds={"bentoml"}, owners=OWNERS, code_version="1",
          tags={"stage": "serving"})
def shadow(context: dg.AssetExecutionContext, config: ShadowConfig, model_registry: ModelRegistry) -> dg.MaterializeResult:
    """Shadow mode: the challenger, built exactly like the serving bento but with its own
    adapter, answers a copy of every live request and serves none; both answers go to the
    request log under one request id, for comparison before (or instead of) a promotion."""
    from driftloop.artifacts import ArtifactError
    from driftloop.serving.bento import BuildError, build_bento, serve_command, serve_env
    from driftloop.serving.bundle import build_bundle, load_bundle
    from driftloop.serving.supervisor.client import DeployError, SupervisorClient
    from driftloop.serving.supervisor.processes import free_port

    control = SupervisorClient(f"http://127.0.0.1:{config.control_port or config.port + 1}")
    if not control.alive():
        raise dg.Failure(description=f"serving/shadow: nothing serves on port {config.port}; deploy first (serving/deployment)")
    if config.stop:
        outcome = control.stop_shadow()
        _audit({"target": "local", "action": "shadow_stopped", "tag": outcome.get("previous"), "run_id": context.run.run_id,
                "by": launched_by(context.run.tags) or "manual"})
        return dg.MaterializeResult(metadata={"action": dg.MetadataValue.text(outcome["action"])})
    event = context.instance.get_latest_materialization_event(BENTO)
    report = context.instance.get_latest_materialization_event(EVAL_REPORT)
    if event is None or event.asset_materialization is None:
        raise dg.Failure(description="serving/shadow: no serving bento to shadow; materialize serving/bento first")
    version = config.challenger_version or (report.asset_materialization.metadata["challenger"].value if report else "")
    registry = model_registry.registry()
    try:
        adapter = registry.get(version)
    except ArtifactError as err:
        raise dg.Failure(description=f"serving/shadow: challenger {version!r} is not in the registry: {err}") from err
    serving = load_bundle(Path(event.asset_materialization.metadata["bundle"].value))
    if serving.spec.get("adapter_version") == adapter.version:
        raise dg.Failure(description=f"serving/shadow: {adapter.version} already serves; a shadow must be another version")
    try:
        bundle = build_bundle(_layout().bundles, base_model=serving.spec["base_model"], adapter=adapter.path,
                              adapter_version=adapter.version, index_folder=serving.index_dir, embedding_model=serving.spec["embedding_model"],
                              prompt_version=serving.spec["prompt_version"], settings=serving.spec["settings"])
        tag = build_bento(bundle, _layout().home)
        port = free_port()
        outcome = control.shadow(tag, serve_command(tag, port), port, env=serve_env(_layout().home, {"DRIFTLOOP_ROLE": "shadow"}), cwd=str(_layout().home),
                                 ready_timeout_s=config.ready_timeout_s)
    except (BuildError, DeployError) as err:
        raise dg.Failure(description=f"serving/shadow: {err}") from err
    _audit({"target": "local", "action": "shadowing", "tag": tag, "model_version": adapter.version, "run_id": context.run.run_id,
            "by": launched_by(context.run.tags) or "manual"})
    context.log.info(f"{tag} ({adapter.version}) shadows {serving.model_version} on port {config.port}")
    return dg.MaterializeResult(metadata={"tag": dg.MetadataValue.text(tag), "model_version": dg.MetadataValue.text(adapter.version),
                                          "serving": dg.MetadataValue.text(serving.model_version),
                                          "action": dg.MetadataValue.text(outcome["action"])})


serving_assets = [bento, deployment, shadow]
