"""The production profile renders a correct Kubernetes deployment, with no cluster.

Each launch path (a job from the definitions, a schedule tick, a sensor's RunRequest, a
backfill, automation, a materialization from the asset UI) is produced with Dagster's
own in-process APIs; the run and step pods are built by dagster-k8s' own builders in
the order K8sRunLauncher.launch_run and K8sStepHandler._get_container_context (0.29)
merge them, and every Job is round-tripped through the kubernetes client's models."""

import json
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster_k8s import K8sRunLauncher, construct_dagster_k8s_job
from dagster_k8s.container_context import K8sContainerContext
from dagster_k8s.job import UserDefinedDagsterK8sConfig, get_user_defined_k8s_config
from kubernetes.client import ApiClient, V1Deployment, V1Job, V1Service

from driftloop.settings import Settings
from orchestration.definitions import build_defs, defs as load_local_defs
from orchestration.profile import DEFAULT_PRODUCTION_FILE, ProfileError, load_profile
from resources.deployer import KubernetesDeployer, LocalDeployer
from resources.registry import ModelRegistry

REPO = Path(__file__).resolve().parents[1]
GPU_OPS = {"training__lora_adapter", "evaluation__eval_report", "retrieval__embeddings"}
IMAGE = "registry.example.com/driftloop/code:sha-0123456789ab"


def _round_trip(obj, kind: str):
    """Serialize as the API server would receive it, then parse with the client's models
    (which reject missing required fields and unknown types)."""
    client = ApiClient()
    body = client.sanitize_for_serialization(obj)

    class Response:
        data = json.dumps(body)

    parsed = client.deserialize(Response(), kind)
    assert client.sanitize_for_serialization(parsed) == body
    return parsed


@pytest.fixture(scope="module")
def prod_defs():
    return build_defs(load_profile(Settings(), "production", DEFAULT_PRODUCTION_FILE), Settings())


@pytest.fixture(scope="module")
def executor_config() -> dict:
    return yaml.safe_load(DEFAULT_PRODUCTION_FILE.read_text())["executor"]


@pytest.fixture(scope="module")
def launcher(tmp_path_factory) -> K8sRunLauncher:
    """The run launcher of deploy/dagster.yaml, pointed at a kubeconfig (nothing is contacted)."""
    kubeconfig = tmp_path_factory.mktemp("kube") / "config"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "offline",
        "clusters": [{"name": "offline", "cluster": {"server": "https://127.0.0.1:6443"}}],
        "users": [{"name": "offline", "user": {"token": "none"}}],
        "contexts": [{"name": "offline", "context": {"cluster": "offline", "user": "offline"}}],
    }))
    config = yaml.safe_load((REPO / "deploy" / "dagster.yaml").read_text())["run_launcher"]["config"]
    return K8sRunLauncher(**{**config, "load_incluster_config": False, "kubeconfig_file": str(kubeconfig)})


@pytest.fixture
def instance():
    with dg.instance_for_test() as instance:
        yield instance


def _job_for(defs: dg.Definitions, run: dg.DagsterRun) -> dg.JobDefinition:
    job = defs.resolve_job_def(run.job_name)
    return job.get_subset(asset_selection=run.asset_selection) if run.asset_selection else job


def run_pod(run: dg.DagsterRun, launcher: K8sRunLauncher) -> V1Job:
    context = K8sContainerContext.create_for_run(run, launcher, include_run_tags=True)
    job = construct_dagster_k8s_job(
        job_config=context.get_k8s_job_config(IMAGE, launcher), args=["dagster", "api", "execute_run"], job_name=f"dagster-run-{run.run_id}",
        pod_name=f"dagster-run-{run.run_id}", component="run_worker", user_defined_k8s_config=context.run_k8s_config,
        labels={"dagster/job": run.job_name}, env_vars=[])
    return _round_trip(job, "V1Job")


