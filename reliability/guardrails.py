"""The guardrails' figures on the held-out sets, beside what a user would run instead.

    python reliability/guardrails.py [--json out.json]

Prompt injection: tests/data/injection_heldout.jsonl (user turns and documentation
passages, injected and benign, lookalikes among the benign), plus ordinary corpus
questions no one tuned on (bench/corpora's questions on five Debian corpora and the
questions derived from tests/data/corpora), through driftloop's screen (patterns and
classifier) and through the patterns alone. PII: tests/data/pii_heldout*.jsonl through
driftloop's redactor and through Presidio's analyzer with its defaults (the same spaCy
model). Prints the machine, each side's figures and the time per text.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from driftloop.offline import enforce_offline  # noqa: E402

enforce_offline()


def machine() -> str:
    flags = set()
    model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    import os

    present = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile") if f in flags]
    return f"{model}, {os.cpu_count()} CPUs, flags: {' '.join(present) or 'none of avx2/avx512/amx'}"


def corpus_questions() -> list[str]:
    from driftloop.data.corpus import read_directory
    from driftloop.data.qa import derive_qa_pairs

    questions = [json.loads(line)["question"] for path in sorted((ROOT / "bench" / "corpora").glob("*.questions.jsonl"))
                 for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    docs = [d for shape in sorted((ROOT / "tests" / "data" / "corpora").iterdir()) if shape.is_dir()
            for d in read_directory(shape, 5_000_000).documents]
    return questions + [p.question for p in derive_qa_pairs(docs, eval_fraction=0.2)]


def timed(fn, items):
    started = time.perf_counter()
    out = fn(items)
    return out, round((time.perf_counter() - started) / max(len(items), 1) * 1000, 2)


def injection(report: dict) -> None:
    from driftloop.evaluation.guardrails import injection_figures, read_rows
    from driftloop.injection import InjectionScreen, looks_like_injected_document, looks_like_injection

    rows = read_rows(ROOT / "tests" / "data" / "injection_heldout.jsonl")
    screen = InjectionScreen()
    screen.turn("warm up")
    ordinary = corpus_questions()
    sides = {"driftloop (patterns + classifier)": (lambda t: screen.turn(t).flagged, lambda ts: [v.flagged for v in screen.documents(ts)]),
             "patterns alone (before this classifier)": (looks_like_injection, lambda ts: [looks_like_injected_document(t) for t in ts])}
    for name, (turn, documents) in sides.items():
        started = time.perf_counter()
        figures = injection_figures(rows, turn, documents)
        figures["ms_per_row"] = round((time.perf_counter() - started) / len(rows) * 1000, 2)
        refused = [q for q in ordinary if turn(q)]
        figures["ordinary_corpus_questions"] = {"questions": len(ordinary), "refused": len(refused),
                                                "rate": round(len(refused) / len(ordinary), 4), "examples": refused[:5]}
        report["injection"][name] = figures
        q, d, o = figures["question"], figures["document"], figures["ordinary_corpus_questions"]
        print(f"injection | {name}: user turns recall {q['recall']} ({q['injections']}), benign refused {q['false_positive_rate']} ({q['benign']}); "
              f"passages recall {d['recall']} ({d['injections']}), benign flagged {d['false_positive_rate']} ({d['benign']}); "
              f"ordinary corpus questions refused {o['rate']} ({o['questions']}); {figures['ms_per_row']} ms/row")
    report["injection"]["classifier"] = {"version": screen.version, **screen.meta}


def pii(report: dict) -> None:
    from presidio_analyzer import AnalyzerEngine

    from driftloop.evaluation.guardrails import pii_figures, read_rows
    from driftloop.redaction import ENTITIES, Redactor

    ours = Redactor()
    # Presidio as its docs set it up, on the same spaCy model, all its default recognizers.
    presidio = AnalyzerEngine(nlp_engine=ours.analyzer.nlp_engine, supported_languages=["en"])

    def presidio_spans(text: str):
        return [(r.start, r.end, ENTITIES.get(r.entity_type, r.entity_type)) for r in presidio.analyze(text, language="en")
                if r.entity_type in ENTITIES]

    for path in sorted((ROOT / "tests" / "data").glob("pii_heldout*.jsonl")):
        rows = read_rows(path)
        for name, spans in (("driftloop.redaction", ours.spans), ("Presidio defaults", presidio_spans)):
            started = time.perf_counter()
            figures = pii_figures(rows, spans)
            figures["ms_per_text"] = round((time.perf_counter() - started) / len(rows) * 1000, 2)
            report["pii"][f"{path.name} | {name}"] = figures
            print(f"pii | {path.name} | {name}: recall {figures['recall']} {figures['by_kind']}, precision {figures['precision']}, "
                  f"clean rows changed {figures['clean_changed']} ({figures['clean_rows']}); {figures['ms_per_text']} ms/text")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="write every figure (and each miss) here")
    args = parser.parse_args()
    report = {"machine": machine(), "injection": {}, "pii": {}}
    print(f"machine: {report['machine']}")
    injection(report)
    pii(report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
