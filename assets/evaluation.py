"""Evaluation stage: a report on base, champion and challenger side by side, the
promotion gate as a blocking check, and the champion alias moved only past that gate.

The gate is enforced twice. `promotion_gate` is a blocking check, so a run stops before
`evaluation/champion` when it fails. Launch paths that do not respect blocking checks
(declarative automation, dagster issue 17332) still reach `champion`, which reads the
gate decision stored with the report and refuses to promote on anything but a pass for
the same challenger.
"""

import json
from pathlib import Path

import dagster as dg
from pydantic import Field, model_validator

from assets.common import GPU_POD, OWNERS, energy_metadata, json_meta, load_dataset
from assets.keys import BASE_MODEL, CHAMPION, EVAL_REPORT, LORA_ADAPTER, QA_PAIRS, VECTOR_INDEX
from driftloop.artifacts import ArtifactError, verify
from driftloop.energy import measured
from driftloop.evaluation.gate import DEFAULT_MIN_QUESTIONS, PAIRED_METRICS, GateRules, eval_split_problem
from driftloop.evaluation.judge import JudgeError, JudgeSettings
from driftloop.evaluation.lineup import DEFAULT_MAX_QUESTIONS, EvalSettings, Lineup
from driftloop.evaluation.metrics import EvaluationError
from driftloop.models.hardware import resolve_device
from driftloop.prompts import CONTEXT_CHUNKS
from driftloop.registry import PromotionError
from assets.stage import Stage
from resources.dvc import DvcStore
from resources.lineage import Lineage
from resources.models import ModelCatalog
from resources.registry import ModelRegistry
from resources.vector_store import VectorStore

GATE = "promotion_gate"
stage = Stage()
HEADLINE = ("semantic_similarity", "rouge_l", "bleu", "perplexity", "context_recall", "faithfulness", "answer_relevancy", "refusal_rate",
            "latency_p50_s")


