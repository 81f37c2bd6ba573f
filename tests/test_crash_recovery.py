"""kill -9 of the step subprocess mid-training, mid-embedding and mid-deployment, on the
product's assets with tiny models, a real instance, supervisor and BentoML services
(reliability/crash.py; `make reliability` runs 20 kills at random points): the run is
retried, training resumes from its checkpoint, no published artifact is partial, and the
old version keeps answering while a deployment is killed."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reliability.crash import CrashLab, run_deploy_stage, summarize  # noqa: E402
from serving_helpers import record_figures  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.reliability]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    lab = CrashLab(tmp_path_factory.mktemp("crash"), seed=1)
    lab.setup()
    return lab


def test_killed_training_is_retried_and_resumes_from_its_checkpoint(lab):
    # Half the scripted run's steps, with checkpoints as many times over: each kill still
    # lands between two checkpoints of a run that has several.
    outcomes = lab.train_round(kills=2, max_steps=60, checkpoint_every=5)
    killed = [o for o in outcomes if o["killed"]]
    assert killed, outcomes
    for outcome in killed:
        assert outcome["run_success"] and not outcome["artifact_problems"], outcome
        assert outcome["resumed_from"] == outcome["checkpoint_at_kill"], outcome
    assert all(o["recovered"] for o in killed), outcomes
    record_figures("crash_recovery_ci_train", summarize(outcomes))


def test_killed_embedding_leaves_no_partial_version_and_its_reexecution_succeeds(lab):
    outcome = lab.embed_round()
    assert outcome["killed"], outcome
    assert not outcome["artifact_problems"] and outcome["retry_success"] and not outcome["retry_problems"], outcome
    assert outcome["recovered"]


def test_killed_deployment_keeps_the_old_version_serving(lab):
    outcomes, traffic = run_deploy_stage(lab, kills=1)
    assert traffic["requests_failed"] == 0 and traffic["requests_ok"] > 0, traffic
    assert all(o["killed"] and o["recovered"] for o in outcomes), outcomes
    record_figures("crash_recovery_ci_deploy", {"outcomes": outcomes, "traffic": traffic})
