"""Serving stage: the champion built into a bento, and that bento deployed, at once or
first as a canary beside the serving version, and the canary's live decision.

Only the registry's champion alias is ever built, and the alias only moves past the
promotion gate, so a model that failed its gate cannot reach this stage; a failed
build or deploy leaves the version that was serving in place, and a canary that is worse
live than the version it would replace is rolled back with the alias.
"""

from pathlib import Path

import dagster as dg
from pydantic import Field

from assets.common import OWNERS, champion_moved, json_meta, load_dataset
from assets.keys import BENTO, CANARY, CHAMPION, DEPLOYMENT, EVAL_REPORT, QA_PAIRS, ROUTER, SHADOW, VECTOR_INDEX
from assets.evaluation import launched_by
from assets.stage import Stage
from resources.deployer import Deployer
from resources.dvc import DvcStore
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


class RouterConfig(dg.Config):
    enabled: bool = Field(default=True, description="Train and serve the router; off, every request gets a full RAG answer.")
    k: int = Field(default=3, ge=1, le=20, description="Chunks the router reads (the service's default k).")
    scope_threshold: float = Field(default=0.25, gt=0.0, lt=1.0, description="Below this in-scope probability a question is refused "
                                   "(low: turning away a user's real question costs more than generating for a stray one).")
    extractive_threshold: float = Field(default=0.7, gt=0.0, lt=1.0, description="From this probability the top chunk's passage answers.")
    max_train_questions: int = Field(default=1000, ge=20, description="Training questions used at most (the rest add little).")
    min_in_scope_kept: float = Field(default=0.95, ge=0.0, le=1.0, description="Gate: held-out corpus questions not refused.")
    min_out_of_scope_caught: float = Field(default=0.8, ge=0.0, le=1.0, description="Gate: held-out written questions refused.")
    min_extractive_f1: float = Field(default=0.5, ge=0.0, le=1.0, description="Gate: mean token F1 of extractive answers.")


@stage.asset(key=ROUTER, deps=[QA_PAIRS, VECTOR_INDEX], group_name="serving", kinds={"scikitlearn"}, owners=OWNERS, code_version="1",
             tags={"stage": "serving"})
def router(context: dg.AssetExecutionContext, config: RouterConfig, dvc: DvcStore, models: ModelCatalog, vector_store: VectorStore,
           lineage: Lineage) -> dg.MaterializeResult:
    """The classic-ML router in front of the LLM (driftloop.routing): out of scope, an
    extractive passage, or full RAG, per request. Trained on the training split's questions
    and driftloop's written out-of-scope questions over the promoted index, evaluated on the
    held-out split and held-out written questions; only a router that clears its gate is
    built into the bento."""
    from driftloop.retrieval.index import VectorIndex
    from driftloop.routing import evaluate_router, retrieve, train_router, written_out_of_scope

    if not config.enabled:
        return dg.MaterializeResult(metadata={"passed": dg.MetadataValue.bool(False), "reason": dg.MetadataValue.text("disabled")})
    rows = load_dataset(dvc, "qa_pairs")
    train = [r for r in rows if r["split"] == "train"][: config.max_train_questions]
    held = [r for r in rows if r["split"] == "eval"]
    if len(train) < 20 or not held:
        raise dg.Failure(description=f"serving/router: {len(train)} training and {len(held)} held-out questions in data/qa_pairs; "
                                     "it needs at least 20 and 1")
    embedder = models.embedder()
    index = VectorIndex(vector_store.store().current_index_folder())

    def seen(questions: list[str]):
        return retrieve(embedder, index, questions, config.k)

    try:
        trained, counts = train_router(seen([r["question"] for r in train]), [r["answer"] for r in train],
                                       seen(written_out_of_scope("train")), models.embedding_model, config.k,
                                       config.scope_threshold, config.extractive_threshold)
    except ValueError as err:
        raise dg.Failure(description=f"serving/router: {err}") from err
    figures = evaluate_router(trained, seen([r["question"] for r in held]), [r["answer"] for r in held], seen(written_out_of_scope("eval")))
    floors = {"in_scope_kept": config.min_in_scope_kept, "out_of_scope_caught": config.min_out_of_scope_caught,
              "extractive_f1": config.min_extractive_f1}
    # No extractive answer at all is no failure: those questions are generated as before.
    failures = [f"{name} {figures[name]} < {floor}" for name, floor in floors.items() if figures[name] is not None and figures[name] < floor]
    trained.trained_on = {**counts, "index_version": index.version}
    final = trained.save(lineage.layout().routers / trained.to_dict()["version"])
    context.log.info(f"router {trained.version}: {'passed' if not failures else 'failed'} {figures}")
    return dg.MaterializeResult(
        data_version=dg.DataVersion(trained.version),
        metadata={"passed": dg.MetadataValue.bool(not failures), "router_version": dg.MetadataValue.text(trained.version),
                  "path": dg.MetadataValue.path(str(final)), "index_version": dg.MetadataValue.text(index.version),
                  "gate": dg.MetadataValue.text("passed" if not failures else "; ".join(failures)), "figures": json_meta(figures),
                  "trained_on": json_meta(counts), "floors": json_meta(floors)},
    )


