"""Drift statistics on synthetic data: no drift stays quiet, a shift is found, too little
data says so. No Dagster, no models."""

import json
import subprocess
import sys

import numpy as np
import pytest

from driftloop.monitoring import drift as drift_module
from driftloop.monitoring.drift import DriftConfig, drift_report, plot_drift
from driftloop.monitoring.stats import SignalResult, classifier_test, ks_test, mmd_test, psi, rate_test

DIM = 384
PNG = b"\x89PNG\r\n\x1a\n"


def topics(seed: int, k: int = 12) -> np.ndarray:
    return np.random.default_rng(1000 + seed).normal(size=(k, DIM)).astype(np.float32) / np.sqrt(DIM)


def queries(n: int, centres: np.ndarray, rng, noise: float = 0.045) -> np.ndarray:
    """Unit vectors around topic centres, as sentence embeddings of questions are."""
    v = centres[rng.integers(0, len(centres), n)] + noise * rng.normal(size=(n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def new_topic(n: int, centres: np.ndarray, rng, share: float) -> np.ndarray:
    """Current traffic where `share` of the questions are about a topic the reference never saw."""
    v = queries(n, centres, rng)
    fresh = queries(int(share * n), topics(99, 1), rng)
    v[: len(fresh)] = fresh
    return v


def columns(n: int, rng, scale: float = 1.0) -> dict:
    return {
        "prompt_length": rng.lognormal(3.5, 0.5, n) * scale,
        "latency_ms": rng.gamma(4.0, 120.0, n),
        "feedback_rating": rng.choice([1, 2, 3, 4, 5], n, p=[0.05, 0.05, 0.1, 0.3, 0.5]).astype(float),
    }


FAST = DriftConfig(mmd_max_samples=600, classifier_max_samples=600)


def test_mmd_statistic_is_the_textbook_unbiased_estimate():
    rng = np.random.default_rng(0)
    x, y = queries(120, topics(0), rng), queries(90, topics(0), rng)
    got = mmd_test(x, y, permutations=100, min_samples=10)
    z = np.vstack([x, y]).astype(np.float64)
    d2 = ((z[:, None] - z[None]) ** 2).sum(-1)
    k = np.exp(-d2 / np.median(d2[np.triu_indices(len(z), 1)]))
    n, m = len(x), len(y)
    want = (k[:n, :n].sum() - n) / (n * (n - 1)) + (k[n:, n:].sum() - m) / (m * (m - 1)) - 2 * k[:n, n:].mean()
    assert got.statistic == pytest.approx(want, abs=1e-6)
    assert got.extra["samples_used"] == [n, m]


@pytest.mark.parametrize("seed", range(5))
def test_no_drift_between_two_samples_of_the_same_traffic(seed):
    rng = np.random.default_rng(seed)
    centres = topics(seed)
    report = drift_report(queries(800, centres, rng), queries(700, centres, rng),
                          columns(800, rng), columns(700, rng), {"refusal_rate": (40, 800, 36, 700)}, FAST)
    mmd, clf = report.signal("query_embeddings", "mmd"), report.signal("query_embeddings", "classifier_auc")
    assert mmd.p_value > 0.01 and not mmd.drifted
    assert abs(clf.statistic - 0.5) < 0.08 and not clf.drifted
    assert report.enough_data and not report.drifted and report.reasons == []
    assert not any(s.drifted for s in report.signals)
    assert "no drift" in report.summary()


@pytest.mark.parametrize("share", [0.2, 0.4])
def test_a_new_topic_in_the_traffic_is_drift_for_both_methods(share):
    rng = np.random.default_rng(7)
    centres = topics(7)
    report = drift_report(queries(800, centres, rng), new_topic(700, centres, rng, share), config=FAST)
    mmd, clf = report.signal("query_embeddings", "mmd"), report.signal("query_embeddings", "classifier_auc")
    assert mmd.drifted and mmd.p_value < 0.01 and mmd.statistic > mmd.extra["null_p99"]
    assert clf.drifted and clf.statistic > 0.55 and clf.p_value < 0.01
    assert clf.statistic <= 0.5 + share / 2 + 0.02  # the most a share of new queries allows
    assert report.drifted and report.reasons == ["mmd", "classifier_auc"]
    assert report.summary().startswith("query drift: DRIFTED")


def test_a_small_new_topic_is_seen_by_mmd_alone_and_the_policy_decides():
    rng = np.random.default_rng(7)
    centres = topics(7)
    ref, cur = queries(800, centres, rng), new_topic(700, centres, rng, 0.1)
    both = drift_report(ref, cur, config=FAST)
    assert both.signal("query_embeddings", "mmd").drifted and not both.signal("query_embeddings", "classifier_auc").drifted
    assert not both.drifted
    either = drift_report(ref, cur, config=DriftConfig(**{**FAST.__dict__, "policy": "either"}))
    assert either.drifted and either.reasons == ["mmd"]


def test_a_direction_added_to_every_query_is_drift():
    rng = np.random.default_rng(3)
    centres = topics(3)
    ref, cur = queries(600, centres, rng), queries(600, centres, rng)
    direction = rng.normal(size=DIM).astype(np.float32)
    cur = cur + 0.15 * direction / np.linalg.norm(direction)
    cur /= np.linalg.norm(cur, axis=1, keepdims=True)
    assert mmd_test(ref, cur).drifted
    assert classifier_test(ref, cur).drifted


def test_large_samples_are_subsampled_and_results_are_deterministic():
    rng = np.random.default_rng(1)
    centres = topics(1)
    ref, cur = queries(1000, centres, rng), queries(10_000, centres, rng)
    a = mmd_test(ref, cur, max_samples=500, permutations=100, seed=5)
    b = mmd_test(ref, cur, max_samples=500, permutations=100, seed=5)
    c = mmd_test(ref, cur, max_samples=500, permutations=100, seed=6)
    assert a.extra["samples_used"] == [500, 500] and (a.n_reference, a.n_current) == (1000, 10_000)
    assert a.to_dict() == b.to_dict() and a.statistic != c.statistic
    clf = classifier_test(ref, cur, max_samples=400)
    assert clf.extra["samples_per_side"] == 400 and clf.to_dict() == classifier_test(ref, cur, max_samples=400).to_dict()
    r1 = drift_report(ref[:500], cur[:500], config=FAST).to_dict()
    assert r1 == drift_report(ref[:500], cur[:500], config=FAST).to_dict()


def test_ks_and_psi_find_a_shifted_length_distribution_and_not_an_identical_one():
    rng = np.random.default_rng(0)
    ref, same, longer = rng.lognormal(3.5, 0.5, 2000), rng.lognormal(3.5, 0.5, 1500), rng.lognormal(3.5, 0.5, 1500) * 1.4
    assert not ks_test(ref, same).drifted and ks_test(ref, same).p_value > 0.01
    assert not psi(ref, same).drifted and psi(ref, same).statistic < 0.05
    k, p = ks_test(ref, longer, name="prompt_length"), psi(ref, longer, name="prompt_length")
    assert k.drifted and k.p_value < 1e-6 and k.statistic > 0.2 and k.name == "prompt_length"
    assert p.drifted and p.statistic > 0.2 and len(p.extra["edges"]) == 9


def test_psi_on_discrete_and_constant_values():
    rng = np.random.default_rng(0)
    probs = [0.05, 0.05, 0.1, 0.3, 0.5]
    ratings = rng.choice([1, 2, 3, 4, 5], 1000, p=probs)
    assert not psi(ratings, rng.choice([1, 2, 3, 4, 5], 800, p=probs)).drifted
    worse = psi(ratings, rng.choice([1, 2, 3, 4, 5], 800, p=[0.3, 0.2, 0.2, 0.2, 0.1]))
    assert worse.drifted
    assert psi(np.full(100, 3.0), np.full(80, 3.0)).statistic == pytest.approx(0.0)
    assert psi(np.full(100, 3.0), np.full(80, 4.0)).drifted  # above a constant reference is its own bin
    assert not ks_test(np.full(100, 3.0), np.full(80, 3.0)).drifted


def test_small_samples_do_not_cross_the_psi_threshold_by_noise():
    rng = np.random.default_rng(2)
    results = [psi(rng.normal(size=40), rng.normal(size=40)) for _ in range(300)]
    assert np.mean([r.statistic > 0.2 for r in results]) > 0.5  # raw PSI is noisy at n = 40 ...
    assert np.mean([r.drifted for r in results]) <= 0.02  # ... and its p-value says so


def test_nans_are_dropped_and_counted_and_empty_is_not_enough_data():
    rng = np.random.default_rng(0)
    ref, cur = rng.normal(size=200), rng.normal(size=200)
    cur[:10] = np.nan
    cur[10] = np.inf
    res = ks_test(ref, cur)
    assert res.n_current == 189 and "11 current non-finite values dropped" in res.detail and res.drifted is False
    for empty in ([], None, np.array([np.nan] * 50)):
        for test in (ks_test, psi):
            r = test(ref, empty)
            assert r.drifted is None and r.statistic is None and r.detail.startswith("not enough data")
    r = psi(ref[:12], cur)
    assert r.drifted is None and "12 reference values < 30" in r.detail


def test_rate_test():
    same = rate_test(100, 2000, 52, 1000)
    assert same.method == "rate_z" and not same.drifted and same.p_value > 0.5
    more = rate_test(100, 2000, 100, 1000, name="refusal_rate")
    assert more.drifted and more.statistic == pytest.approx(0.05) and "5.00% -> 10.00%" in more.detail
    rare = rate_test(0, 500, 4, 400)
    assert rare.method == "rate_fisher" and not rare.drifted
    assert rate_test(0, 500, 0, 500).p_value == 1.0
    assert rate_test(1, 10, 5, 10).drifted is None
    with pytest.raises(ValueError):
        rate_test(5, 3, 1, 10)


@pytest.mark.parametrize("current", [None, np.zeros((0, DIM), np.float32), np.zeros((0,)), "tiny", "nan"])
def test_too_little_traffic_says_not_enough_data_and_never_drifts(current):
    rng = np.random.default_rng(0)
    centres = topics(0)
    ref = queries(500, centres, rng)
    if isinstance(current, str):
        current = new_topic(12, centres, rng, 1.0) if current == "tiny" else np.full((400, DIM), np.nan, np.float32)
    config = DriftConfig(trigger_signals=("prompt_length",))
    report = drift_report(ref, current, columns(500, rng), columns(500, rng, scale=3.0), config=config)
    assert not report.enough_data and report.drifted is False and report.reasons == []
    assert report.summary().startswith("not enough data")
    assert report.signal("prompt_length", "ks").drifted  # reported, but it fires nothing
    assert "not enough data" in report.to_markdown()


def test_nan_rows_in_embeddings_are_dropped_and_counted():
    rng = np.random.default_rng(0)
    ref, cur = queries(200, topics(0), rng), queries(200, topics(0), rng)
    cur[:5, 3] = np.nan
    res = mmd_test(ref, cur, permutations=50, alpha=0.05)
    assert res.n_current == 195 and "5 non-finite rows dropped" in res.detail
    with pytest.raises(ValueError, match="dimensions differ"):
        mmd_test(ref, cur[:, :100])
    with pytest.raises(ValueError, match="permutations"):
        mmd_test(ref, cur, permutations=50)  # p could never go below 1/51 > 0.01


def fixed(method: str, drifted: bool):
    def test(ref, cur, **kw):
        return SignalResult("query_embeddings", method, 0.0, 0.5, 0.01, drifted, len(ref), len(cur), "stub")
    return test


@pytest.mark.parametrize("mmd_hit, clf_hit, policy, expected", [
    (True, True, "both", True), (True, False, "both", False), (False, True, "both", False),
    (True, False, "either", True), (False, True, "either", True), (False, False, "either", False),
    (True, False, "mmd", True), (False, True, "mmd", False), (False, True, "classifier", True),
])
def test_the_report_policy(monkeypatch, mmd_hit, clf_hit, policy, expected):
    monkeypatch.setattr(drift_module, "mmd_test", fixed("mmd", mmd_hit))
    monkeypatch.setattr(drift_module, "classifier_test", fixed("classifier_auc", clf_hit))
    x = np.zeros((100, 4), np.float32)
    report = drift_report(x, x, config=DriftConfig(policy=policy))
    assert report.drifted is expected and report.enough_data


def test_univariate_and_rate_signals_trigger_only_when_configured():
    rng = np.random.default_rng(4)
    centres = topics(4)
    ref, cur = queries(600, centres, rng), queries(600, centres, rng)
    args = (ref, cur, columns(600, rng), columns(600, rng, scale=2.0), {"refusal_rate": (30, 600, 90, 600)})
    quiet = drift_report(*args, config=FAST)
    assert not quiet.drifted
    assert quiet.signal("prompt_length", "ks").drifted and quiet.signal("prompt_length", "psi").drifted
    assert quiet.signal("refusal_rate", "rate_z").drifted and not quiet.signal("latency_ms", "ks").drifted
    assert "also changed: prompt_length (ks), prompt_length (psi), refusal_rate (rate_z)" in quiet.summary()
    loud = drift_report(*args, config=DriftConfig(**{**FAST.__dict__, "trigger_signals": ("refusal_rate",)}))
    assert loud.drifted and loud.reasons == ["refusal_rate (rate_z)"]
    with pytest.raises(ValueError):
        DriftConfig(policy="any")


def test_report_serialises_and_renders():
    rng = np.random.default_rng(0)
    ref_cols, cur_cols = columns(300, rng), columns(300, rng)
    ref_cols["answer_length"] = rng.normal(size=300)  # only on one side
    report = drift_report(queries(300, topics(0), rng), queries(300, topics(0), rng), ref_cols, cur_cols,
                          {"guardrail_rate": (3, 300, 4, 300)}, FAST)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["drifted"] is False and data["enough_data"] is True and len(data["signals"]) == len(report.signals)
    assert report.signal("answer_length", "missing").drifted is None
    md = report.to_markdown()
    assert md.count("\n| ") == len(report.signals) + 1 and "| query_embeddings | mmd |" in md


def test_plot_is_a_small_png():
    rng = np.random.default_rng(0)
    centres = topics(0)
    ref, cur = queries(2000, centres, rng), new_topic(2000, centres, rng, 0.3)
    rc, cc = columns(2000, rng), columns(2000, rng, 1.5)
    rc["answer_length"], cc["answer_length"] = np.full(2000, 5.0), np.full(2000, 5.0)
    report = drift_report(ref, cur, rc, cc, {"refusal_rate": (100, 2000, 160, 2000)}, FAST)
    png = plot_drift(ref, cur, rc, cc, report)
    assert png.startswith(PNG) and 5_000 < len(png) < 100_000
    empty = plot_drift(ref, np.zeros((0, DIM)), {}, {})
    assert empty.startswith(PNG) and len(empty) < 100_000


def test_the_library_does_not_import_dagster():
    code = "import sys, driftloop.monitoring.drift; assert 'dagster' not in sys.modules, 'dagster imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
