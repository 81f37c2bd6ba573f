"""A failing blocking data check stops a real run of the lineage: a good run makes a
champion; in the next run the stored corpus differs from what its asset screened (a
concurrent writer appended a row after the DVC commit), the Great Expectations check that
re-reads it fails, nothing downstream materializes, the champion and its files stay as
they were, and the last good corpus is still restorable from the DVC remote."""

import shutil

import dagster as dg
import pytest

from assets.data import SOURCE_DOCUMENTS
from assets.training import BASE_MODEL
from resources.dvc import DvcStore, DvcVersion
from test_evaluation_assets import ALL, champion_state, run, tiny_resources


class ConcurrentlyWrittenStore(DvcStore):
    """DVC as usual, except that right after `dataset` is committed another writer appends
    a copy of its first row to the working file: DVC holds what the asset screened, the
    file the check reads holds a duplicate."""

    dataset: str

    def commit(self, name: str) -> DvcVersion:
        version = super().commit(name)
        if name == self.dataset:
            path = self.dataset_path(name)
            first = path.read_bytes().splitlines(keepends=True)[0]
            with path.open("ab") as handle:
                handle.write(first)
        return version


@pytest.mark.slow
def test_a_failing_blocking_data_check_stops_everything_downstream(corpus, dvc_store, tiny_llama, tiny_embedding_model, tmp_path):
    instance = dg.DagsterInstance.ephemeral()
    registry, resources = tiny_resources(tmp_path, dvc_store, tiny_llama, tiny_embedding_model)

    good = run(instance, corpus, resources)
    assert good.success
    reg = registry.registry()
    champion = reg.champion().version
    folder = reg.get(champion).path
    files, history, versions = champion_state(folder), reg.history(), reg.versions()
    good_md5 = dvc_store.version("source_documents").md5
    good_corpus = dvc_store.dataset_path("source_documents").read_bytes()

    racing = ConcurrentlyWrittenStore(workspace_dir=dvc_store.workspace_dir, remote_url=dvc_store.remote_url, dataset="source_documents")
    blocked = run(instance, corpus, {**resources, "dvc": racing})
    assert not blocked.success

    # The asset screened and committed the same corpus as before; the check caught the copy.
    (docs,) = blocked.asset_materializations_for_node(SOURCE_DOCUMENTS.to_python_identifier())
    assert docs.metadata["dvc_md5"].value == good_md5
    checks = {e.event_specific_data.check_name: e.event_specific_data for e in blocked.all_events
              if e.event_type_value == "ASSET_CHECK_EVALUATION" and e.event_specific_data.asset_key == SOURCE_DOCUMENTS}
    assert not checks["duplicates"].passed and checks["duplicates"].severity == dg.AssetCheckSeverity.ERROR
    assert checks["schema"].passed and checks["text_quality"].passed
    (failure,) = [e for e in blocked.all_events if e.event_type_value == "STEP_FAILURE"]
    assert failure.step_key == "source_documents_expectations"

    # Nothing that reads the corpus ran; only the base model, which reads no data, may load.
    materialized = {e.asset_key for e in blocked.all_events if e.event_type_value == "ASSET_MATERIALIZATION"}
    assert materialized - {BASE_MODEL} == {SOURCE_DOCUMENTS}, materialized
    downstream = {k.to_python_identifier() for a in ALL if isinstance(a, dg.AssetsDefinition) for k in a.keys} - {
        SOURCE_DOCUMENTS.to_python_identifier(), BASE_MODEL.to_python_identifier()}
    started = {e.step_key for e in blocked.all_events if e.event_type_value == "STEP_START"}
    assert len(downstream) >= 8 and not started & downstream, started & downstream

    assert reg.champion().version == champion and champion_state(folder) == files
    assert reg.history() == history and reg.versions() == versions

    # The last good corpus comes back from the remote alone, byte for byte.
    assert dvc_store.dataset_path("source_documents").read_bytes() != good_corpus
    shutil.rmtree(dvc_store.root / ".dvc" / "cache")
    assert dvc_store.restore("source_documents", good_md5).read_bytes() == good_corpus
