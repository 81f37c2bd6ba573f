"""The judge's agreement with people: the packaged hand-labelled set, agreement measured
with cross-fitted thresholds and an interval, trust from the interval's lower bound, and
the measurement kept per judge version."""

import json
import re

import pytest

from driftloop.data.pydocs import python_docs
from driftloop.evaluation.agreement import (LabelledSetError, cached_agreement, labelled_agreement, load_labelled, sample_rows,
                                            wilson)
from driftloop.evaluation.judge import JUDGED, JudgeScores, calibrate, trust_statement
from judge_pairs import control_items

WORD = re.compile(r"[a-z0-9_]+")


class OracleJudge:
    """Scores each row by its label (0.9 for a 1, 0.1 for a 0); wrong on `flipped` ids and
    silent (None) on `silent` ones. Counts the rows it was asked to score."""

    name = "oracle"

    def __init__(self, rows, flipped=(), silent=()) -> None:
        self.by_text = {(r.question, r.answer, r.context): r for r in rows}
        self.flipped, self.silent, self.calls = set(flipped), set(silent), 0

    def score(self, samples, metrics=JUDGED) -> JudgeScores:
        self.calls += len(samples)
        out = []
        for s in samples:
            row = self.by_text[(s.question, s.answer, s.contexts[0])]
            right = 0.9 if row.verdict else 0.1
            out.append(None if row.id in self.silent else 1.0 - right if row.id in self.flipped else right)
        none = [None] * len(samples)
        return JudgeScores(out if "faithfulness" in metrics else none, out if "answer_relevancy" in metrics else none)


class TopicMatcher:
    """A judge that only matches words: faithfulness is the share of the answer's words
    found in the context, relevancy the share of the question's words found in the answer."""

    name = "topic-matcher"

    @staticmethod
    def _share(part: str, whole: str) -> float:
        words, pool = WORD.findall(part.lower()), set(WORD.findall(whole.lower()))
        return sum(w in pool for w in words) / max(1, len(words))

    def score(self, samples, metrics=JUDGED) -> JudgeScores:
        return JudgeScores([self._share(s.answer, " ".join(s.contexts)) for s in samples],
                           [self._share(s.question, s.answer) for s in samples])


@pytest.fixture(scope="module")
def packaged():
    return load_labelled()


def test_the_packaged_set_is_large_balanced_hard_and_quoted_from_the_default_corpus(packaged):
    rows, digest = packaged
    assert len(digest) == 16
    texts = {d.doc_id: d.text for d in python_docs()}
    for metric in JUDGED:
        mine = [r for r in rows if r.metric == metric]
        negatives = [r for r in mine if r.verdict == 0]
        assert len(mine) >= 120 and len(negatives) == len(mine) // 2, metric
        # Near misses, not another document's text: the easy kinds are a small minority.
        easy = [r for r in negatives if r.kind in ("other_context", "off_topic")]
        assert len(easy) <= len(negatives) // 4, (metric, len(easy))
    assert sum(r.kind in ("wrong_fact", "unsupported_detail") for r in rows) >= 120
    assert {r.doc_id for r in rows} <= set(texts)
    assert all(r.context in texts[r.doc_id] for r in rows)
    assert len({r.doc_id for r in rows}) >= 40


def test_agreement_uses_thresholds_fitted_on_other_rows_and_counts_unscored_rows_as_wrong(packaged):
    rows = sample_rows(packaged[0], 60)
    faith = [r for r in rows if r.metric == "faithfulness"]
    assert len(faith) == 60 and sum(r.verdict for r in faith) == 30
    flipped, silent = {faith[0].id, faith[1].id, faith[2].id}, {faith[3].id}
    result = labelled_agreement(OracleJudge(rows, flipped, silent), rows)
    entry = result["faithfulness"]
    assert entry["n"] == 59 and entry["unscored"] == 1
    assert entry["agreement"] == pytest.approx(56 / 60)
    assert entry["interval"] == pytest.approx(list(wilson(56, 60)))
    assert all(0.1 < t < 0.9 for t in entry["thresholds"])
    assert result["answer_relevancy"]["agreement"] == 1.0


