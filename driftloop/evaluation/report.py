"""The evaluation report as markdown and HTML, with a metric chart per model, the gate
decision, and the worst questions with their contexts and answers; and model cards."""

from __future__ import annotations

import json
from pathlib import Path

from driftloop.evaluation.metrics import HIGHER_IS_BETTER
from driftloop.artifacts import publish_folder, staging_dir
from driftloop.plots import data_uri, figure_png, pyplot

TABLE_METRICS = ("context_precision", "context_recall", "semantic_similarity", "rouge_l", "bleu", "string_similarity",
                 "faithfulness", "answer_relevancy", "perplexity", "toxic_rate", "pii_rate", "refusal_rate", "empty_rate", "latency_p50_s", "tokens_per_answer")
CHART_METRICS = ("semantic_similarity", "rouge_l", "bleu", "string_similarity", "refusal_rate")
JUDGE_OFF = ("LLM-judged metrics (faithfulness, answer relevancy) are off (judge: none): they are absent rather than guessed, "
             "and a gate rule on them fails.")


def judge_note(judgement: dict | None) -> str:
    return JUDGE_OFF if judgement is None else judgement["text"]


def is_partial(result: dict) -> bool:
    """Judged metrics were asked for but are missing, for every model or some."""
    judgement = result.get("judge")
    if judgement is None:
        return False
    return not judgement.get("available", True) or any((m.get("judge_errors") or 0) > 0 for m in result["models"].values())


def _fmt(value) -> str:
    if value is None:
        return "missing"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)


def metric_chart_png(models: dict[str, dict]) -> bytes:
    names = list(models)
    width = 0.8 / max(1, len(names))
    fig, ax = pyplot().subplots(figsize=(8, 3.2), dpi=100)
    for n, name in enumerate(names):
        values = [models[name].get(m) or 0.0 for m in CHART_METRICS]
        ax.bar([x + n * width for x in range(len(CHART_METRICS))], values, width, label=name)
    ax.set_xticks([x + width * (len(names) - 1) / 2 for x in range(len(CHART_METRICS))], CHART_METRICS, fontsize=8)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title("answer quality per model (higher is better, except refusal rate)", fontsize=9)
    return figure_png(fig)


def _one_line(text: str) -> str:
    """Model and corpus text flattened, so it cannot break the report's markdown structure."""
    return " ".join(text.split())


def worst_questions(result: dict, model: str, n: int = 5) -> list[dict]:
    rows = [r for r in result["questions"].values() if model in r["scores"]]
    rows.sort(key=lambda r: r["scores"][model].get("semantic_similarity") or 0.0)
    return rows[:n]


