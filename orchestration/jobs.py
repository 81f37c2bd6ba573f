"""Jobs: the main pipeline materializes the whole lineage with its checks. Each lineage
has its own jobs over its own assets (`build_jobs`); the default lineage's are named as
they always were (`driftloop_pipeline`), another's carry its name (`runbooks__driftloop_pipeline`)."""

import dagster as dg

from assets.keys import BENTO, CANARY, CHAMPION, DEPLOYMENT, DRIFT_REPORT, EVAL_REPORT, INFERENCE_LOG, SHADOW
from resources.lineage import Lineage

GROUPS = ("data", "retrieval", "training", "evaluation", "serving", "monitoring")


def build_jobs(lineage: Lineage | None = None) -> dict[str, dg.JobDefinition]:
    """The lineage's jobs by their default-lineage names."""
    lineage = lineage or Lineage()

    def groups(*names: str) -> dg.AssetSelection:
        return dg.AssetSelection.groups(*(lineage.group(n) for n in names))

    def assets(*keys: dg.AssetKey) -> dg.AssetSelection:
        return dg.AssetSelection.assets(*(lineage.key(k) for k in keys))

    # Shadowing a challenger is a choice made per challenger, not a step of every run; the
    # monitoring stage reads live traffic on its own triggers.
    pipeline = groups(*GROUPS) - assets(SHADOW, CANARY) - groups("monitoring")
    specs = {
        "driftloop_pipeline": (pipeline, "Materialize the whole lineage on the configured corpus, checks included.", {"driftloop/trigger": "manual"}),
        "data_refresh": (groups("data"), "Ingest, validate and version the datasets only.", None),
        "evaluate_and_promote": (assets(EVAL_REPORT, CHAMPION), "Evaluate a challenger (the latest adapter, or `challenger_version`) against "
                                 "the champion and promote it only past the gate.", None),
        "shadow_challenger": (assets(SHADOW), "Let the latest challenger (or `challenger_version`) answer a copy of live traffic beside the "
                              "champion, serving none.", None),
        "retrain_and_redeploy": (pipeline, "The drift sensor's run: refresh the data, retrain, evaluate, promote past the gate, build and "
                                 "redeploy.", None),
        "refresh_index": (groups("data", "retrieval") | assets(BENTO, DEPLOYMENT), "New documents: incremental ingest, embeddings and "
                          "index, then the champion redeployed on the new index. No training.", None),
        "canary_decision": (assets(CANARY), "Decide on the running canary from its live evidence: promote it to all traffic, roll it "
                            "back, or wait.", None),
        "drift_check": (assets(DRIFT_REPORT), "Drift of the traffic served since the current version went live.", None),
        "inference_log": (assets(INFERENCE_LOG), "One day of the request log, feedback joined in.", None),
    }
    return {name: dg.define_asset_job(name=lineage.job(name), selection=selection, tags=tags,
                                      description=description + ("" if not lineage.name else f" Lineage {lineage.name}."))
            for name, (selection, description, tags) in specs.items()}

