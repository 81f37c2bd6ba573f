"""The evaluation report as markdown and HTML, with a metric chart per model, the gate
decision, and the worst questions with their contexts and answers; and model cards."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

from driftloop.evaluation.metrics import HIGHER_IS_BETTER

TABLE_METRICS = ("context_precision", "context_recall", "semantic_similarity", "rouge_l", "bleu", "string_similarity",
                 "perplexity", "toxic_rate", "pii_rate", "refusal_rate", "empty_rate", "latency_p50_s", "tokens_per_answer")
CHART_METRICS = ("semantic_similarity", "rouge_l", "bleu", "string_similarity", "refusal_rate")
JUDGE_NOTE = ("LLM-judged metrics (faithfulness, answer relevancy) are not part of this report: no judge model is "
              "configured, so they are absent rather than guessed. The gate does not use them.")


def _fmt(value) -> str:
    if value is None:
        return "missing"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)


def metric_chart_png(models: dict[str, dict]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(models)
    width = 0.8 / max(1, len(names))
    fig, ax = plt.subplots(figsize=(8, 3.2), dpi=100)
    for n, name in enumerate(names):
        values = [models[name].get(m) or 0.0 for m in CHART_METRICS]
        ax.bar([x + n * width for x in range(len(CHART_METRICS))], values, width, label=name)
    ax.set_xticks([x + width * (len(names) - 1) / 2 for x in range(len(CHART_METRICS))], CHART_METRICS, fontsize=8)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title("answer quality per model (higher is better, except refusal rate)", fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


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


def render_markdown(result: dict, gate: dict, title: str, challenger: str = "challenger", chart_file: str | None = None) -> str:
    lines = [f"# {title}", "", f"{result['n_questions']} eval questions, top-{result['k']} retrieved contexts, prompt "
             f"`{result['prompt_version']}`" + (f", A/B against `{result['prompt_b_version']}`" if result.get("prompt_b_version") else "") + ".", ""]
    verdict = "PASSED" if gate["passed"] else "FAILED"
    lines += [f"## Promotion gate: {verdict}", ""]
    lines += [f"- {f}" for f in gate["failures"]] or ["- every rule met"]
    lines += ["", "| rule | metric | challenger | bound | champion | ok |", "|---|---|---|---|---|---|"]
    for c in gate["checks"]:
        lines.append(f"| {c['rule']} | {c['metric']} | {_fmt(c.get('value'))} | {_fmt(c.get('bound'))} | {_fmt(c.get('champion'))} | {'yes' if c['ok'] else 'NO'} |")
    lines += ["", "## Metrics", ""] + _metric_table(result["models"])
    if chart_file:
        lines += ["", f"![metrics per model]({chart_file})"]
    lines += ["", f"> {JUDGE_NOTE}", "", f"## Worst answers of `{challenger}` (lowest semantic similarity)", ""]
    for row in worst_questions(result, challenger):
        lines += [f"### {row['question']}", "", f"**Reference:** {row['reference']}", ""]
        for label, answer in row["answers"].items():
            lines.append(f"- **{label}:** {answer or '(empty)'}")
        lines += ["", "<details><summary>retrieved contexts</summary>", ""]
        lines += [f"{n + 1}. {c[:400]}" for n, c in enumerate(row["contexts"])] + ["", "</details>", ""]
    return "\n".join(lines)


def render_html(markdown_text: str, chart_png: bytes) -> str:
    """A self-contained page: the markdown's content in <pre>-free HTML with the chart inlined."""
    body = []
    in_table = False
    for line in markdown_text.splitlines():
        if line.startswith("|"):
            cells = [html.escape(c.strip()) for c in line.strip("|").split("|")]
            if set("".join(cells)) <= set("-"):
                continue
            if not in_table:
                body.append("<table>")
                in_table = True
                body.append("<tr>" + "".join(f"<th>{c}</th>" for c in cells) + "</tr>")
                continue
            body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
            continue
        if in_table:
            body.append("</table>")
            in_table = False
        if line.startswith("!["):
            body.append(f'<img alt="metrics per model" src="data:image/png;base64,{base64.b64encode(chart_png).decode()}">')
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{html.escape(line[level:].strip())}</h{level}>")
        elif line.startswith(("<details", "</details")):
            body.append(line)
        elif line.strip():
            body.append(f"<p>{html.escape(line).replace('**', '')}</p>")
    if in_table:
        body.append("</table>")
    style = "body{font-family:sans-serif;max-width:960px;margin:auto}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 6px;font-size:13px}"
    return f"<!doctype html><html><head><meta charset='utf-8'><title>driftloop evaluation</title><style>{style}</style></head><body>{''.join(body)}</body></html>"


def model_card(version: str, lineage: dict, metrics: dict, gate: dict, license_name: str = "Apache-2.0 (SmolLM2 base model)") -> str:
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
              "- " + JUDGE_NOTE,
              "- A small base model answers briefly and often paraphrases; lexical scores (BLEU, ROUGE) understate answers that are right in other words."]
    return "\n".join(lines)


def write_report(folder: Path, markdown_text: str, chart_png: bytes, result: dict, gate: dict) -> dict[str, Path]:
    from driftloop.retrieval.artifacts import publish_folder, staging_dir

    staging = staging_dir(folder.parent)
    (staging / "metrics.png").write_bytes(chart_png)
    (staging / "report.md").write_text(markdown_text, encoding="utf-8")
    (staging / "report.html").write_text(render_html(markdown_text, chart_png), encoding="utf-8")
    (staging / "result.json").write_text(json.dumps({"result": result, "gate": gate}, indent=1, sort_keys=True, default=str), encoding="utf-8")
    publish_folder(staging, folder, {"kind": "eval_report", "gate_passed": gate["passed"]})
    return {name: folder / name for name in ("report.md", "report.html", "metrics.png", "result.json")}