def step_pods(defs: dg.Definitions, run: dg.DagsterRun, launcher: K8sRunLauncher, executor_config: dict) -> dict[str, V1Job]:
    executor = K8sContainerContext(namespace=executor_config.get("job_namespace"),
                                   run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(executor_config.get("step_k8s_config", {})))
    pods = {}
    for node in _job_for(defs, run).graph.nodes:
        # Job and run tags are left out of step pods by the executor; only the op's own tags count.
        context = (K8sContainerContext.create_for_run(run, launcher, include_run_tags=False).merge(executor)
                   .merge(K8sContainerContext(run_k8s_config=get_user_defined_k8s_config(node.tags)))
                   .merge(K8sContainerContext(run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(
                       executor_config.get("per_step_k8s_config", {}).get(node.name, {})))))
        job = construct_dagster_k8s_job(
            job_config=context.get_k8s_job_config(IMAGE, launcher), args=["dagster", "api", "execute_step"],
            job_name=f"dagster-step-{node.name.replace('_', '-')}", pod_name=f"dagster-step-{node.name.replace('_', '-')}",
            component="step_worker", user_defined_k8s_config=context.run_k8s_config,
            labels={"dagster/job": run.job_name, "dagster/op": node.name}, env_vars=[])
        pods[node.name] = _round_trip(job, "V1Job")
    return pods


def _container(job: V1Job):
    (container,) = job.spec.template.spec.containers
    return container


def assert_gpu_on_gpu_steps_only(pods: dict[str, V1Job], expected_gpu: set[str]) -> None:
    assert set(pods) >= expected_gpu, sorted(pods)
    for name, job in pods.items():
        resources = _container(job).resources
        pod = job.spec.template.spec
        if name in GPU_OPS:
            assert resources.requests["nvidia.com/gpu"] == "1" and resources.limits["nvidia.com/gpu"] == "1", name
            assert pod.node_selector == {"nvidia.com/gpu.present": "true"}, name
            assert [(t.key, t.operator, t.effect) for t in pod.tolerations] == [("nvidia.com/gpu", "Exists", "NoSchedule")], name
        else:
            assert "nvidia.com/gpu" not in (resources.requests or {}) and "nvidia.com/gpu" not in (resources.limits or {}), name
            assert not pod.node_selector and not pod.tolerations, name
        # The profile's defaults reach every step, merged under the op's own settings.
        assert resources.requests["cpu"] == "2" and resources.limits["memory"] == "12Gi", name
        assert job.spec.backoff_limit == 0 and job.metadata.namespace is None and IMAGE == _container(job).image
        assert [v.name for v in pod.volumes] == ["driftloop-home"], name
        assert [m.mount_path for m in _container(job).volume_mounts] == ["/var/lib/driftloop"], name


def _run_from_request(instance, defs, job_name: str, request: dg.RunRequest) -> dg.DagsterRun:
    job = defs.resolve_job_def(job_name)
    return instance.create_run_for_job(job_def=job, run_config=request.run_config, tags={**job.tags, **request.tags},
                                       asset_selection=frozenset(request.asset_selection) if request.asset_selection else None)


# -- the profile is chosen by configuration only ---------------------------------------------------------------


def test_local_profile_is_todays_behaviour(monkeypatch):
    monkeypatch.delenv("DRIFTLOOP_PROFILE", raising=False)
    monkeypatch.setenv("DRIFTLOOP_SERVE_PORT", "3101")
    local_defs = load_local_defs()
    job = local_defs.resolve_job_def("driftloop_pipeline")
    assert job.executor_def.name == "multiprocess"
    assert load_profile(Settings.from_env()).name == "local"
    assert all(not getattr(r, "remote_url", "") for r in local_defs.resources.values())
    # The deployer is the local supervisor, on the port the settings name.
    assert isinstance(local_defs.resources["deployer"], LocalDeployer) and local_defs.resources["deployer"].port == 3101


