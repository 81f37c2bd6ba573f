"""Serving stage: the champion built into a bento, and that bento deployed.

Only the registry's champion alias is ever built, and the alias only moves past the
promotion gate, so a model that failed its gate cannot reach this stage; a failed
build or deploy leaves the version that was serving in place.
"""

from pathlib import Path

import dagster as dg
from pydantic import Field

from assets.common import OWNERS, json_meta
from assets.keys import BENTO, CHAMPION, DEPLOYMENT, EVAL_REPORT, SHADOW, VECTOR_INDEX
from assets.evaluation import launched_by
from assets.stage import Stage
from resources.deployer import Deployer
from resources.lineage import Lineage
from resources.models import ModelCatalog
from resources.registry import ModelRegistry
from resources.vector_store import VectorStore


stage = Stage()


class BentoConfig(dg.Config):
    prompt_version: str = "rag.v1"
    gpus: int = Field(default=0, ge=0, description="GPUs the service asks for; 0 serves on the CPU.")
    max_input_chars: int = Field(default=4000, ge=1)
    max_input_tokens: int = Field(default=1024, ge=1)
    price_per_1k_prompt: float = Field(default=0.0, ge=0.0, description="Cost per 1k prompt tokens, for the request log.")
    price_per_1k_completion: float = Field(default=0.0, ge=0.0)
    screen_injection: bool = Field(default=True, description="Screen user turns and retrieved chunks with the prompt-injection "
                                   "classifier beside the patterns; off, the patterns alone decide and chunks are not screened.")


@stage.asset(key=BENTO, deps=[CHAMPION, VECTOR_INDEX], group_name="serving", kinds={"bentoml"}, owners=OWNERS, code_version="1",
          tags={"stage": "serving"})
def bento(context: dg.AssetExecutionContext, config: BentoConfig, models: ModelCatalog, vector_store: VectorStore,
          model_registry: ModelRegistry, lineage: Lineage) -> dg.MaterializeResult:
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
        bundle = build_bundle(lineage.layout().bundles,
                              base_model={"name": base.name, "path": base.path, "version": base.version}, adapter=champion.path,
                              adapter_version=champion.version, index_folder=vector_store.store().current_index_folder(),
                              embedding_model=models.embedding_model, prompt_version=config.prompt_version,
                              settings={"embedding_precision": models.embedding_precision, "generator_precision": models.generator_precision,
                                        "generator_engine": models.engine(base),
                                        "max_input_chars": config.max_input_chars,
                                        "max_input_tokens": config.max_input_tokens, "price_per_1k_prompt": config.price_per_1k_prompt,
                                        "price_per_1k_completion": config.price_per_1k_completion,
                                        "screen_injection": config.screen_injection})
        tag = build_bento(bundle, lineage.layout().home, config.gpus)
    except (ArtifactError, BuildError) as err:
        raise dg.Failure(description=f"serving/bento: {err}") from err
    context.log.info(f"built {tag} for {bundle.model_version} on index {bundle.spec['index_version']}")
    return dg.MaterializeResult(
        data_version=dg.DataVersion(bundle.version),
        metadata={"tag": dg.MetadataValue.text(tag), "model_version": dg.MetadataValue.text(bundle.model_version),
                  "index_version": dg.MetadataValue.text(bundle.spec["index_version"]), "bundle": dg.MetadataValue.path(str(bundle.folder)),
                  "gpus": dg.MetadataValue.int(config.gpus)},
    )


def _latest_bento(context: dg.AssetExecutionContext, lineage: Lineage, asset: str) -> dict:
    event = context.instance.get_latest_materialization_event(lineage.key(BENTO))
    if event is None or event.asset_materialization is None:
        raise dg.Failure(description=f"{asset}: no bento has been built; materialize serving/bento first")
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}


def _audit(context: dg.AssetExecutionContext) -> dict:
    return {"run_id": context.run.run_id, "by": launched_by(context.run.tags) or "manual"}


# A deploy is idempotent (the same tag already serving is "unchanged"), so a worker
# killed mid-switch is simply retried; the supervisor keeps the old version serving.
@stage.asset(key=DEPLOYMENT, deps=[BENTO], group_name="serving", kinds={"bentoml", "kubernetes"}, owners=OWNERS, code_version="2",
          tags={"stage": "serving"}, retry_policy=dg.RetryPolicy(max_retries=2, delay=5))
def deployment(context: dg.AssetExecutionContext, deployer: Deployer, lineage: Lineage) -> dg.MaterializeResult:
    """Deploy the latest bento where the profile's deployer points. Locally, a supervisor
    starts it beside the running version, waits until it is ready, switches the stable port
    to it and stops the old one; for Kubernetes, manifests with GPU requests and a rolling
    update are rendered."""
    from driftloop.serving.deploy import DeployError

    meta = _latest_bento(context, lineage, "serving/deployment")
    # A version a drift retrain put live carries that drift's window, so the drift sensor can
    # tell a shift the retrain did not cure from a new one.
    window = context.run.tags.get("driftloop/drift_window")
    try:
        done = deployer.target().deploy(meta["tag"], meta["model_version"], {**_audit(context), **({"drift_window": window} if window else {})})
    except DeployError as err:
        raise dg.Failure(description=f"serving/deployment: {err}") from err
    context.log.info(f"{done.tag} ({done.model_version}) {done.action} on {done.url or done.manifests}")
    metadata = {"tag": dg.MetadataValue.text(done.tag), "model_version": dg.MetadataValue.text(done.model_version),
                "target": dg.MetadataValue.text(done.target), "action": dg.MetadataValue.text(done.action)}
    if done.manifests is not None:
        metadata["manifests"] = dg.MetadataValue.path(str(done.manifests))
    else:
        metadata.update(url=dg.MetadataValue.url(done.url), previous=dg.MetadataValue.text(str(done.previous)), supervisor=json_meta(done.active))
    return dg.MaterializeResult(metadata=metadata)


