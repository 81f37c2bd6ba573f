"""The promotion gate on paired per-question scores: a truly worse challenger is blocked,
an equal one is promoted, and too little evidence is inconclusive (which does not
promote). Scores are synthetic, drawn around a fixed reference, so each case's truth is
known; every figure the report shows (interval, n, minimum detectable regression) is
checked against the statistics it states."""

import math

import numpy as np
import pytest

from driftloop.evaluation.gate import GateRules, decide, eval_split_problem
from driftloop.evaluation.report import render_markdown
from driftloop.evaluation.stats import questions_needed, z_sum

RULES = GateRules(floors={}, no_regression=("semantic_similarity", "perplexity"), tolerance=0.05, relative_tolerance=0.10, min_questions=24)


def questions(n: int, shift: float, ppl_ratio: float, noise: float = 0.08, seed: int = 0) -> dict:
    """n questions; the challenger's similarity is the reference's plus `shift` and noise,
    its NLL per token the reference's plus log(ppl_ratio) and noise."""
    rng = np.random.default_rng(seed)
    rows = {}
    for i in range(n):
        sim, tokens = float(rng.uniform(0.3, 0.9)), int(rng.integers(20, 60))
        nll = float(rng.uniform(1.5, 3.0)) * tokens
        rows[f"q{i}"] = {"scores": {
            "champion": {"semantic_similarity": sim, "nll": nll, "nll_tokens": tokens},
            "challenger": {"semantic_similarity": sim + shift + float(rng.normal(0, noise)),
                           "nll": nll + tokens * (math.log(ppl_ratio) + float(rng.normal(0, noise))), "nll_tokens": tokens},
        }}
    return rows


def summary(rows: dict, model: str) -> dict:
    scores = [r["scores"][model] for r in rows.values()]
    return {"semantic_similarity": float(np.mean([s["semantic_similarity"] for s in scores])),
            "perplexity": math.exp(sum(s["nll"] for s in scores) / sum(s["nll_tokens"] for s in scores))}


def gate(rows: dict, rules: GateRules = RULES) -> dict:
    return decide(summary(rows, "challenger"), summary(rows, "champion"), rules, rows)


def by_metric(result: dict) -> dict:
    return {e["metric"]: e for e in result["evidence"]}


def test_a_truly_worse_challenger_is_blocked():
    rows = questions(48, shift=-0.15, ppl_ratio=1.3)
    result = gate(rows)
    assert result["verdict"] == "FAILED" and not result["passed"]
    evidence = by_metric(result)
    assert evidence["semantic_similarity"]["verdict"] == "failed" and evidence["semantic_similarity"]["high"] < -0.05
    assert evidence["perplexity"]["verdict"] == "failed" and evidence["perplexity"]["low"] > 1.10
    assert any(f.startswith("perplexity regresses against champion") for f in result["failures"]), result["failures"]


def test_an_equal_challenger_is_promoted_with_its_interval_and_power_reported():
    rows = questions(48, shift=0.0, ppl_ratio=1.0)
    result = gate(rows)
    assert result["verdict"] == "PASSED" and result["passed"], result
    sim = by_metric(result)["semantic_similarity"]
    diffs = np.array([r["scores"]["challenger"]["semantic_similarity"] - r["scores"]["champion"]["semantic_similarity"] for r in rows.values()])
    assert sim["n"] == 48 and sim["estimate"] == pytest.approx(diffs.mean())
    assert sim["low"] < sim["estimate"] < sim["high"] and sim["low"] > -0.05
    assert sim["mde"] == pytest.approx(z_sum(0.05, 0.80) * diffs.std(ddof=1) / math.sqrt(48))
    # The bootstrap is seeded: the same report gives the same bounds.
    assert gate(rows)["evidence"] == result["evidence"]
    text = render_markdown({"n_questions": 48, "k": 3, "prompt_version": "rag.v1", "questions": {},
                            "models": {"challenger": {"answers_reused": 0.0, "answers_generated": 48.0},
                                       "champion": {"answers_reused": 48.0, "answers_generated": 0.0}}},
                           {**result, "reference": "champion"}, "t", "c.png")
    assert "## Promotion gate: PASSED" in text
    assert f"| semantic_similarity | mean difference (positive is better) | {sim['estimate']:.4f} | {sim['low']:.4f} to {sim['high']:.4f} |" in text
    assert f"| {sim['mde']:.4f} | 48 | PASSED |" in text and "caught with probability 0.8 at this n" in text
    assert "challenger 0 of 48, champion 48 of 48" in text