def _metric_table(models: dict[str, dict]) -> list[str]:
    names = list(models)
    lines = ["| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for metric in TABLE_METRICS:
        arrow = "higher is better" if HIGHER_IS_BETTER.get(metric, True) else "lower is better"
        lines.append(f"| {metric} ({arrow}) | " + " | ".join(_fmt(models[m].get(metric)) for m in names) + " |")
    return lines


def _evidence_table(gate: dict) -> list[str]:
    if not gate.get("evidence"):
        return []
    alpha, power = gate["alpha"], gate["power"]
    lines = ["", f"### No regression against `{gate.get('reference', 'the reference')}`: paired evidence", "",
             f"Each rule compares the two models question by question: a seeded percentile bootstrap over questions gives a "
             f"{round(100 * (1 - 2 * alpha))} % interval, whose worse-side end is a one-sided {round(100 * (1 - alpha))} % bound. "
             f"Passed: that bound is within the tolerance; failed: the whole interval is beyond it; inconclusive: the interval "
             f"straddles it, or fewer than {gate['min_questions']} questions. Inconclusive does not promote. The minimum "
             f"detectable regression is (z(1-{alpha}) + z({power})) x SD of the paired differences / sqrt(n): a regression "
             f"that large is caught with probability {power} at this n.", "",
             "| metric | scale | estimate | interval | limit | min. detectable regression | n | verdict |", "|---|---|---|---|---|---|---|---|"]
    for e in gate["evidence"]:
        scale = "ratio challenger/reference (lower is better)" if e["scale"] == "ratio" else "mean difference (positive is better)"
        mde = "n/a" if e["mde"] is None else f"{100 * e['mde']:.1f} % worse" if e["scale"] == "ratio" else f"{e['mde']:.4f}"
        interval = "n/a" if e["low"] is None else f"{_fmt(e['low'])} to {_fmt(e['high'])}"
        lines.append(f"| {e['metric']} | {scale} | {_fmt(e['estimate'])} | {interval} | {_fmt(e['limit'])} | {mde} | {e['n']} | {e['verdict'].upper()} |")
    return lines


def _reuse_lines(result: dict) -> list[str]:
    reused = {name: (int(m.get("answers_reused") or 0), int((m.get("answers_reused") or 0) + (m.get("answers_generated") or 0)))
              for name, m in result["models"].items() if "answers_reused" in m}
    if not reused:
        return []
    return ["", "Answers reused from the answer cache (same model, index, prompt, question and settings): "
            + ", ".join(f"{name} {done} of {total}" for name, (done, total) in reused.items()) + "."]


def render_markdown(result: dict, gate: dict, title: str, chart_src: str, challenger: str = "challenger") -> str:
    lines = [f"# {title}", "", f"{result['n_questions']} eval questions, top-{result['k']} retrieved contexts, prompt "
             f"`{result['prompt_version']}`" + (f", A/B against `{result['prompt_b_version']}`" if result.get("prompt_b_version") else "") + ".", ""]
    if is_partial(result):
        lines += ["**PARTIAL REPORT: the judge failed, so judged metrics are missing (see the judge section); the gate counts them as missing.**", ""]
    verdict = gate.get("verdict") or ("PASSED" if gate["passed"] else "FAILED")
    lines += [f"## Promotion gate: {verdict}", ""]
    lines += [f"- {f}" for f in gate["failures"]] + [f"- {f}" for f in gate.get("inconclusive", [])] or ["- every rule met"]
    lines += ["", "| rule | metric | challenger | bound | champion | ok |", "|---|---|---|---|---|---|"]
    for c in gate["checks"]:
        ok = "yes" if c["ok"] else c.get("verdict", "no").upper()
        lines.append(f"| {c['rule']} | {c['metric']} | {_fmt(c.get('value'))} | {_fmt(c.get('bound'))} | {_fmt(c.get('champion'))} | {ok} |")
    lines += _evidence_table(gate) + _reuse_lines(result)
    lines += ["", "## Metrics", ""] + _metric_table(result["models"])
    lines += ["", f"![metrics per model]({chart_src})"]
    lines += ["", "## LLM judge", "", f"> {judge_note(result.get('judge'))}", ""]
    errors = {name: int(m["judge_errors"]) for name, m in result["models"].items() if m.get("judge_errors")}
    if errors:
        lines += ["Judge failures per model: " + ", ".join(f"{name} {count}" for name, count in errors.items()), ""]
    lines += [f"## Worst answers of `{challenger}` (lowest semantic similarity)", ""]
    for row in worst_questions(result, challenger):
        lines += [f"### {_one_line(row['question'])}", "", f"**Reference:** {_one_line(row['reference'])}", ""]
        for label, answer in row["answers"].items():
            lines.append(f"- **{label}:** {_one_line(answer) or '(empty)'}")
        lines += ["", "Retrieved contexts:", ""]
        lines += [f"{n + 1}. {_one_line(c[:400])}" for n, c in enumerate(row["contexts"])] + [""]
    return "\n".join(lines)


def render_html(markdown_text: str) -> str:
    """A self-contained page (the chart must already be a data URI in the markdown).

    Raw HTML stays off: answers and contexts are model output and corpus text.
    """
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown_text)
    style = "body{font-family:sans-serif;max-width:960px;margin:auto}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 6px;font-size:13px}"
    return f"<!doctype html><html><head><meta charset='utf-8'><title>driftloop evaluation</title><style>{style}</style></head><body>{body}</body></html>"


def model_card(version: str, lineage: dict, metrics: dict, gate: dict, judgement: dict | None = None,
               license_name: str = "Apache-2.0 (SmolLM2 base model)") -> str:
    config = lineage.get("config", {})
    lines = [f"# Model card: {version}", "",
             f"- **Base model:** {lineage.get('base_model')} (weights hash `{lineage.get('base_model_version')}`)",
             f"- **Training data:** `data/instruction_dataset` DVC md5 `{lineage.get('dataset_dvc_md5')}`",
             f"- **Code version:** `{lineage.get('code_version')}`; seed {lineage.get('seed')}",
             f"- **Training cost:** {lineage.get('train_seconds')} s, {lineage.get('tokens_seen')} tokens, {lineage.get('steps')} steps on {lineage.get('device')} ({lineage.get('precision')})",
             f"- **Loss:** final {lineage.get('final_loss')}, best {lineage.get('best_loss')}",
             f"- **License:** {license_name}", "", "## Configuration", "", "```json", json.dumps(config, indent=2, sort_keys=True), "```",
             "", "## Evaluation at promotion", ""]
    lines += ["| metric | value |", "|---|---|"] + [f"| {m} | {_fmt(metrics.get(m))} |" for m in TABLE_METRICS if m in metrics]
    lines += ["", f"Gate: {'passed' if gate.get('passed') else 'failed'}.", "", "## Known limits", "",
              "- Scores come from questions derived from the training corpus's own headings; they measure fit to this corpus, not general ability.",
              "- " + judge_note(judgement),
              "- A small base model answers briefly and often paraphrases; lexical scores (BLEU, ROUGE) understate answers that are right in other words."]
    return "\n".join(lines)


def write_report(folder: Path, result: dict, gate: dict, title: str) -> str:
    """Write report.md (chart beside it), a self-contained report.html, metrics.png and
    result.json atomically into `folder`; return the report's markdown with the chart
    inlined, for the Dagster UI."""
    chart = metric_chart_png(result["models"])
    inline = render_markdown(result, gate, title, data_uri(chart))
    staging = staging_dir(folder.parent)
    (staging / "metrics.png").write_bytes(chart)
    (staging / "report.md").write_text(render_markdown(result, gate, title, "metrics.png"), encoding="utf-8")
    (staging / "report.html").write_text(render_html(inline), encoding="utf-8")
    (staging / "result.json").write_text(json.dumps({"result": result, "gate": gate}, indent=1, sort_keys=True, default=str), encoding="utf-8")
    publish_folder(staging, folder, {"kind": "eval_report", "gate_passed": gate["passed"]})
    return inline
