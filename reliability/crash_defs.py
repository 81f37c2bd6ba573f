"""The product's own training, embedding and deployment assets, bound to tiny models, as
a code location the crash harness (reliability/crash.py) runs with the local profile's
multiprocess executor, so every step is a subprocess that can be SIGKILLed.

    python reliability/crash_defs.py <job> <run_config.json> [--from-failure RUN_ID]

executes one run on $DAGSTER_HOME's instance (the run worker) and prints its run id and
status as JSON; --from-failure re-executes a failed run from its failed step, which is
what Dagster's run retries do. $DRIFTLOOP_CRASH_MODELS holds the tiny models' paths."""


import json
import os
import sys

import dagster as dg

from assets.data import data_assets
from assets.retrieval import chunks, embeddings
from assets.serving import deployment
from assets.training import training_assets
from orchestration.profile import LOCAL_EXECUTOR
from resources.deployer import LocalDeployer
from resources.dvc import DvcStore
from resources.models import ModelCatalog
from resources.registry import ModelRegistry
from resources.vector_store import VectorStore

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JOBS = {
    "setup": dg.AssetSelection.groups("data")
    | dg.AssetSelection.assets(["data", "instruction_dataset"], ["training", "base_model"], ["retrieval", "chunks"]),
    "train": dg.AssetSelection.assets(["training", "lora_adapter"]),
    "embed": dg.AssetSelection.assets(["retrieval", "embeddings"]),
    "deploy": dg.AssetSelection.assets(["serving", "deployment"]),
    "bento": dg.AssetSelection.assets(["serving", "bento"]),
}


class BentoRecord(dg.Config):
    tag: str
    model_version: str


@dg.asset(key=["serving", "bento"], group_name="serving")
def recorded_bento(config: BentoRecord) -> dg.MaterializeResult:
    """Stands in for serving/bento (which needs a champion and an index): the harness builds
    the bentos with driftloop.serving.bento.build_bento and records their tags here, which is
    all serving/deployment reads."""
    return dg.MaterializeResult(metadata={"tag": config.tag, "model_version": config.model_version})


def _models() -> ModelCatalog:
    paths = json.loads(os.environ.get("DRIFTLOOP_CRASH_MODELS") or "{}")
    # Batches of one make the tiny embedder's pass last long enough to be killed at a random point.
    return ModelCatalog(generator_model=paths.get("llama", ""), embedding_model=paths.get("embedder", ""), device="cpu",
                        embedding_precision="fp32", embedding_batch_size=1)


def get_job(name: str) -> dg.JobDefinition:
    defs = dg.Definitions(
        assets=[*data_assets, *training_assets, chunks, embeddings, deployment, recorded_bento],
        jobs=[dg.define_asset_job(job, selection) for job, selection in JOBS.items()],
        resources={"dvc": DvcStore(), "models": _models(), "model_registry": ModelRegistry(), "vector_store": VectorStore.configure_at_launch(),
                   "deployer": LocalDeployer()},
        executor=LOCAL_EXECUTOR,
    )
    return defs.resolve_job_def(name)


def main(argv: list[str]) -> int:
    job, config_path = argv[0], argv[1]
    run_config = json.loads(open(config_path, encoding="utf-8").read())
    options = None
    with dg.DagsterInstance.get() as instance:
        if "--from-failure" in argv:
            parent = argv[argv.index("--from-failure") + 1]
            options = dg.ReexecutionOptions.from_failure(parent, instance)
            run_config = instance.get_run_by_id(parent).run_config
        reconstructable = dg.build_reconstructable_job("reliability.crash_defs", "get_job", reconstructable_args=(job,),
                                                       reconstructor_working_directory=ROOT)
        result = dg.execute_job(reconstructable, instance=instance, run_config=run_config, reexecution_options=options, raise_on_error=False)
        print(json.dumps({"run_id": result.run_id, "success": result.success}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