def test_production_profile_binds_the_same_resources_to_object_storage(prod_defs):
    assert prod_defs.resolve_job_def("driftloop_pipeline").executor_def.name == "k8s"
    resources = prod_defs.resources
    assert resources["model_registry"].remote_url == "s3://driftloop/registry"
    assert resources["vector_store"].remote_url == "s3://driftloop/retrieval"
    assert resources["dvc"].remote_url == "s3://driftloop/dvc"
    local = load_local_defs().resources
    assert {k: type(r) for k, r in resources.items() if k != "deployer"} == {k: type(r) for k, r in local.items() if k != "deployer"}
    # Deploying renders manifests for the cluster instead of starting a local supervisor.
    assert isinstance(resources["deployer"], KubernetesDeployer) and resources["deployer"].image_repository == "registry.local/driftloop"
    dg.Definitions.validate_loadable(prod_defs)
    # The executor config in the file is valid for the k8s executor.
    assert dg.validate_run_config(prod_defs.resolve_job_def("driftloop_pipeline"), {})


def test_profile_mistakes_fail_at_load(tmp_path):
    with pytest.raises(ProfileError, match="expected one of"):
        load_profile(Settings(), "staging")
    with pytest.raises(ProfileError, match="no settings file"):
        load_profile(Settings(), "production", tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"resources": {"registry": {"remote_url": "s3://x"}}}))
    with pytest.raises(ProfileError, match="unknown resources"):
        build_defs(load_profile(Settings(), "production", bad), Settings())


def test_env_values_resolve_when_a_step_starts(tmp_path, monkeypatch):
    settings = tmp_path / "p.yaml"
    settings.write_text(yaml.safe_dump({"resources": {"model_registry": {"remote_url": {"env": "REGISTRY_URL"}}}}))
    registry = build_defs(load_profile(Settings(), "production", settings), Settings()).resources["model_registry"]
    monkeypatch.setenv("REGISTRY_URL", str(tmp_path / "remote-registry"))

    @dg.asset
    def where(model_registry: ModelRegistry) -> dg.MaterializeResult:
        return dg.MaterializeResult(metadata={"remote_url": model_registry.remote_url})

    result = dg.materialize([where], resources={"model_registry": registry})
    assert result.asset_materializations_for_node("where")[0].metadata["remote_url"].value == str(tmp_path / "remote-registry")


# -- every launch path --------------------------------------------------------------------------------------


def test_job_launched_from_the_definitions(prod_defs, instance, launcher, executor_config):
    job = prod_defs.resolve_job_def("driftloop_pipeline")
    run = instance.create_run_for_job(job_def=job, run_config={}, tags=job.tags)
    assert_gpu_on_gpu_steps_only(step_pods(prod_defs, run, launcher, executor_config), GPU_OPS)
    pod = run_pod(run, launcher)
    # The run pod only orchestrates step pods: it never holds a GPU.
    assert "nvidia.com/gpu" not in (_container(pod).resources.limits or {})
    assert _container(pod).env_from[0].config_map_ref.name == "driftloop-env"


def test_schedule_tick(prod_defs, instance, launcher, executor_config):
    schedule = prod_defs.resolve_schedule_def("weekly_retrain")
    result = schedule.evaluate_tick(dg.build_schedule_context(instance=instance))
    (request,) = result.run_requests
    run = _run_from_request(instance, prod_defs, schedule.job_name, request)
    assert run.tags["driftloop/trigger"] == "schedule"
    assert_gpu_on_gpu_steps_only(step_pods(prod_defs, run, launcher, executor_config), GPU_OPS)


def test_sensor_run_request(prod_defs, instance, launcher, executor_config):
    from assets.monitoring import DRIFT_REPORT

    instance.report_runless_asset_event(dg.AssetMaterialization(DRIFT_REPORT, metadata={
        "enough_data": True, "drifted": True, "window_start": "2026-11-20T00:00:00+00:00", "reasons": ["mmd"], "summary": "drifted"}))
    sensor = prod_defs.resolve_sensor_def("drift_retrain")
    result = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, definitions=prod_defs))
    (request,) = result.run_requests
    run = _run_from_request(instance, prod_defs, sensor.job_name, request)
    assert run.tags["driftloop/trigger"] == "drift"
    assert_gpu_on_gpu_steps_only(step_pods(prod_defs, run, launcher, executor_config), GPU_OPS)