def served_router(context: dg.AssetExecutionContext, lineage: Lineage, index_version: str) -> Path | None:
    """The latest router, when it passed its gate and was trained on the index being served."""
    event = context.instance.get_latest_materialization_event(lineage.key(ROUTER))
    meta = {k: v.value for k, v in event.asset_materialization.metadata.items()} if event and event.asset_materialization else {}
    if not meta.get("passed") or meta.get("index_version") != index_version:
        return None
    return Path(meta["path"]) if Path(meta["path"]).is_file() else None


@stage.asset(key=BENTO, deps=[CHAMPION, VECTOR_INDEX, ROUTER], group_name="serving", kinds={"bentoml"}, owners=OWNERS, code_version="1",
          tags={"stage": "serving"})
def bento(context: dg.AssetExecutionContext, config: BentoConfig, models: ModelCatalog, vector_store: VectorStore,
          model_registry: ModelRegistry, lineage: Lineage) -> dg.MaterializeResult:
    """`bentoml build` of the service with the champion adapter, the promoted index and the
    prompt sealed in, offline, tagged by content hash (never `latest`)."""
    from driftloop.artifacts import ArtifactError, verify
    from driftloop.serving.bento import BuildError, build_bento
    from driftloop.serving.bundle import build_bundle

    registry = model_registry.registry()
    champion = registry.champion()
    if champion is None:
        raise dg.Failure(description="serving/bento: there is no champion; only a model that passed its promotion gate is ever built")
    base = models.base_model()
    index_folder = vector_store.store().current_index_folder()
    routed = served_router(context, lineage, verify(index_folder)["version"])
    try:
        bundle = build_bundle(lineage.layout().bundles, router=routed,
                              base_model={"name": base.name, "path": base.path, "version": base.version}, adapter=champion.path,
                              adapter_version=champion.version, index_folder=index_folder,
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
                  "gpus": dg.MetadataValue.int(config.gpus), "router": dg.MetadataValue.text(bundle.spec.get("router_version") or "none")},
    )


def _latest_bento(context: dg.AssetExecutionContext, lineage: Lineage, asset: str) -> dict:
    event = context.instance.get_latest_materialization_event(lineage.key(BENTO))
    if event is None or event.asset_materialization is None:
        raise dg.Failure(description=f"{asset}: no bento has been built; materialize serving/bento first")
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}


def _audit(context: dg.AssetExecutionContext) -> dict:
    return {"run_id": context.run.run_id, "by": launched_by(context.run.tags) or "manual"}


