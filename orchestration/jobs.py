"""Jobs: the main pipeline materializes the whole lineage with its checks."""

import dagster as dg

pipeline_job = dg.define_asset_job(
    name="driftloop_pipeline",
    # Shadowing a challenger is a choice made per challenger, not a step of every run; the
    # monitoring stage reads live traffic on its own triggers.
    selection=dg.AssetSelection.all() - dg.AssetSelection.assets(["serving", "shadow"]) - dg.AssetSelection.groups("monitoring"),
    description="Materialize the whole lineage on the configured corpus, checks included.",
    tags={"driftloop/trigger": "manual"},
)

data_job = dg.define_asset_job(
    name="data_refresh",
    selection=dg.AssetSelection.groups("data"),
    description="Ingest, validate and version the datasets only.",
)

promotion_job = dg.define_asset_job(
    name="evaluate_and_promote",
    selection=dg.AssetSelection.assets(["evaluation", "eval_report"], ["evaluation", "champion"]),
    description="Evaluate a challenger (the latest adapter, or `challenger_version`) against the champion and promote it only past the gate.",
)

shadow_job = dg.define_asset_job(
    name="shadow_challenger",
    selection=dg.AssetSelection.assets(["serving", "shadow"]),
    description="Let the latest challenger (or `challenger_version`) answer a copy of live traffic beside the champion, serving none.",
)

retrain_job = dg.define_asset_job(
    name="retrain_and_redeploy",
    selection=pipeline_job.selection,
    description="The drift sensor's run: refresh the data, retrain, evaluate, promote past the gate, build and redeploy.",
)

refresh_index_job = dg.define_asset_job(
    name="refresh_index",
    selection=dg.AssetSelection.groups("data", "retrieval") | dg.AssetSelection.assets(["serving", "bento"], ["serving", "deployment"]),
    description="New documents: incremental ingest, embeddings and index, then the champion redeployed on the new index. No training.",
)

drift_check_job = dg.define_asset_job(
    name="drift_check",
    selection=dg.AssetSelection.assets(["monitoring", "drift_report"]),
    description="Drift of the traffic served since the current version went live.",
)

inference_log_job = dg.define_asset_job(
    name="inference_log",
    selection=dg.AssetSelection.assets(["monitoring", "inference_log"]),
    description="One day of the request log, feedback joined in.",
)
