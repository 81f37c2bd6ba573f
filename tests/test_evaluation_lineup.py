"""The evaluation stage without Dagster (driftloop.evaluation.lineup) on the tiny Llama: a
first challenger is judged against the base model; once it is champion, the next one is
judged against it with the run's rules, and only its answers are generated; what cannot be
evaluated fails before a model loads, and a judge that cannot start before any answer."""

import dataclasses
import json

import pytest

from test_answer_cache import make_index, random_adapter
from test_evaluation_assets import changed_copy
from driftloop.artifacts import ArtifactError, verify
from driftloop.evaluation.gate import GateRules
from driftloop.evaluation.judge import JudgeError, JudgeSettings
from driftloop.evaluation.lineup import EvalSettings, Lineup
from driftloop.evaluation.metrics import EvaluationError
from driftloop.models.embedding import load_embedder
from driftloop.models.generator import BaseModel
from driftloop.registry import AdapterRegistry
from driftloop.retrieval.store import RetrievalStore

N = 8
ROWS = [{"qa_id": f"q{i}", "split": "eval" if i < N else "train", "question": f"What is code word {i}?",
         "answer": f"The code word is number {i}.", "context": f"the harbor code word is number {i}", "doc_id": f"d{i}"} for i in range(N + 2)]
# Random tiny models answer nonsense: no floors.
SETTINGS = EvalSettings(max_questions=N, k=2, max_new_tokens=4, batch_size=8, prompt_version="rag.v1", prompt_b_version="", seed=0,
                        rules=GateRules(floors={}, no_regression=("perplexity",), relative_tolerance=0.02, min_questions=4),
                        judge=JudgeSettings(kind="none"))


@pytest.fixture
def stage(tiny_llama, tiny_embedding_model, tmp_path):
    embedder = load_embedder(tiny_embedding_model, "cpu", "fp32")
    store = RetrievalStore(tmp_path / "retrieval")
    store.promote_index(make_index(tmp_path / "retrieval", embedder).folder, {})
    registry = AdapterRegistry(tmp_path / "registry")
    first = registry.publish(random_adapter(tiny_llama, tmp_path / "first"), {"note": "random LoRA"})
    return {"embedder": embedder, "store": store, "registry": registry, "first": first,
            "base": BaseModel("tiny", tiny_llama, "tinyhash", "test")}


def evaluate(stage, version, settings=SETTINGS, run_id="run00001"):
    lineup = Lineup.prepare(stage["registry"], version, ROWS, stage["store"], settings)
    return lineup.evaluate(stage["base"], stage["embedder"], device="cpu", precision="fp32", run_id=run_id)


def test_the_challenger_is_gated_against_the_champion_and_the_report_is_sealed(stage, tmp_path):
    registry, first = stage["registry"], stage["first"]
    alone = evaluate(stage, first.version)
    assert set(alone.result["models"]) == {"base", "challenger"} and alone.gate["reference"] == "base"
    assert alone.gate["reference_version"] == "base:tinyhash" and alone.champion is None

    registry.promote(first.version, alone.result["models"]["challenger"], {})
    second = registry.publish(changed_copy(first.path, tmp_path / "second", broken=False), {"note": "nudged copy"}).version
    # A floor no answer of a random model meets: the run's rules decide the gate.
    strict = dataclasses.replace(SETTINGS, rules=dataclasses.replace(SETTINGS.rules, floors={"semantic_similarity": 0.99}))
    outcome = evaluate(stage, second, strict, run_id="run00002")
    assert (outcome.challenger, outcome.champion, outcome.gate["reference"]) == (second, first.version, "champion")
    assert not outcome.passed and outcome.verdict.startswith("failed: semantic_similarity") and "below floor 0.99" in outcome.verdict
    # No regression is shown on the questions paired with the champion's own answers...
    (evidence,) = outcome.gate["evidence"]
    assert (evidence["metric"], evidence["n"]) == ("perplexity", N)
    (rule,) = [c for c in outcome.gate["checks"] if c["rule"] == "no_regression"]
    assert rule["champion"] == outcome.result["models"]["champion"]["perplexity"]
    # ...which, like the base model's, come from the first report's cache.
    assert outcome.answers_reused == {"base": N, "champion": N, "challenger": 0}

    assert outcome.folder.parent == registry.root / "reports" and outcome.folder.name.endswith(f"-{second}-run00002")
    assert verify(outcome.folder)["gate_passed"] is False
    stored = json.loads((outcome.folder / "result.json").read_text())
    assert stored["gate"]["verdict"] == "FAILED" and stored["result"]["versions"]["champion"] == first.version
    assert "| metric | base | champion | challenger |" in (outcome.folder / "report.md").read_text()
    assert outcome.markdown.startswith(f"# Evaluation of {second}") and "data:image/png;base64," in outcome.markdown
    assert not outcome.partial and outcome.judge_note.startswith("LLM-judged metrics")


def test_what_cannot_be_evaluated_fails_before_a_model_loads(stage, tmp_path):
    registry, first, store = stage["registry"], stage["first"], stage["store"]
    with pytest.raises(ArtifactError, match="lora-missing is not in the registry"):
        Lineup.prepare(registry, "lora-missing", ROWS, store, SETTINGS)
    with pytest.raises(EvaluationError, match="eval split is empty"):
        Lineup.prepare(registry, first.version, [r for r in ROWS if r["split"] == "train"], store, SETTINGS)
    with pytest.raises(FileNotFoundError, match="prompt template 'rag.v0' not found"):
        Lineup.prepare(registry, first.version, ROWS, store, dataclasses.replace(SETTINGS, prompt_b_version="rag.v0"))
    with pytest.raises(ArtifactError, match="no index has passed its quality check"):
        Lineup.prepare(registry, first.version, ROWS, RetrievalStore(tmp_path / "no-index"), SETTINGS)


