"""How well the guardrails do on labelled sets: prompt-injection recall and false
refusals (user turns and passages apart), and PII redaction recall and precision per
kind, counted on character spans. Shared by the floor tests and reliability/guardrails.py."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def _rate(hits: int, total: int) -> float | None:
    return round(hits / total, 4) if total else None


def injection_figures(rows: Sequence[dict], turn: Callable[[str], bool], documents: Callable[[list[str]], list[bool]]) -> dict:
    """Rows as in tests/data/injection_heldout.jsonl: `where` "question" rows go through
    `turn`, "document" rows (one passage each) through `documents`."""
    questions = [r for r in rows if r["where"] == "question"]
    passages = [r for r in rows if r["where"] == "document"]
    asked = [turn(r["text"]) for r in questions]
    read = documents([r["text"] for r in passages]) if passages else []
    out, missed = {}, []
    for name, subset, flags in (("question", questions, asked), ("document", passages, read)):
        pos = [f for r, f in zip(subset, flags, strict=True) if r["label"] == 1]
        neg = [f for r, f in zip(subset, flags, strict=True) if r["label"] == 0]
        out[name] = {"injections": len(pos), "recall": _rate(sum(pos), len(pos)), "benign": len(neg),
                     "false_positive_rate": _rate(sum(neg), len(neg))}
        missed += [r["id"] for r, f in zip(subset, flags, strict=True) if f != bool(r["label"])]
    by_category = Counter()
    for r, f in zip(questions + passages, asked + read, strict=True):
        by_category[(r["category"], r["label"], bool(f))] += 1
    out["by_category"] = {f"{c} (label {y})": {"flagged": by_category[(c, y, True)], "passed": by_category[(c, y, False)]}
                          for c, y in sorted({(c, y) for c, y, _ in by_category})}
    out["wrong"] = missed
    return out


def _gold_spans(row: dict) -> list[tuple[int, int, str]]:
    spans = []
    for entity in row["entities"]:
        spans += [(m.start(), m.end(), entity["kind"]) for m in re.finditer(re.escape(entity["text"]), row["text"])]
    return spans


_FILLER = set(" \t\n-.,()/+")


def pii_figures(rows: Sequence[dict], spans: Callable[[str], list[tuple[int, int, str]]]) -> dict:
    """Recall: a labelled entity is caught when every character of it but spaces and
    separators lies inside a found span. Precision: a found span is right when it
    overlaps a labelled one. `clean_changed`: the share of PII-free rows touched at all."""
    caught, total = Counter(), Counter()
    found = right = clean = changed = 0
    misses, false = [], []
    for row in rows:
        text, predicted, gold = row["text"], spans(row["text"]), _gold_spans(row)
        for start, end, kind in gold:
            total[kind] += 1
            inside = all(any(s <= i < e for s, e, _ in predicted) for i in range(start, end) if text[i] not in _FILLER)
            caught[kind] += inside
            if not inside:
                misses.append(f"{kind}: {text[start:end]}")
        for start, end, kind in predicted:
            found += 1
            hit = any(start < e and s < end for s, e, _ in gold)
            right += hit
            if not hit:
                false.append(f"{kind}: {text[start:end]}")
        if not row["entities"]:
            clean += 1
            changed += bool(predicted)
    return {"entities": sum(total.values()), "recall": _rate(sum(caught.values()), sum(total.values())),
            "by_kind": {k: _rate(caught[k], total[k]) for k in sorted(total)}, "spans_found": found,
            "precision": _rate(right, found), "clean_rows": clean, "clean_changed": _rate(changed, clean),
            "missed": misses, "false_spans": false}
