"""The whole lineage on each corpus shape of bench/corpora, end to end.

    python bench/corpora/run.py [--build DIR] [--runs DIR] [shape ...]

For each shape assembled by assemble.py: a fresh home of its own (DRIFTLOOP_HOME and
DAGSTER_HOME under <runs>/<shape>/), the main job `driftloop_pipeline` run as `make
pipeline` runs it (`dagster job execute`, the real default models, the default gates)
with reduced training and evaluation settings, then:

- data: documents, QA pairs and instruction examples kept, rows quarantined (by reason);
- retrieval: hit@3 of the hand-written questions (<shape>.questions.jsonl), i.e. whether
  the page that answers a question is among the documents of the index's top 3 chunks
  (the promoted index, else the newest built one), and the retrieval_quality check;
- the promotion gate and whether a champion was promoted;
- serving: each hand-written question asked over HTTP with the official `openai` client;
  the served answer cites the page when one of the chunks it reports
  (`driftloop.chunks` of the reply) is from that page.

Results go to <runs>/results.json and <runs>/results.md; a table is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

from cli import commands
from driftloop.evaluation.gate import DEFAULT_MIN_QUESTIONS

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SHAPES = ["reference", "faq", "tutorial", "manpages", "markdown"]
DATA = [("source_documents", "documents"), ("qa_pairs", "qa_pairs"), ("instruction_dataset", "examples")]
# The FAQ has 17 pages: a fifth of them holds 13 questions, fewer than the gate's minimum
# of 16, which data/qa_pairs:eval_split_power reports before training. Its advice, a
# larger eval share, is what a user of a corpus that small would follow.
QA_OVERRIDES = {"faq": {"eval_fraction": 0.35}}


def run_config(shape: str, args: argparse.Namespace, port: int) -> dict:
    floors = {k: v for k, v in (("min_recall", args.min_recall), ("min_mrr", args.min_mrr)) if v is not None}
    return {"ops": {
        **({"data__qa_pairs": {"config": QA_OVERRIDES[shape]}} if shape in QA_OVERRIDES else {}),
        **({"retrieval__vector_index": {"config": floors}} if floors else {}),
        # Warmup must end before the last step.
        "training__lora_adapter": {"config": {"max_steps": args.train_steps, "warmup_steps": min(3, args.train_steps - 1)}},
        "evaluation__eval_report": {"config": {"max_questions": args.eval_questions, "max_new_tokens": args.max_new_tokens, "judge": "none"}},
    }, "resources": {"deployer": {"config": {"port": port}}}}


def pipeline(shape: str, source: Path, home: Path, args: argparse.Namespace, port: int) -> tuple[int, float]:
    if home.exists():
        shutil.rmtree(home)
    (home / "dagster_home").mkdir(parents=True)
    shutil.copy(ROOT / "orchestration" / "dagster.yaml", home / "dagster_home" / "dagster.yaml")
    config = home / "run.yaml"
    config.write_text(json.dumps(run_config(shape, args, port)), encoding="utf-8")
    started = time.monotonic()
    with (home / "pipeline.log").open("wb") as log:
        try:
            code = subprocess.run(commands.launch(job="driftloop_pipeline", config=config), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                  timeout=args.timeout).returncode
        except subprocess.TimeoutExpired:
            code = -1
    return code, time.monotonic() - started


def lineage(instance) -> dict:
    """What the runs in this home did, oldest first, from their event logs: materializations,
    checks, failures (a later run's word on an asset replaces an earlier one's)."""
    import dagster as dg

    runs = instance.get_runs()[::-1]
    out: dict = {"run_status": runs[-1].status.value, "runs": len(runs), "checks": {}, "failures": {}}
    for record in (r for run in runs for r in instance.all_logs(run.run_id)):
        event = record.dagster_event
        if event is None:
            continue
        if event.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION:
            mat = event.event_specific_data.materialization
            out.setdefault("materialized", {})["/".join(mat.asset_key.path)] = {k: getattr(v, "value", None) for k, v in mat.metadata.items()
                                                                                 if isinstance(getattr(v, "value", None), (int, float, str, dict))}
        elif event.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION:
            check = event.event_specific_data
            out["checks"][f"{'/'.join(check.asset_key.path)}:{check.check_name}"] = bool(check.passed)
        elif event.event_type == dg.DagsterEventType.STEP_FAILURE:
            error = event.event_specific_data.error
            while error.cause is not None:  # a retried step's own error is under "Exceeded max_retries"
                error = error.cause
            out["failures"][event.step_key] = " ".join(error.message.split())[:400]
    return out


def data_counts(materialized: dict) -> dict:
    counts = {}
    for asset, label in DATA:
        meta = materialized.get(f"data/{asset}")
        if meta is not None:
            counts[label] = meta.get("dagster/row_count")
            counts[f"{label}_quarantined"] = meta.get("quarantined")
            counts[f"{label}_reasons"] = meta.get("quarantine_reasons")
    return counts


def hit_at_3(questions: list[dict], home: Path) -> dict:
    from resources.models import ModelCatalog
    from resources.vector_store import VectorStore
    from driftloop.retrieval.index import VectorIndex

    store = VectorStore().store()
    pointer = store.index_root / "current.json"
    if pointer.is_file():
        folder, which = store.current_index_folder(), "promoted"
    else:
        built = sorted((p for p in store.index_root.glob("*") if (p / "chunks.jsonl").is_file()), key=lambda p: p.stat().st_mtime)
        if not built:
            return {"hit_at_3": None, "index": "none built"}
        folder, which = built[-1], "built, not promoted"
    index = VectorIndex(folder)
    texts = [q["question"] for q in questions]
    _, ids = index.search(ModelCatalog().embedder().encode(texts), 3, texts)
    hits = [q["doc_id"] in {index.chunks[int(i)]["doc_id"] for i in row if int(i) >= 0} for q, row in zip(questions, ids, strict=True)]
    return {"hit_at_3": sum(hits) / len(hits), "hits": hits, "index": which, "chunks": len(index.chunks)}


def ask_served(questions: list[dict], port: int, max_tokens: int) -> dict:
    from openai import OpenAI

    client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=300)
    answers = []
    for q in questions:
        reply = client.chat.completions.create(model="driftloop", messages=[{"role": "user", "content": q["question"]}], max_tokens=max_tokens)
        cited = [c["doc_id"] for c in reply.model_extra["driftloop"]["chunks"]]
        answers.append({"question": q["question"], "page": q["doc_id"], "cited": cited, "cites_page": q["doc_id"] in cited,
                        "answer": reply.choices[0].message.content, "model_version": reply.model_extra["driftloop"]["model_version"]})
    return {"cited_page_rate": sum(a["cites_page"] for a in answers) / len(answers), "answers": answers}


def one_shape(shape: str, args: argparse.Namespace) -> dict:
    source = args.build / shape
    questions = [json.loads(line) for line in (HERE / f"{shape}.questions.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
    if not source.is_dir():
        raise SystemExit(f"run: no corpus at {source}; run `make corpora-assemble` (bench/corpora/assemble.py) first")
    home = args.runs / shape
    port = args.port
    os.environ.update({"DRIFTLOOP_HOME": str(home), "DAGSTER_HOME": str(home / "dagster_home"), "DRIFTLOOP_SOURCE_DIR": str(source),
                       "DRIFTLOOP_SERVE_PORT": str(port)})
    if args.measure_only:
        code, seconds = None, json.loads((home / "result.json").read_text(encoding="utf-8"))["pipeline_s"]
    else:
        print(f"[{shape}] running driftloop_pipeline on {source} (home {home})", flush=True)
        code, seconds = pipeline(shape, source, home, args, port)
    import dagster as dg

    from resources.registry import ModelRegistry
    from driftloop.serving.supervisor.client import SupervisorClient

    with dg.DagsterInstance.get() as instance:
        events = lineage(instance)
    result = {"shape": shape, "exit_code": code, "pipeline_s": round(seconds, 1), "run_status": events["run_status"],
              "settings": {"train_steps": args.train_steps, "eval_questions": args.eval_questions, "max_new_tokens": args.max_new_tokens,
                           "min_recall": args.min_recall, "min_mrr": args.min_mrr},
              **data_counts(events.get("materialized", {})), "checks": events["checks"], "failures": events["failures"]}
    result["retrieval_gate"] = events["checks"].get("retrieval/vector_index:retrieval_quality")
    index_meta = events.get("materialized", {}).get("retrieval/vector_index", {})
    result["recall_at_5"], result["mrr_at_5"] = index_meta.get("recall_at_5"), index_meta.get("mrr_at_5")
    result["promotion_gate"] = events["checks"].get("evaluation/eval_report:promotion_gate")
    champion = ModelRegistry().registry().champion()
    result["champion"] = champion.version if champion else None
    result.update(hit_at_3(questions, home) if (home / "artifacts" / "retrieval" / "index").is_dir() else {"hit_at_3": None, "index": "none built"})
    supervisor = SupervisorClient(f"http://127.0.0.1:{port + 1}")
    result["served"] = supervisor.alive()
    if result["served"]:
        try:
            result.update(ask_served(questions, port, args.max_new_tokens))
        finally:
            supervisor.shutdown()
    (home / "result.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    return result


def cpu() -> str:
    info = dict(line.split(":", 1) for line in Path("/proc/cpuinfo").read_text().splitlines() if ":" in line)
    info = {k.strip(): v.strip() for k, v in info.items()}
    flags = set(info.get("flags", "").split())
    wanted = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    name = info.get("model name") or platform.processor()
    return f"{name} (model {info.get('model', '?')}), {os.cpu_count()} cores, {' '.join(wanted)}"


def fmt(value, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "pass" if value else "FAIL"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def table(results: list[dict]) -> str:
    head = "| shape | documents | QA pairs | quarantined (QA) | hit@3 | cited page | retrieval gate | promotion gate | served | train steps | pipeline s |"
    rows = [head, "|" + "---|" * 11]
    for r in results:
        reasons = r.get("qa_pairs_reasons") or {}
        failed = next((m for m in r.get("failures", {}).values()), "")
        recall = f" (recall@5 {r['recall_at_5']:.2f}, MRR {r['mrr_at_5']:.2f})" if r.get("recall_at_5") is not None else ""
        quarantined = f"{fmt(r.get('qa_pairs_quarantined'))} {reasons}" if reasons else fmt(r.get("qa_pairs_quarantined"))
        rows.append(f"| {r['shape']} | {fmt(r.get('documents'))} | {fmt(r.get('qa_pairs'))} | {quarantined} | {fmt(r.get('hit_at_3'))} | "
                    f"{fmt(r.get('cited_page_rate'))} | {fmt(r.get('retrieval_gate'))}{recall} | {fmt(r.get('promotion_gate'))} | "
                    f"{'yes' if r.get('served') else 'no'} | {fmt(r.get('settings', {}).get('train_steps'))} | {r['pipeline_s']:.0f} |" + (f"\n|  | failed: {failed} |" if failed else ""))
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("shapes", nargs="*", help=f"of {', '.join(SHAPES)} (default: all)")
    parser.add_argument("--build", type=Path, default=HERE / "build", help="where assemble.py put the corpora")
    parser.add_argument("--runs", type=Path, default=HERE / "build" / "runs")
    parser.add_argument("--port", type=int, default=3201)
    parser.add_argument("--train-steps", type=int, default=8, choices=range(2, 10_000), metavar="N>=2")
    parser.add_argument("--eval-questions", type=int, default=DEFAULT_MIN_QUESTIONS, help="the gate's minimum by default")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--min-recall", type=float, help="retrieval gate floor (default: the product's)")
    parser.add_argument("--min-mrr", type=float)
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per pipeline run")
    parser.add_argument("--collect", action="store_true", help="only tabulate the results already under --runs")
    parser.add_argument("--measure-only", action="store_true",
                        help="measure each shape's home as it stands (e.g. after finishing its run by hand), without running the job")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.build, args.runs = args.build.resolve(), args.runs.resolve()
    if args.one:
        one_shape(args.one, args)
        return 0
    unknown = sorted(set(args.shapes) - set(SHAPES))
    if unknown:
        parser.error(f"unknown shapes {unknown}; known: {', '.join(SHAPES)}")
    results = []
    for shape in args.shapes or SHAPES:
        result_file = args.runs / shape / "result.json"
        if args.collect:
            if result_file.is_file():
                results.append(json.loads(result_file.read_text(encoding="utf-8")))
            continue
        # One process per corpus: its own home, environment and Dagster instance.
        child = subprocess.run([sys.executable, __file__, "--one", shape, *sys.argv[1:]], cwd=ROOT)
        if child.returncode != 0 or not result_file.is_file():
            results.append({"shape": shape, "pipeline_s": 0.0, "failures": {"runner": f"exit {child.returncode}; see {args.runs / shape}"}})
            continue
        results.append(json.loads(result_file.read_text(encoding="utf-8")))
    settings = (f"training max_steps as in the table (this call: {args.train_steps}), eval max_questions={args.eval_questions}, max_new_tokens={args.max_new_tokens}, "
                f"judge none; default models; gates {'default' if args.min_recall is None and args.min_mrr is None else f'with retrieval floors recall {args.min_recall}, MRR {args.min_mrr}'}; "
                f"CPU: {cpu()}")
    report = f"{table(results)}\n\n{settings}\n"
    (args.runs / "results.json").write_text(json.dumps({"settings": settings, "results": results}, indent=2), encoding="utf-8")
    (args.runs / "results.md").write_text(report, encoding="utf-8")
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
