"""The service at 4x its concurrency limit for 20 s (`make reliability`: 3 minutes), and a
redeploy loop under load, over HTTP on tiny models (reliability/load.py)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reliability.load import overload, redeploy_under_load  # noqa: E402
from serving_helpers import make_bundle, record_figures, serve  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.reliability]
LIMIT = 2


@pytest.fixture(scope="module")
def bundle_root(tmp_path_factory, tiny_llama, tiny_embedding_model):
    root = tmp_path_factory.mktemp("overload")
    return root, make_bundle(root, tiny_llama, tiny_embedding_model)


def test_sustained_overload_sheds_with_429_503_health_green_memory_bounded(bundle_root):
    root, bundle = bundle_root
    with serve(root, bundle, {"DRIFTLOOP_MAX_CONCURRENCY": str(LIMIT), "DRIFTLOOP_WARMUP_REQUESTS": "2"}) as running:
        figures = record_figures("overload_ci", overload(running["port"], running["proc"].pid, 20, LIMIT, factor=4))
    assert figures["undesigned"] == 0, figures["undesigned_examples"]
    assert set(figures["statuses"]) <= {"200", "429", "503"} and figures["statuses"].get("200", 0) > 0, figures["statuses"]
    assert figures["shed_fraction"] > 0, "4x the limit was not over capacity"
    assert set(figures["health"]) == {"/livez 200", "/readyz 200"}, figures["health"]
    assert figures["rss_growth_pct"] < 25, figures
    assert figures["recovery_status"] == 200 and figures["recovery_s"] < 10


# test_serving::test_bento_build_deploy_and_redeploy_under_load guards the same switch in
# CI; this longer one (two switches, answers per version) runs with the scenarios
# (`make closed-loop`), out of CI's 30 minutes.
@pytest.mark.scenario
def test_switching_bentos_under_load_loses_no_request(bundle_root, tiny_llama, tiny_embedding_model):
    root, bundle = bundle_root
    figures = record_figures("redeploy_under_load_ci", redeploy_under_load(root, tiny_llama, tiny_embedding_model, switches=2, bundle=bundle))
    assert figures["requests_failed"] == 0, figures["failure_examples"]
    assert [d["serving_after"] for d in figures["deploys"]] == [d["to"] for d in figures["deploys"]], figures["deploys"]
    assert len(figures["answers_per_version"]) == 2