def test_too_few_questions_or_a_straddling_interval_is_inconclusive_and_not_promoted():
    few = gate(questions(8, shift=0.0, ppl_ratio=1.0))
    assert few["verdict"] == "INCONCLUSIVE" and not few["passed"] and not few["failures"]
    assert all("fewer than the gate's minimum of 24" in line for line in few["inconclusive"]), few["inconclusive"]
    # Enough questions, but a true drop of the tolerance itself: the interval straddles it.
    straddle = gate(questions(30, shift=-0.05, ppl_ratio=1.0, noise=0.15, seed=4), GateRules(floors={}, no_regression=("semantic_similarity",),
                                                                                      tolerance=0.05, min_questions=24))
    (evidence,) = straddle["evidence"]
    assert straddle["verdict"] == "INCONCLUSIVE" and evidence["low"] < -0.05 < evidence["high"], evidence
    text = render_markdown({"n_questions": 8, "k": 3, "prompt_version": "rag.v1", "questions": {}, "models": {}}, few, "t", "c.png")
    assert "## Promotion gate: INCONCLUSIVE" in text and "fewer than the gate's minimum" in text


def test_a_floor_failure_or_a_missing_pair_fails_rather_than_being_inconclusive():
    rows = questions(8, shift=0.0, ppl_ratio=1.0)
    floor = decide(summary(rows, "challenger"), summary(rows, "champion"), GateRules(floors={"semantic_similarity": 0.99}, min_questions=24,
                                                                                     no_regression=("semantic_similarity",)), rows)
    assert floor["verdict"] == "FAILED"
    del rows["q0"]["scores"]["challenger"]["nll"]
    missing = decide(summary(questions(8, 0.0, 1.0), "challenger"), summary(rows, "champion"), RULES, rows)
    assert missing["verdict"] == "FAILED" and "perplexity missing: no paired per-question scores against champion" in missing["failures"]


def test_a_metric_the_reference_lacks_fails_its_rule_rather_than_being_skipped():
    rows = questions(48, shift=0.0, ppl_ratio=1.0)
    reference = {**summary(rows, "champion"), "perplexity": float("nan")}
    result = decide(summary(rows, "challenger"), reference, RULES, rows)
    assert result["verdict"] == "FAILED" and not result["passed"]
    assert "perplexity missing for champion: no regression cannot be shown" in result["failures"], result["failures"]
    assert {c["metric"]: c["ok"] for c in result["checks"] if c["rule"] == "no_regression"} == {"semantic_similarity": True, "perplexity": False}


def test_sample_size_and_a_split_too_small_are_stated():
    assert questions_needed(0.1, 0.05) == math.ceil((z_sum() * 0.1 / 0.05) ** 2) == 25
    rows = [{"split": "eval"}] * 5 + [{"split": "train"}] * 50
    problem = eval_split_problem(rows, 24)
    assert problem.startswith("the eval split holds 5 questions, fewer than the promotion gate's minimum of 24"), problem
    assert eval_split_problem(rows, 5) is None


def test_the_eval_config_refuses_a_gate_that_cannot_conclude():
    from assets.evaluation import EvalReportConfig

    with pytest.raises(ValueError, match=r"max_questions \(8\) is below min_questions \(16\)"):
        EvalReportConfig(max_questions=8)
    with pytest.raises(ValueError, match=r"no_regression \['latency_p50_s'\] cannot be compared per question"):
        EvalReportConfig(no_regression=["latency_p50_s"])
    assert EvalReportConfig(max_questions=8, min_questions=8).rules().min_questions == 8
