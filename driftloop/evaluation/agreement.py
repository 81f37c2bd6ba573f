"""How far a judge agrees with people: its verdicts on a labelled set (question, context,
answer, verdict rows written by hand, half of them near misses) against the labels.

A judge's score is continuous (a share of supported statements, a cosine), so a verdict
needs a threshold. The threshold is chosen on other rows than the ones it is measured on:
the rows are split into three folds by (question, context), so a positive answer and its
near miss stay in one fold; each fold is judged with the threshold that fits the other two
best. The agreement is over every row, with a Wilson 95% interval, and a judge is trusted
on a metric only when the interval's lower bound reaches `min_agreement`: agreement
measured on 120 rows is a figure, on 8 it was a coin.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from driftloop.atomic import write_json
from driftloop.evaluation.judge import JUDGED, JudgeError, JudgeSample

FOLDS = 3
PACKAGED = "packaged"


class LabelledSetError(JudgeError):
    """The labelled set cannot be read; the message names the file and line. A judge
    whose agreement cannot be measured cannot start."""


@dataclass(frozen=True)
class LabelledRow:
    id: str
    metric: str
    question: str
    context: str
    answer: str
    verdict: int
    kind: str
    doc_id: str = ""

    @property
    def group(self) -> int:
        return int(hashlib.sha256(f"{self.question}\n{self.context}".encode()).hexdigest(), 16) % FOLDS


def load_labelled(path: str | Path = PACKAGED) -> tuple[list[LabelledRow], str]:
    """The rows and the set's content digest; `packaged`: the set on the default corpus
    (driftloop/evaluation/labelled/judge_set.jsonl)."""
    if str(path) == PACKAGED:
        text = resources.files("driftloop.evaluation").joinpath("labelled/judge_set.jsonl").read_text(encoding="utf-8")
        where = "the packaged judge set"
    else:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as err:
            raise LabelledSetError(f"labelled judge set {path}: {err.strerror or err}") from None
        where = str(path)
    rows, seen = [], set()
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as err:
            raise LabelledSetError(f"{where}, line {number}: not JSON ({err.msg})") from None
        missing = [f for f in ("id", "metric", "question", "context", "answer", "verdict") if f not in raw]
        if missing:
            raise LabelledSetError(f"{where}, line {number}: missing {', '.join(missing)}")
        untexted = [f for f in ("question", "context", "answer") if not isinstance(raw[f], str)]
        if untexted:
            raise LabelledSetError(f"{where}, line {number}: {', '.join(untexted)} must be text")
        if raw["metric"] not in JUDGED:
            raise LabelledSetError(f"{where}, line {number}: metric {raw['metric']!r} is not one of {', '.join(JUDGED)}")
        if raw["verdict"] not in (0, 1):
            raise LabelledSetError(f"{where}, line {number}: verdict must be 0 or 1, not {raw['verdict']!r}")
        if raw["id"] in seen:
            raise LabelledSetError(f"{where}, line {number}: id {raw['id']!r} appears twice")
        seen.add(raw["id"])
        rows.append(LabelledRow(str(raw["id"]), raw["metric"], raw["question"], raw["context"], raw["answer"], int(raw["verdict"]),
                                str(raw.get("kind", "")), str(raw.get("doc_id", ""))))
    if not rows:
        raise LabelledSetError(f"{where}: no rows")
    return rows, hashlib.sha256(text.encode()).hexdigest()[:16]


def sample_rows(rows: Sequence[LabelledRow], per_metric: int) -> list[LabelledRow]:
    """At most `per_metric` rows of each metric, half of each verdict, the same
    rows every time (0: all of them)."""
    if per_metric <= 0:
        return list(rows)
    chosen: list[LabelledRow] = []
    for metric in JUDGED:
        mine = sorted((r for r in rows if r.metric == metric), key=lambda r: hashlib.sha256(r.id.encode()).hexdigest())
        # Alternating verdicts in hash order keeps the sample balanced however small it is.
        positives, negatives = [r for r in mine if r.verdict], [r for r in mine if not r.verdict]
        interleaved = [r for pair in zip(positives, negatives) for r in pair] + positives[len(negatives):] + negatives[len(positives):]
        chosen += interleaved[:per_metric]
    return chosen


def wilson(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def best_threshold(scores: Sequence[float], verdicts: Sequence[int]) -> float:
    """The cut that classifies these rows best (score >= cut means verdict 1), halfway
    between neighbouring scores; ties go to the middle of the best run of cuts."""
    values = sorted(set(scores))
    cuts = [values[0] - 1e-9] + [(a + b) / 2 for a, b in zip(values, values[1:])] + [values[-1] + 1e-9]
    right = [sum((s >= cut) == bool(v) for s, v in zip(scores, verdicts, strict=True)) for cut in cuts]
    best = max(right)
    winners = [cut for cut, r in zip(cuts, right, strict=True) if r == best]
    return winners[len(winners) // 2]


def _score(judge, rows: Sequence[LabelledRow], metric: str) -> tuple[list[float | None], list[str]]:
    samples = [JudgeSample(r.question, r.answer, (r.context,)) for r in rows]
    scored = judge.score(samples, metrics=(metric,))
    return list(getattr(scored, metric)), list(scored.errors)


def labelled_agreement(judge, rows: Sequence[LabelledRow], set_name: str = PACKAGED) -> dict:
    """Per metric: agreement with the labels (cross-fitted thresholds, see the module),
    its interval, the rows scored and missed, and the agreement per kind of row."""
    out: dict = {"set": set_name, "rows": len(rows), "errors": []}
    for metric in JUDGED:
        mine = [r for r in rows if r.metric == metric]
        scores, errors = _score(judge, mine, metric) if mine else ([], [])
        out["errors"] += errors[:5]
        kept = [(r, s) for r, s in zip(mine, scores, strict=True) if s is not None]
        entry: dict = {"n": len(kept), "unscored": len(mine) - len(kept), "agreement": None, "interval": None}
        if len({r.verdict for r, _ in kept}) == 2:
            right, per_kind, thresholds = 0, {}, []
            for fold in range(FOLDS):
                train = [(r, s) for r, s in kept if r.group != fold]
                test = [(r, s) for r, s in kept if r.group == fold]
                if not test:
                    continue
                cut = best_threshold([s for _, s in train], [r.verdict for r, _ in train]) if len({r.verdict for r, _ in train}) == 2 else 0.5
                thresholds.append(cut)
                for r, s in test:
                    hit = (s >= cut) == bool(r.verdict)
                    right += hit
                    per_kind.setdefault(r.kind or "?", []).append(hit)
            # An unscored row is a row the judge got wrong: leaving it out would flatter it.
            n = len(mine)
            entry.update(agreement=right / n, interval=list(wilson(right, n)), thresholds=[round(t, 4) for t in thresholds],
                         by_kind={kind: round(sum(hits) / len(hits), 3) for kind, hits in sorted(per_kind.items())})
        out[metric] = entry
    return out


def cached_agreement(judge, rows: Sequence[LabelledRow], set_name: str, cache_dir: Path, identity: str | None) -> dict:
    """`labelled_agreement`, kept under `cache_dir` by the judge's `identity` (its weights
    and method) and the rows; None as identity: a judge whose weights have no version (an
    endpoint, a model folder), measured every time."""
    if identity is None:
        return labelled_agreement(judge, rows, set_name)
    key = hashlib.sha256(json.dumps([identity, set_name, [r.id for r in rows]]).encode()).hexdigest()[:24]
    path = cache_dir / f"{key}.json"
    try:
        found = json.loads(path.read_text())
        return {**found, "cached": True}
    except (OSError, json.JSONDecodeError):
        pass
    result = labelled_agreement(judge, rows, set_name)
    if not result["errors"]:
        write_json(path, result)
    return result