class EvalReportConfig(dg.Config):
    max_questions: int = Field(default=DEFAULT_MAX_QUESTIONS, ge=1, description="A seeded sample of the eval split; every model answers the same ones.")
    min_questions: int = Field(default=DEFAULT_MIN_QUESTIONS, ge=2,
                               description="Fewer paired questions than this make every no-regression rule inconclusive (not promoted).")
    k: int = Field(default=CONTEXT_CHUNKS, ge=1, le=20, description="Retrieved contexts per question.")
    max_new_tokens: int = Field(default=64, ge=1)
    batch_size: int = Field(default=8, ge=1)
    prompt_version: str = "rag.v1"
    prompt_b_version: str = Field(default="", description="A second prompt template run on the challenger (A/B); empty: none.")
    challenger_version: str = Field(default="", description="Registry version to evaluate; empty: the latest training/lora_adapter.")
    seed: int = 0
    min_semantic_similarity: float = Field(default=0.35, ge=0.0, le=1.0)
    max_toxic_rate: float = Field(default=0.02, ge=0.0, le=1.0)
    max_pii_rate: float = Field(default=0.05, ge=0.0, le=1.0)
    max_empty_rate: float = Field(default=0.2, ge=0.0, le=1.0)
    no_regression: list[str] = Field(default=["semantic_similarity", "rouge_l", "perplexity"])
    tolerance: float = Field(default=0.05, ge=0.0, le=1.0, description="Allowed absolute drop of a [0, 1] score against the reference model.")
    relative_tolerance: float = Field(default=0.10, ge=0.0, description="Allowed relative worsening of perplexity against the reference model.")
    judge: str = Field(default="local", pattern="^(local|endpoint|none)$",
                       description="Who scores faithfulness and answer relevancy: a local transformers model, an OpenAI-compatible endpoint, or none.")
    judge_model: str = Field(default="", description="local: a model directory or id (empty: the base generator); endpoint: the served model name.")
    judge_base_url: str = Field(default="", description="endpoint judge: e.g. http://127.0.0.1:3001/v1")
    judge_api_key_env: str = Field(default="DRIFTLOOP_JUDGE_API_KEY", description="Environment variable holding the endpoint's key, if it needs one.")
    judge_timeout_s: float = Field(default=60.0, gt=0)
    judge_min_agreement: float = Field(default=0.75, ge=0.0, le=1.0, description="Agreement a judge needs before the gate may use its scores: the lower bound of its 95% interval on the labelled set (on the control pairs without one).")
    judge_control_pairs: int = Field(default=8, ge=2, le=64)
    judge_labelled_set: str = Field(default="packaged", description="Hand-labelled rows the judge's agreement is measured on, every report: "
                                    "`packaged` (the default corpus's), a JSONL path of your own, or empty (this run's control pairs only).")
    judge_faithfulness: str = Field(default="kprecision", pattern="^(kprecision|yesno)$",
                                    description="The local judge's faithfulness: kprecision (the share of the answer's tokens found in its "
                                                "contexts) or yesno (the judge model's Yes/No per statement).")
    judge_labelled_rows: int = Field(default=0, ge=0, description="Rows per metric drawn from the labelled set; 0: all of them.")
    min_faithfulness: float = Field(default=0.0, ge=0.0, le=1.0, description="Floor on faithfulness; 0 leaves it out of the gate.")
    min_answer_relevancy: float = Field(default=0.0, ge=0.0, le=1.0, description="Floor on answer relevancy; 0 leaves it out of the gate.")

    @model_validator(mode="after")
    def _gate_can_conclude(self):
        if self.max_questions < self.min_questions:
            raise ValueError(f"max_questions ({self.max_questions}) is below min_questions ({self.min_questions}): "
                             f"every no-regression rule of the gate would be inconclusive")
        unpaired = sorted(set(self.no_regression) - set(PAIRED_METRICS))
        if unpaired:
            raise ValueError(f"no_regression {unpaired} cannot be compared per question; choose from {list(PAIRED_METRICS)}")
        return self

    def judge_settings(self) -> JudgeSettings:
        return JudgeSettings(kind=self.judge, model=self.judge_model, base_url=self.judge_base_url, api_key_env=self.judge_api_key_env,
                             timeout_s=self.judge_timeout_s, min_agreement=self.judge_min_agreement, control_pairs=self.judge_control_pairs,
                             labelled_set=self.judge_labelled_set, labelled_rows=self.judge_labelled_rows,
                             faithfulness=self.judge_faithfulness)

    def rules(self) -> GateRules:
        return GateRules.from_bounds(
            min_semantic_similarity=self.min_semantic_similarity, max_toxic_rate=self.max_toxic_rate, max_pii_rate=self.max_pii_rate,
            max_empty_rate=self.max_empty_rate, min_faithfulness=self.min_faithfulness, min_answer_relevancy=self.min_answer_relevancy,
            no_regression=self.no_regression, tolerance=self.tolerance, relative_tolerance=self.relative_tolerance,
            min_questions=self.min_questions, seed=self.seed)

    def settings(self) -> EvalSettings:
        return EvalSettings(max_questions=self.max_questions, k=self.k, max_new_tokens=self.max_new_tokens, batch_size=self.batch_size,
                            prompt_version=self.prompt_version, prompt_b_version=self.prompt_b_version, seed=self.seed,
                            rules=self.rules(), judge=self.judge_settings())


def _latest_metadata(context, key: dg.AssetKey) -> dict:
    event = context.instance.get_latest_materialization_event(key)
    if event is None or event.asset_materialization is None:
        return {}
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}


def launched_by(tags: dict) -> str | None:
    """Who started the run, for the audit trail; None means the registry records the OS user."""
    if "dagster/user" in tags:
        return tags["dagster/user"]
    # Automation runs also carry the name of the sensor that evaluates the conditions.
    if tags.get("dagster/from_automation_condition"):
        return "automation"
    for tag, kind in (("dagster/sensor_name", "sensor"), ("dagster/schedule_name", "schedule"), ("dagster/backfill", "backfill")):
        if tag in tags:
            return f"{kind}:{tags[tag]}"
    return None


def _data_versions(context, dvc: DvcStore, lineage: Lineage) -> dict:
    versions = {name: dvc.version(name).md5 for name in ("qa_pairs", "instruction_dataset")}
    versions["vector_index"] = _latest_metadata(context, lineage.key(VECTOR_INDEX)).get("version")
    return versions


