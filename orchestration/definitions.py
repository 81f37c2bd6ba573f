"""The one Definitions object of the driftloop code location, built for the profile
that configuration names (see orchestration/profile.py): local by default. The settings
are read when Dagster loads the code location, not when this module is imported."""

import dagster as dg

from assets.data import data_assets, data_checks
from assets.evaluation import evaluation_assets, evaluation_checks
from assets.monitoring import monitoring_assets
from assets.retrieval import retrieval_assets
from assets.serving import serving_assets
from assets.training import training_assets
from driftloop.settings import Settings
from orchestration.jobs import (
    data_job, drift_check_job, inference_log_job, pipeline_job, promotion_job, refresh_index_job, retrain_job, shadow_job,
)
from orchestration.profile import Profile, load_profile
from orchestration.schedules import build_schedules
from resources.dvc import DvcStore
from resources.models import ModelCatalog
from resources.registry import ModelRegistry
from resources.vector_store import VectorStore
from sensors.drift import drift_sensors
from sensors.new_documents import new_documents_sensor
from sensors.run_failures import record_run_failures

RESOURCES = {"dvc": DvcStore, "models": ModelCatalog, "vector_store": VectorStore, "model_registry": ModelRegistry}


def build_defs(profile: Profile, settings: Settings) -> dg.Definitions:
    return dg.Definitions(
        assets=[*data_assets, *retrieval_assets, *training_assets, *evaluation_assets, *serving_assets, *monitoring_assets],
        asset_checks=[*data_checks, *evaluation_checks],
        jobs=[pipeline_job, data_job, promotion_job, shadow_job, retrain_job, refresh_index_job, drift_check_job, inference_log_job],
        schedules=build_schedules(settings),
        sensors=[record_run_failures, *drift_sensors(settings), new_documents_sensor(settings)],
        resources=profile.bind(RESOURCES, {"deployer": {"port": settings.serve_port}}),
        executor=profile.executor,
    )


@dg.definitions
def defs() -> dg.Definitions:
    settings = Settings.from_env()
    return build_defs(load_profile(settings), settings)