def test_a_judge_that_cannot_start_stops_the_report_before_any_answer(stage, tmp_path):
    unreadable = dataclasses.replace(SETTINGS, judge=JudgeSettings(kind="local", model=str(tmp_path / "no-judge")))
    with pytest.raises(JudgeError, match="no-judge"):
        evaluate(stage, stage["first"].version, unreadable)
    unmeasurable = dataclasses.replace(SETTINGS, judge=JudgeSettings(kind="local", labelled_set=str(tmp_path / "absent.jsonl")))
    with pytest.raises(JudgeError, match="labelled judge set .*absent.jsonl"):
        evaluate(stage, stage["first"].version, unmeasurable)
    root = stage["registry"].root
    assert not (root / "reports").exists() and not (root / "answer_cache").exists()


def test_gate_rules_from_flat_bounds_leave_unset_judged_floors_out():
    bounds = {"min_semantic_similarity": 0.3, "max_toxic_rate": 0.02, "max_pii_rate": 0.05, "max_empty_rate": 0.2, "min_faithfulness": 0.0,
              "min_answer_relevancy": 0.6, "no_regression": ["rouge_l"], "tolerance": 0.05, "relative_tolerance": 0.1, "min_questions": 8,
              "seed": 3}
    rules = GateRules.from_bounds(**bounds)
    assert rules.floors == {"semantic_similarity": 0.3, "toxic_rate": 0.02, "pii_rate": 0.05, "empty_rate": 0.2, "answer_relevancy": 0.6}
    assert (rules.no_regression, rules.tolerance, rules.min_questions, rules.seed) == (("rouge_l",), 0.05, 8, 3)


def test_another_engine_generates_every_answer_while_transformers_still_scores_likelihoods(stage, monkeypatch):
    """Evaluation answers with the engine that serves (`generator_engine`); the recording
    stand-in replaces only the engine, the lineup and its transformers scoring are real."""
    from driftloop.evaluation import lineup as lineup_module
    from driftloop.evaluation.generate import Answer

    class RecordingEngine:
        precision = "gguf:Q4_1"

        def __init__(self):
            self.adapters, self.asked = [], []

        def add_adapter(self, name, path):
            self.adapters.append(name)

        def answer(self, name, prompts, ids, *args):
            self.asked.append((name, len(prompts)))
            return [Answer(qid, f"engine answer {name}", 0.01, 3) for qid in ids]

        def reused_tokens(self):
            return 0

    engine = RecordingEngine()
    monkeypatch.setattr(lineup_module, "load_generator", lambda kind, *args, **kwargs: engine if kind == "llamacpp" else None)
    lineup = Lineup.prepare(stage["registry"], stage["first"].version, ROWS, stage["store"], SETTINGS)
    outcome = lineup.evaluate(stage["base"], stage["embedder"], device="cpu", precision="fp32", engine="llamacpp", run_id="run00003")
    assert engine.adapters == ["challenger"]
    assert sorted(name for name, _ in engine.asked) == ["base", "challenger"] and sum(n for _, n in engine.asked) == 2 * N
    assert outcome.result["versions"]["generator_engine"] == "llamacpp"
    assert outcome.result["versions"]["generator_precision"] == "gguf:Q4_1"
    assert outcome.result["models"]["challenger"]["perplexity"] > 1
    # Answers of another engine are never taken from the transformers engine's cache, nor it from theirs.
    plain = evaluate(stage, stage["first"].version, run_id="run00004")
    assert not any(plain.answers_reused.values()), plain.answers_reused


def test_the_judge_is_measured_on_the_labelled_set_once_per_judge_version(stage, monkeypatch):
    """The local judge (the tiny base generator) is scored on rows of the packaged labelled
    set; its agreement decides trust and goes into the report, and the next report of the
    same judge reuses the measurement instead of scoring the rows again."""
    from driftloop.evaluation import agreement

    measured = []
    real = agreement.labelled_agreement
    monkeypatch.setattr(agreement, "labelled_agreement", lambda judge, rows, name: measured.append(len(rows)) or real(judge, rows, name))
    judged = dataclasses.replace(SETTINGS, judge=JudgeSettings(kind="local", labelled_rows=6, control_pairs=2))
    first = evaluate(stage, stage["first"].version, judged)
    judgement = first.result["judge"]
    assert measured == [12]
    labelled = judgement["labelled"]
    assert labelled["set"].startswith("packaged@") and {labelled[m]["n"] + labelled[m]["unscored"] for m in ("faithfulness", "answer_relevancy")} == {6}
    # Six rows cannot show 75% agreement with 95% confidence, whatever the judge does.
    assert judgement["trusted"] == {"faithfulness": False, "answer_relevancy": False}
    assert "hand-labelled set `packaged@" in first.judge_note and "6 rows)" in first.judge_note
    again = evaluate(stage, stage["first"].version, judged, run_id="run00002")
    assert measured == [12] and again.result["judge"]["labelled"]["cached"]
    assert again.result["judge"]["labelled"]["faithfulness"] == labelled["faithfulness"]
