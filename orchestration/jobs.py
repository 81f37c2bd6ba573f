"""Jobs: the main pipeline materializes the whole lineage with its checks."""

import dagster as dg

pipeline_job = dg.define_asset_job(
    name="driftloop_pipeline",
    # Shadowing a challenger is a choice made per challenger, not a step of every run.
    selection=dg.AssetSelection.all() - dg.AssetSelection.assets(["serving", "shadow"]),
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
