"""A real dagster-daemon (and webserver) on a temporary DAGSTER_HOME, SIGKILLed and
restarted (reliability/daemon.py; `make reliability` runs more kills and windows)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reliability.daemon import restart_storage, sensor_storm  # noqa: E402
from serving_helpers import record_figures  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.reliability]


def test_daemon_killed_during_sensor_evaluation_starts_one_retrain_per_drift_window(tmp_path):
    figures = record_figures("daemon_kills_ci", sensor_storm(tmp_path, windows=4, kills=3, seed=2))
    assert figures["lost_windows"] == [] and figures["windows_with_two_or_more"] == 0, figures
    assert figures["windows_with_one_run"] == figures["drifted_windows"] == 4
    assert figures["runs_for_undrifted_windows"] == []


def test_state_survives_a_restart_and_the_interrupted_run_is_retried(tmp_path):
    figures = record_figures("storage_restart_ci", restart_storage(tmp_path, run_seconds=12))
    assert figures["runs_read_back"] >= figures["runs_before"] >= 3, figures
    assert figures["cursor_after"] == figures["cursor_before"] and figures["cursor_before"].get("fired"), figures
    assert figures["materializations_read_back"]["monitoring/drift_report"] >= 1, figures
    assert figures["interrupted_status_later"] == "FAILURE" and figures["retry_status"] == "SUCCESS", figures
