"""Judges side by side on the hand-labelled set (driftloop/evaluation/labelled): agreement
with the labels per metric, with its 95% interval and cross-fitted thresholds exactly as
every evaluation report measures it (driftloop.evaluation.agreement), and the seconds each
judge took for the whole set.

Sides:
- `local`: driftloop's default judge (driftloop.evaluation.judge.LocalJudge):
  faithfulness by K-Precision (the share of the answer's tokens found in its context),
  relevancy by the base generator (SmolLM2-135M-Instruct) writing the question back.
- `local-yesno`: the same judge with `faithfulness: yesno`, the base generator's Yes/No
  next-token probabilities per statement (the default before this set existed).
- `local:<folder>`, `local-yesno:<folder>`: those on another Hugging Face model folder.
- `embedding`: claim support by sentence embeddings (all-MiniLM-L6-v2): a statement's
  support is its best cosine against the context's sentences and an answer's faithfulness
  its least supported statement; relevancy is the cosine of question and answer. The
  cheap judge a practitioner reaches for first.

    python bench/judge.py [--sides local local-yesno embedding] [--rows 0]
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import machine  # noqa: E402

from driftloop.evaluation.judge import JUDGED, JudgeScores, statements  # noqa: E402

_SENTENCES = re.compile(r"(?<=[.!?:])\s+|\n+")


class EmbeddingJudge:
    name = "embedding:all-MiniLM-L6-v2"

    def __init__(self, embedder) -> None:
        self.embedder = embedder

    def _unit(self, texts: list[str]) -> np.ndarray:
        vectors = np.asarray(self.embedder.encode(texts), dtype=np.float32)
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-9)

    def score(self, samples, metrics=JUDGED) -> JudgeScores:
        faithfulness: list[float | None] = [None] * len(samples)
        relevancy: list[float | None] = [None] * len(samples)
        if "faithfulness" in metrics:
            for n, sample in enumerate(samples):
                claims = statements(sample.answer)
                sentences = [s.strip() for c in sample.contexts for s in _SENTENCES.split(c) if len(s.split()) >= 3]
                if claims and sentences:
                    faithfulness[n] = float((self._unit(claims) @ self._unit(sentences).T).max(axis=1).min())
        if "answer_relevancy" in metrics:
            questions, answers = self._unit([s.question for s in samples]), self._unit([s.answer or " " for s in samples])
            relevancy = [float(v) for v in (questions * answers).sum(axis=1)]
        return JudgeScores(faithfulness, relevancy)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sides", nargs="+", default=["local", "local-yesno", "embedding"])
    parser.add_argument("--rows", type=int, default=0, help="rows per metric (0: all)")
    parser.add_argument("--cache", default="/tmp/driftloop-bench-base")
    args = parser.parse_args()

    from driftloop.evaluation.agreement import labelled_agreement, load_labelled, sample_rows
    from driftloop.evaluation.generate import Answerer
    from driftloop.evaluation.judge import JudgeSettings, build_judge
    from driftloop.evaluation.metrics import REFUSAL
    from driftloop.models.embedding import load_embedder
    from driftloop.models.generator import resolve_base_model

    rows, digest = load_labelled()
    rows = sample_rows(rows, args.rows)
    embedder = load_embedder("all-MiniLM-L6-v2", "cpu", "auto")
    print(f"machine: {machine()}")
    print(f"labelled set: packaged@{digest}, {sum(r.metric == 'faithfulness' for r in rows)} faithfulness rows, "
          f"{sum(r.metric == 'answer_relevancy' for r in rows)} answer relevancy rows")
    results, answerer = {}, None
    for side in args.sides:
        if side == "embedding":
            judge = EmbeddingJudge(embedder)
        else:
            # One base generator for every local side, as a report shares it.
            answerer = answerer or Answerer(resolve_base_model("SmolLM2-135M-Instruct", Path(args.cache)).path, "cpu", precision="auto")
            model = side.split(":", 1)[1] if ":" in side else ""
            method = "yesno" if side.startswith("local-yesno") else "kprecision"
            judge = build_judge(JudgeSettings(kind="local", model=model, faithfulness=method), embedder, answerer, "cpu", REFUSAL)
        t0 = time.perf_counter()
        results[side] = (labelled_agreement(judge, rows), time.perf_counter() - t0, judge.name)
    print("\n| judge | faithfulness | answer relevancy | seconds (whole set) |\n|---|---|---|---|")
    for side, (agreement, seconds, name) in results.items():
        cells = []
        for metric in JUDGED:
            entry = agreement[metric]
            cells.append("not measurable" if entry["agreement"] is None else
                         f"{entry['agreement']:.3f} [{entry['interval'][0]:.3f}, {entry['interval'][1]:.3f}] n={entry['n'] + entry['unscored']}")
        print(f"| {name} | {cells[0]} | {cells[1]} | {seconds:.0f} |")
    for side, (agreement, _, _) in results.items():
        for metric in JUDGED:
            print(f"{side} {metric} by kind: {agreement[metric].get('by_kind')}; thresholds {agreement[metric].get('thresholds')}")
    # The peer: the best other judge on faithfulness, the metric the gate can use.
    others = [side for side in results if side != "local"]
    if "local" in results and others:
        peer = max(others, key=lambda side: results[side][0]["faithfulness"]["agreement"] or 0.0)
        ours, theirs = results["local"][0]["faithfulness"]["agreement"] or 0.0, results[peer][0]["faithfulness"]["agreement"] or 0.0
        print(f"peer: {peer}")
        print(f"RESULT faithfulness_agreement={ours:.3f} baseline={theirs:.3f} ratio={ours / theirs if theirs else 0:.2f}")

if __name__ == "__main__":
    main()