class ShadowConfig(dg.Config):
    challenger_version: str = Field(default="", description="Adapter to shadow; empty: the challenger of the latest evaluation report.")
    stop: bool = Field(default=False, description="Stop shadowing instead.")
    in_process: bool = Field(default=True, description="The challenger as an adapter of the served model, switched per request in one "
                                                       "process (the base loaded once); false starts it as a service of its own.")


@stage.asset(key=SHADOW, deps=[EVAL_REPORT, DEPLOYMENT], group_name="serving", kinds={"bentoml"}, owners=OWNERS, code_version="2",
          tags={"stage": "serving"})
def shadow(context: dg.AssetExecutionContext, config: ShadowConfig, model_registry: ModelRegistry, deployer: Deployer,
           lineage: Lineage) -> dg.MaterializeResult:
    """Shadow mode: the challenger, built exactly like the serving bento but with its own
    adapter, answers a copy of every live request and serves none; both answers go to the
    request log under one request id, for comparison before (or instead of) a promotion."""
    from driftloop.artifacts import ArtifactError
    from driftloop.serving.bento import BuildError, build_bento
    from driftloop.serving.bundle import build_bundle, load_bundle
    from driftloop.serving.deploy import DeployError

    target = deployer.target()
    try:
        if config.stop:
            meta = _latest_bento(context, lineage, "serving/shadow")
            # The champion's own bento again, without the shadow adapter; a shadow process too, if one runs.
            plain = target.deploy(meta["tag"], meta["model_version"], _audit(context)).action
            stopped = target.stop_shadow(_audit(context)) if not config.in_process else "in process"
            return dg.MaterializeResult(metadata={"action": dg.MetadataValue.text(f"stopped ({stopped}); champion bento {plain}")})
        if not config.in_process:
            target.require_running()
        meta = _latest_bento(context, lineage, "serving/shadow")
        report = context.instance.get_latest_materialization_event(lineage.key(EVAL_REPORT))
        version = config.challenger_version or (report.asset_materialization.metadata["challenger"].value if report else "")
        try:
            adapter = model_registry.registry().get(version)
        except ArtifactError as err:
            raise dg.Failure(description=f"serving/shadow: challenger {version!r} is not in the registry: {err}") from err
        serving = load_bundle(Path(meta["bundle"]))
        if serving.spec.get("adapter_version") == adapter.version:
            raise dg.Failure(description=f"serving/shadow: {adapter.version} already serves; a shadow must be another version")
        common = {"base_model": serving.spec["base_model"], "index_folder": serving.index_dir, "embedding_model": serving.spec["embedding_model"],
                  "prompt_version": serving.spec["prompt_version"], "settings": serving.spec["settings"]}
        if config.in_process:
            trained_on = adapter.lineage.get("base_model_version")
            if trained_on and trained_on != serving.spec["base_model"]["version"]:
                raise dg.Failure(description=f"serving/shadow: {adapter.version} was trained on base {trained_on}, the service runs "
                                             f"{serving.spec['base_model']['version']}; shadow it with in_process: false")
            # The serving bundle again, with the challenger beside the champion: deployed as the
            # active version, it answers clients as before and the challenger from the same model.
            bundle = build_bundle(lineage.layout().bundles, adapter=serving.adapter_dir, adapter_version=serving.spec.get("adapter_version"),
                                  shadow_adapter=adapter.path, shadow_version=adapter.version, **common)
            tag = build_bento(bundle, lineage.layout().home)
            action = f"shadowing in process ({target.deploy(tag, serving.model_version, _audit(context)).action})"
        else:
            bundle = build_bundle(lineage.layout().bundles, adapter=adapter.path, adapter_version=adapter.version, **common)
            tag = build_bento(bundle, lineage.layout().home)
            action = target.shadow(tag, adapter.version, _audit(context))
    except (ArtifactError, BuildError, DeployError) as err:
        raise dg.Failure(description=f"serving/shadow: {err}") from err
    context.log.info(f"{tag} ({adapter.version}) shadows {serving.model_version}")
    return dg.MaterializeResult(metadata={"tag": dg.MetadataValue.text(tag), "model_version": dg.MetadataValue.text(adapter.version),
                                          "serving": dg.MetadataValue.text(serving.model_version), "action": dg.MetadataValue.text(action)})


def build(lineage: Lineage | None = None, config: dict[str, dict] | None = None) -> list[dg.AssetsDefinition]:
    built = stage.build(lineage or Lineage(), config)
    return [built["bento"], built["deployment"], built["shadow"]]


serving_assets = build()
bento, deployment, shadow = serving_assets