class DeploymentConfig(dg.Config):
    canary_share: float = Field(default=0.0, ge=0.0, lt=1.0, description="The share of live inference traffic a new version first "
                                "takes beside the serving one, each caller kept on one side; 0 switches all traffic at once.")
    canary_min_requests: int = Field(default=200, ge=10, description="Requests each side needs before the final canary decision.")
    canary_alpha: float = Field(default=0.05, gt=0.0, lt=1.0, description="The final look's significance level (Bonferroni-corrected).")
    canary_interim_alpha: float = Field(default=0.001, gt=0.0, lt=1.0, description="The interim looks' level (Haybittle-Peto).")
    canary_min_rate_increase: float = Field(default=0.02, ge=0.0, le=1.0, description="The smallest rise of a failure, guardrail, "
                                            "refusal or negative-feedback rate that counts as a regression.")
    canary_max_p95_ratio: float = Field(default=1.5, ge=1.0, description="The p95 latency ratio (canary / serving) that counts as one.")

    def policy(self) -> dict:
        from driftloop.monitoring.canary import CanaryPolicy

        try:
            return CanaryPolicy(share=self.canary_share, min_requests=self.canary_min_requests, alpha=self.canary_alpha,
                                interim_alpha=self.canary_interim_alpha, min_rate_increase=self.canary_min_rate_increase,
                                max_p95_ratio=self.canary_max_p95_ratio).to_dict()
        except ValueError as err:
            raise dg.Failure(description=f"serving/deployment: {err}") from err


# A deploy is idempotent (the same tag already serving is "unchanged"), so a worker
# killed mid-switch is simply retried; the supervisor keeps the old version serving.
@stage.asset(key=DEPLOYMENT, deps=[BENTO], group_name="serving", kinds={"bentoml", "kubernetes"}, owners=OWNERS, code_version="3",
          tags={"stage": "serving"}, retry_policy=dg.RetryPolicy(max_retries=2, delay=5))
def deployment(context: dg.AssetExecutionContext, config: DeploymentConfig, deployer: Deployer, lineage: Lineage) -> dg.MaterializeResult:
    """Deploy the latest bento where the profile's deployer points. Locally, a supervisor
    starts it beside the running version, waits until it is ready, and switches the stable
    port to it and stops the old one, or with `canary_share` sends it that share of traffic
    until serving/canary decides; for Kubernetes, manifests with GPU requests and a rolling
    update are rendered."""
    from driftloop.serving.deploy import DeployError

    meta = _latest_bento(context, lineage, "serving/deployment")
    # A version a drift retrain put live carries that drift's window, so the drift sensor can
    # tell a shift the retrain did not cure from a new one.
    window = context.run.tags.get("driftloop/drift_window")
    audit = {**_audit(context), **({"drift_window": window} if window else {})}
    try:
        if config.canary_share > 0:
            done = deployer.target().canary(meta["tag"], meta["model_version"], config.policy(), audit)
        else:
            done = deployer.target().deploy(meta["tag"], meta["model_version"], audit)
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


class CanaryDecisionConfig(dg.Config):
    canary: str = Field(default="", description="The canary (bento tag) to decide on; empty: the one running. A different one "
                        "running, or none, decides nothing.")
    until: str = Field(default="", description="Evidence up to this time (ISO 8601, UTC); empty: now. The canary sensor pins it, "
                       "with the proxy's counts, so the run decides exactly what the sensor saw.")
    sides: dict[str, dict[str, int]] = Field(default_factory=dict, description="The proxy's counts per side at `until`; empty: now.")


@stage.asset(key=CANARY, deps=[DEPLOYMENT], group_name="serving", kinds={"bentoml"}, owners=OWNERS, code_version="1",
             tags={"stage": "serving"})