def test_ui_materialization_and_backfill_use_the_implicit_asset_job(prod_defs, instance, launcher, executor_config):
    """The asset UI and asset backfills launch the implicit asset job with an asset
    selection; a job-level dagster-k8s/config would not exist there, and one set on the
    run (a backfill's tags) must not give a CPU step a GPU or take one from a GPU step."""
    implicit = prod_defs.resolve_implicit_global_asset_job_def()
    selection = frozenset(dg.AssetKey.from_user_string(k) for k in ("retrieval/chunks", "retrieval/embeddings", "training/lora_adapter"))
    cpu_only = json.dumps({"container_config": {"resources": {"limits": {"cpu": "1"}}}})
    for tags in ({}, {"dagster/backfill": "abcdefgh", "dagster-k8s/config": cpu_only}):
        run = instance.create_run_for_job(job_def=implicit, run_config={}, tags=tags, asset_selection=selection)
        pods = step_pods(prod_defs, run, launcher, executor_config)
        assert set(pods) == {"retrieval__chunks", "retrieval__embeddings", "training__lora_adapter"}
        assert_gpu_on_gpu_steps_only(pods, {"retrieval__embeddings", "training__lora_adapter"})


def test_automation_requests_run_with_the_same_pods(prod_defs, instance, launcher, executor_config):
    from assets.evaluation import CHAMPION, EVAL_REPORT, GATE

    # Eager automation reacts to an update since its previous tick: one tick before the report, one after.
    selection = dg.AssetSelection.assets(CHAMPION)
    first = dg.evaluate_automation_conditions(defs=prod_defs, instance=instance, asset_selection=selection)
    instance.report_runless_asset_event(dg.AssetMaterialization(EVAL_REPORT))
    instance.report_runless_asset_event(dg.AssetCheckEvaluation(asset_key=EVAL_REPORT, check_name=GATE, passed=True))
    result = dg.evaluate_automation_conditions(defs=prod_defs, instance=instance, asset_selection=selection, cursor=first.cursor)
    requested = {key for key in [CHAMPION] if result.get_requested_partitions(key)}
    assert requested == {CHAMPION}
    run = instance.create_run_for_job(job_def=prod_defs.resolve_implicit_global_asset_job_def(), run_config={},
                                      tags={"dagster/from_automation_condition": "true"}, asset_selection=frozenset(requested))
    pods = step_pods(prod_defs, run, launcher, executor_config)
    assert set(pods) == {"evaluation__champion"}
    assert_gpu_on_gpu_steps_only(pods, set())
    # And when automation selects the evaluation itself, it gets its GPU.
    run = instance.create_run_for_job(job_def=prod_defs.resolve_implicit_global_asset_job_def(), run_config={},
                                      tags={"dagster/from_automation_condition": "true"}, asset_selection=frozenset({EVAL_REPORT, CHAMPION}))
    assert_gpu_on_gpu_steps_only(step_pods(prod_defs, run, launcher, executor_config), {"evaluation__eval_report"})


def test_per_op_override_from_the_profile_moves_a_gpu_step(prod_defs, instance, launcher, executor_config):
    override = {**executor_config, "per_step_k8s_config": {
        "training__lora_adapter": {"pod_spec_config": {"node_selector": {"cloud.google.com/gke-accelerator": "nvidia-l4"}}}}}
    job = prod_defs.resolve_job_def("driftloop_pipeline")
    run = instance.create_run_for_job(job_def=job, run_config={}, tags={})
    pod = step_pods(prod_defs, run, launcher, override)["training__lora_adapter"].spec.template.spec
    assert pod.node_selector == {"nvidia.com/gpu.present": "true", "cloud.google.com/gke-accelerator": "nvidia-l4"}


# -- deploy/ --------------------------------------------------------------------------------------------------