def test_trust_needs_the_intervals_lower_bound_not_the_point_estimate(packaged):
    rows = packaged[0]
    for n_rows, trusted in ((12, False), (0, True)):
        chosen = sample_rows(rows, n_rows)
        faith = [r for r in chosen if r.metric == "faithfulness"]
        relevancy = [r for r in chosen if r.metric == "answer_relevancy"]
        # Roughly 90% right on both metrics, whatever the size of the set.
        wrong = {r.id for r in faith[::10]} | {r.id for r in relevancy[::10]}
        agreement = labelled_agreement(OracleJudge(chosen, wrong), chosen, "packaged")
        assert all(0.8 <= agreement[m]["agreement"] <= 0.95 for m in JUDGED)
        trust = trust_statement("oracle", calibrate(TopicMatcher(), control_items(4), 4), 0.75, agreement)
        assert trust["trusted"] == {m: trusted for m in JUDGED}, (n_rows, agreement)
        assert "hand-labelled set `packaged`" in trust["text"] and "95% CI" in trust["text"]


def test_a_topic_matcher_passes_the_control_pairs_but_not_the_hand_labelled_set(packaged):
    rows, _ = packaged
    control = calibrate(TopicMatcher(), control_items(6), 6)
    assert control["faithfulness"] == 1.0 and control["answer_relevancy"] == 1.0
    assert trust_statement("topic-matcher", control, 0.75)["verdict"] == "trusted"
    agreement = labelled_agreement(TopicMatcher(), rows, "packaged")
    trust = trust_statement("topic-matcher", control, 0.75, agreement)
    # Word overlap is a fair faithfulness signal (a wrong fact brings words the context
    # lacks), but it cannot tell an answer from a neighbouring one.
    assert trust["verdict"] != "trusted" and not trust["trusted"]["answer_relevancy"], agreement
    assert agreement["answer_relevancy"]["by_kind"]["neighbour_question"] < 0.8


def test_the_measured_agreement_is_kept_per_judge_identity(tmp_path, packaged):
    rows = sample_rows(packaged[0], 10)
    judge = OracleJudge(rows)
    first = cached_agreement(judge, rows, "packaged", tmp_path, "local@v1")
    assert judge.calls == len(rows) and "cached" not in first
    again = cached_agreement(judge, rows, "packaged", tmp_path, "local@v1")
    assert judge.calls == len(rows) and again["cached"] and again["faithfulness"] == first["faithfulness"]
    cached_agreement(judge, rows, "packaged", tmp_path, "local@v2")
    cached_agreement(judge, rows, "packaged", tmp_path, None)
    assert judge.calls == 3 * len(rows)


@pytest.mark.parametrize("line, problem", [
    ("not json", "line 2: not JSON"),
    (json.dumps({"id": "x", "metric": "faithfulness", "question": "q", "context": "c", "answer": "a", "verdict": 2}), "line 2: verdict must be 0 or 1"),
    (json.dumps({"id": "x", "metric": "fluency", "question": "q", "context": "c", "answer": "a", "verdict": 1}), "line 2: metric 'fluency'"),
    (json.dumps({"id": "a1", "metric": "faithfulness", "question": "q", "context": "c", "answer": "a", "verdict": 1}), "line 2: id 'a1' appears twice"),
    (json.dumps({"id": "x", "metric": "faithfulness", "question": "q"}), "line 2: missing context, answer, verdict"),
    (json.dumps({"id": "x", "metric": "faithfulness", "question": 3, "context": "c", "answer": ["a"], "verdict": 1}), "line 2: question, answer must be text"),
])
def test_a_bad_labelled_set_names_its_file_and_line(tmp_path, line, problem):
    path = tmp_path / "mine.jsonl"
    good = {"id": "a1", "metric": "faithfulness", "question": "q", "context": "c", "answer": "a", "verdict": 1}
    path.write_text(json.dumps(good) + "\n" + line + "\n")
    with pytest.raises(LabelledSetError, match=re.escape(f"{path}, {problem}")):
        load_labelled(path)
    with pytest.raises(LabelledSetError, match="no such file|No such file"):
        load_labelled(tmp_path / "absent.jsonl")