@stage.asset(
    key=EVAL_REPORT, deps=[VECTOR_INDEX, LORA_ADAPTER, BASE_MODEL, QA_PAIRS], group_name="evaluation", kinds={"ragas", "pytorch"},
    owners=OWNERS, code_version="2", tags={"stage": "evaluation", "driftloop/gpu": "preferred"}, op_tags=GPU_POD,
    check_specs=[dg.AssetCheckSpec(GATE, asset=EVAL_REPORT, blocking=True,
                                   description="Challenger meets the floors and is shown, on paired per-question scores, not to regress beyond "
                                               "tolerance against the champion (or the base model when there is none); inconclusive fails too.")],
)
def eval_report(
    context: dg.AssetExecutionContext, config: EvalReportConfig, dvc: DvcStore, models: ModelCatalog, vector_store: VectorStore,
    model_registry: ModelRegistry, lineage: Lineage,
):
    """The RAG path (retrieve, then generate) on the eval split of data/qa_pairs for the
    base model, the champion and the challenger, scored with ragas metrics that need no
    LLM, embedding similarity, perplexity, guardrail rates and latency; a report in
    markdown and HTML; and the promotion gate."""
    registry = model_registry.registry()
    challenger_version = config.challenger_version or _latest_metadata(context, lineage.key(LORA_ADAPTER)).get("adapter_version")
    if not challenger_version:
        raise dg.Failure(description="evaluation/eval_report: no challenger; materialize training/lora_adapter or set challenger_version")
    try:
        lineup = Lineup.prepare(registry, challenger_version, load_dataset(dvc, "qa_pairs"), vector_store.store(), config.settings())
    except (ArtifactError, EvaluationError, FileNotFoundError) as err:
        raise dg.Failure(description=f"evaluation/eval_report: {err}") from err
    try:
        base = models.base_model()
        with measured() as energy:
            outcome = lineup.evaluate(base, models.embedder(), device=resolve_device(models.device),
                                      precision=models.generator_precision, engine=models.engine(base), run_id=context.run.run_id, log=context.log)
    except JudgeError as err:
        raise dg.Failure(description=f"evaluation/eval_report: the judge cannot start: {err}") from err
    (context.log.info if outcome.passed else context.log.warning)(f"promotion gate {outcome.verdict}")

    ours = outcome.result["models"]["challenger"]
    metadata = {
        "challenger": dg.MetadataValue.text(outcome.challenger),
        "champion": dg.MetadataValue.text(outcome.champion or "none"),
        "gate_passed": dg.MetadataValue.bool(outcome.passed),
        "gate_verdict": dg.MetadataValue.text(outcome.gate["verdict"]),
        "answers_reused": dg.MetadataValue.json(outcome.answers_reused),
        "report": dg.MetadataValue.md(outcome.markdown),
        "report_html": dg.MetadataValue.path(str(outcome.folder / "report.html")),
        "report_dir": dg.MetadataValue.path(str(outcome.folder)),
        "models": json_meta(outcome.result["models"]),
        "questions": dg.MetadataValue.int(outcome.result["n_questions"]),
        "partial": dg.MetadataValue.bool(outcome.partial),
        "judge": dg.MetadataValue.text(outcome.judge_note),
        **energy_metadata(energy),
    }
    for metric in HEADLINE:
        if isinstance(ours.get(metric), float):
            metadata[f"challenger_{metric}"] = dg.MetadataValue.float(round(ours[metric], 4))
    yield dg.MaterializeResult(metadata=metadata)
    yield dg.AssetCheckResult(
        check_name=GATE, passed=outcome.passed, severity=dg.AssetCheckSeverity.ERROR,
        description=outcome.verdict, metadata={"gate": json_meta(outcome.gate), "challenger": dg.MetadataValue.text(outcome.challenger)},
    )


# Promote whenever a new report lands, but only once its blocking gate passed: plain
# eager() would also fire after a failed check (dagster issue 17332).
PROMOTE_WHEN_GATE_PASSED = dg.AutomationCondition.eager() & dg.AutomationCondition.all_deps_blocking_checks_passed()