def canary(context: dg.AssetExecutionContext, config: CanaryDecisionConfig, deployer: Deployer, model_registry: ModelRegistry,
           lineage: Lineage) -> dg.MaterializeResult:
    """The canary's live decision (driftloop.monitoring.canary states the rule): promoted to all
    traffic when no signal regressed at the final look, rolled back at any look where one did
    (the champion alias going back with it), otherwise still waiting. The figures, the rule
    and the outcome are this materialization's metadata and the registry's promotion history."""
    from datetime import UTC, datetime

    from driftloop.monitoring.canary import CanaryPolicy, decide, evidence
    from driftloop.registry import PromotionError
    from driftloop.serving.deploy import DeployError

    target = deployer.target()
    try:
        running = (target.serving() or {}).get("canary")
    except DeployError as err:
        raise dg.Failure(description=f"serving/canary: {err}") from err
    if running is None or (config.canary and running["name"] != config.canary):
        wanted = config.canary or "a canary"
        return dg.MaterializeResult(metadata={"verdict": dg.MetadataValue.text("none"), "canary": dg.MetadataValue.text(wanted),
                                              "reason": dg.MetadataValue.text(f"{wanted} is not running; nothing to decide")})
    until = datetime.fromisoformat(config.until) if config.until else datetime.now(UTC)
    if config.sides:
        running = {**running, "sides": config.sides}
    baseline, candidate, shifts = evidence(lineage.layout().request_log, running, until)
    decision = decide(CanaryPolicy.from_dict(running.get("policy") or {}), baseline, candidate)
    outcome, champion_event = "waiting", None
    if decision.verdict != "wait":
        promote = decision.verdict == "promote"
        audit = {**_audit(context), "decision": decision.verdict, "reason": decision.reason}
        try:
            target.end_canary(running["name"], promote, audit)
        except DeployError as err:
            raise dg.Failure(description=f"serving/canary: the {decision.verdict} of {running['name']} failed: {err}") from err
        registry = model_registry.registry()
        record = {"decision": decision.to_dict(), "run_id": context.run.run_id}
        current = registry.champion()
        try:
            if current is None or current.version != running["model_version"]:
                # A newer champion (or a rollback by hand) since the canary started: never undone here.
                raise PromotionError(f"the champion is {current.version if current else 'none'}, not the canary's {running['model_version']}")
            if promote:
                registry.confirm(running["model_version"], by=_audit(context)["by"], **record)
                outcome = f"promoted: {running['name']} serves all traffic"
            else:
                champion_event = registry.rollback(running["baseline_version"], by=_audit(context)["by"],
                                                   reason=f"canary {running['model_version']}: {decision.reason}", **record)
                outcome = f"rolled back: {running['baseline']} serves all traffic; champion {running['baseline_version']}"
        except PromotionError as err:
            # The service already changed; the alias had moved on since the canary started.
            outcome = f"{decision.verdict} done in serving; the registry kept its champion: {err}"
            context.log.warning(outcome)
    if champion_event is not None:
        context.instance.report_runless_asset_event(champion_moved(champion_event, lineage.key(CHAMPION)))
    context.log.info(f"canary {running['name']}: {decision.verdict} ({decision.reason}); {outcome}")
    return dg.MaterializeResult(metadata={
        "verdict": dg.MetadataValue.text(decision.verdict), "canary": dg.MetadataValue.text(running["name"]),
        "model_version": dg.MetadataValue.text(running["model_version"]), "serving": dg.MetadataValue.text(running["baseline_version"]),
        "reason": dg.MetadataValue.text(decision.reason), "outcome": dg.MetadataValue.text(outcome),
        "rule": dg.MetadataValue.text(decision.rule), "look": dg.MetadataValue.text(decision.look),
        "signals": dg.MetadataValue.md(decision.table()), "sides": json_meta({"serving": decision.baseline, "canary": decision.canary}),
        "shifts": json_meta(shifts), "until": dg.MetadataValue.text(until.isoformat())})


def build(lineage: Lineage | None = None, config: dict[str, dict] | None = None) -> list[dg.AssetsDefinition]:
    built = stage.build(lineage or Lineage(), config)
    return [built["router"], built["bento"], built["deployment"], built["shadow"], built["canary"]]


serving_assets = build()
router, bento, deployment, shadow, canary = serving_assets