def test_serving_manifests_validate_with_gpu_probes_and_rolling_update(capsys):
    import runpy

    module = runpy.run_path(str(REPO / "deploy" / "serving" / "render.py"))
    assert module["main"](["driftloop:0f1e2d3c4b5a6978", "--image-repository", "registry.example.com/driftloop/serving", "--gpus", "1"]) == 0
    deployment, service = yaml.safe_load_all(capsys.readouterr().out)
    deployment = _round_trip(_round_trip_dict(deployment, "V1Deployment"), "V1Deployment")
    _round_trip(_round_trip_dict(service, "V1Service"), "V1Service")
    assert isinstance(deployment, V1Deployment)
    container = deployment.spec.template.spec.containers[0]
    assert container.image == "registry.example.com/driftloop/serving:0f1e2d3c4b5a6978"
    assert container.resources.limits["nvidia.com/gpu"] == "1" and container.resources.requests["nvidia.com/gpu"] == "1"
    assert container.readiness_probe.http_get.path == "/readyz" and container.liveness_probe.http_get.path == "/livez"
    assert deployment.spec.strategy.type == "RollingUpdate" and deployment.spec.strategy.rolling_update.max_unavailable == 0
    assert deployment.spec.template.spec.tolerations[0].key == "nvidia.com/gpu"


def test_the_production_deployer_renders_manifests_and_records_them(prod_defs, tmp_path, monkeypatch):
    """serving/deployment with the deployer the production profile binds: no supervisor,
    manifests for the bento's content-hash tag, and one line in the audit trail."""
    from assets.serving import BENTO, deployment
    from driftloop.layout import Layout

    monkeypatch.setenv("DRIFTLOOP_HOME", str(tmp_path))
    instance = dg.DagsterInstance.ephemeral()
    instance.report_runless_asset_event(dg.AssetMaterialization(BENTO, metadata={"tag": "driftloop:0f1e2d3c4b5a6978", "model_version": "lora-abc"}))
    result = dg.materialize([deployment], instance=instance, resources={"deployer": prod_defs.resources["deployer"]})
    meta = {k: v.value for k, v in result.asset_materializations_for_node("serving__deployment")[0].metadata.items()}
    assert meta["target"] == "kubernetes" and meta["action"] == "rendered" and "url" not in meta
    deployment_manifest, service = yaml.safe_load_all(Path(meta["manifests"]).read_text())
    container = _round_trip(_round_trip_dict(deployment_manifest, "V1Deployment"), "V1Deployment").spec.template.spec.containers[0]
    assert container.image == "registry.local/driftloop:0f1e2d3c4b5a6978"
    assert service["kind"] == "Service"
    (line,) = Layout.from_env().deployments.read_text().splitlines()
    assert json.loads(line)["target"] == "kubernetes" and json.loads(line)["tag"] == "driftloop:0f1e2d3c4b5a6978"


def _round_trip_dict(body: dict, kind: str):
    class Response:
        data = json.dumps(body)

    parsed = ApiClient().deserialize(Response(), kind)
    assert isinstance(parsed, {"V1Deployment": V1Deployment, "V1Service": V1Service}[kind])
    return parsed


def test_image_tag_is_a_content_hash(tmp_path):
    import runpy
    import shutil

    image_tag = runpy.run_path(str(REPO / "deploy" / "image_tag.py"))["image_tag"]
    copy = tmp_path / "repo"
    for entry in ("deploy/Dockerfile", "requirements.lock", "pyproject.toml", "README.md", "orchestration/profile.py"):
        (copy / entry).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / entry, copy / entry)
    first = image_tag(copy)
    assert first.startswith("sha-") and len(first) == 16 and image_tag(copy) == first
    (copy / "orchestration" / "__pycache__").mkdir()
    (copy / "orchestration" / "__pycache__" / "profile.cpython-311.pyc").write_bytes(b"\0")
    assert image_tag(copy) == first, "bytecode is not part of the image"
    (copy / "orchestration" / "profile.py").write_text((copy / "orchestration" / "profile.py").read_text() + "\n")
    assert image_tag(copy) != first