@stage.asset(key=CHAMPION, deps=[EVAL_REPORT], group_name="evaluation", kinds={"registry"}, owners=OWNERS, code_version="1",
          tags={"stage": "evaluation"}, automation_condition=PROMOTE_WHEN_GATE_PASSED)
def champion(context: dg.AssetExecutionContext, dvc: DvcStore, model_registry: ModelRegistry, lineage: Lineage) -> dg.MaterializeResult:
    """The champion alias in the model registry, moved to the challenger only when the
    latest evaluation report's gate passed for it; a model card is written on promotion."""
    from driftloop.evaluation.report import model_card

    report = _latest_metadata(context, lineage.key(EVAL_REPORT))
    if not report.get("report_dir"):
        raise dg.Failure(description="evaluation/champion: no evaluation report; materialize evaluation/eval_report first")
    try:
        verify(Path(report["report_dir"]))
    except ArtifactError as err:
        raise dg.Failure(description=f"evaluation/champion: the evaluation report cannot be trusted: {err}") from err
    stored = json.loads((Path(report["report_dir"]) / "result.json").read_text())
    gate, result = stored["gate"], stored["result"]
    registry = model_registry.registry()
    current = registry.champion()
    if not gate.get("passed"):
        outcome = (f"was inconclusive at its promotion gate ({'; '.join(gate['inconclusive'])})" if gate.get("verdict") == "INCONCLUSIVE"
                   else f"failed its promotion gate ({'; '.join(gate.get('failures', []))})")
        raise dg.Failure(
            description=f"evaluation/champion: {gate.get('challenger')} {outcome}; the champion stays {current.version if current else 'unset'}",
            metadata={"gate": json_meta(gate)},
        )
    try:
        event = registry.promote(gate["challenger"], result["models"]["challenger"], _data_versions(context, dvc, lineage), by=launched_by(context.run.tags),
                                 run_id=context.run.run_id, gate=gate)
    except (PromotionError, ArtifactError) as err:
        raise dg.Failure(description=f"evaluation/champion: {err}") from err
    adapter = registry.get(gate["challenger"])
    card = model_card(adapter.version, adapter.lineage, result["models"]["challenger"], gate, result.get("judge"))
    cards = registry.root / "cards"
    cards.mkdir(parents=True, exist_ok=True)
    (cards / f"{adapter.version}.md").write_text(card, encoding="utf-8")
    context.log.info(f"champion: {adapter.version} ({event['action']}; was {current.version if current else 'unset'})")
    return dg.MaterializeResult(
        data_version=dg.DataVersion(adapter.version),
        metadata={"champion": dg.MetadataValue.text(adapter.version), "previous": dg.MetadataValue.text(current.version if current else "none"),
                  "action": dg.MetadataValue.text(event["action"]), "model_card": dg.MetadataValue.md(card)},
    )


class EvalSplitConfig(dg.Config):
    min_questions: int = Field(default=DEFAULT_MIN_QUESTIONS, ge=2, description="The gate's minimum (evaluation/eval_report min_questions).")


@stage.asset_check(asset=QA_PAIRS, name="eval_split_power", blocking=True,
                description="The eval split holds at least the promotion gate's minimum of questions, checked before any training starts.")
def eval_split_power(config: EvalSplitConfig, dvc: DvcStore) -> dg.AssetCheckResult:
    rows = load_dataset(dvc, "qa_pairs")
    problem = eval_split_problem(rows, config.min_questions)
    eval_rows = sum(r.get("split") == "eval" for r in rows)
    return dg.AssetCheckResult(passed=problem is None, severity=dg.AssetCheckSeverity.ERROR,
                               description=problem or f"{eval_rows} eval questions, at least the gate's minimum of {config.min_questions}",
                               metadata={"eval_questions": dg.MetadataValue.int(eval_rows), "min_questions": dg.MetadataValue.int(config.min_questions)})


def build(lineage: Lineage | None = None, config: dict[str, dict] | None = None) -> tuple[list[dg.AssetsDefinition], list[dg.AssetChecksDefinition]]:
    built = stage.build(lineage or Lineage(), config)
    return [built["eval_report"], built["champion"]], [built["eval_split_power"]]


evaluation_assets, evaluation_checks = build()
eval_report, champion = evaluation_assets
[eval_split_power] = evaluation_checks
