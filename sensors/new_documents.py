"""New or changed documents start the incremental refresh: ingest, chunks, embeddings
(only what changed is embedded again), the index, and a redeploy of the serving bento
on the new index, with no retraining. The source's fingerprint (names, sizes, mtimes)
is compared with the one recorded by the last data/source_documents materialization, so
a daemon restart or a lost cursor never re-ingests an unchanged source, and the run key
(the fingerprint) never starts two refreshes for one change."""

import dagster as dg

from assets.data import SOURCE_DOCUMENTS, source_locations
from driftloop.data.corpus import fingerprint
from driftloop.settings import Settings
from resources.lineage import Lineage
from sensors.drift import sensor_run_config, sensor_status


def refresh_on_new_documents(context: dg.SensorEvaluationContext, settings: Settings, lineage: Lineage):
    current = fingerprint(source_locations(lineage=lineage, settings=settings))
    event = context.instance.get_latest_materialization_event(lineage.key(SOURCE_DOCUMENTS))
    recorded = event.asset_materialization.metadata.get("source_fingerprint") if event and event.asset_materialization else None
    if recorded is None:
        # The first ingest belongs to the main job; a refresh racing it would ingest twice.
        return dg.SkipReason("nothing ingested yet: the main job makes the first ingest")
    if recorded.value == current:
        return dg.SkipReason("the source is unchanged since the last ingest")
    return dg.RunRequest(run_key=f"documents-{current}", run_config=sensor_run_config(context, lineage.job("refresh_index"), settings),
                         tags={"driftloop/trigger": "new_documents", "driftloop/source_fingerprint": current})


def new_documents_sensor(settings: Settings, lineage: Lineage | None = None) -> dg.SensorDefinition:
    lineage = lineage or Lineage()

    @dg.sensor(name=lineage.job("new_documents"), job_name=lineage.job("refresh_index"), minimum_interval_seconds=settings.sensor_interval_s,
               default_status=sensor_status(settings),
               description="Incremental ingest, embedding, index refresh and redeploy when documents are added or changed.")
    def new_documents(context: dg.SensorEvaluationContext):
        return refresh_on_new_documents(context, settings, lineage)

    return new_documents
