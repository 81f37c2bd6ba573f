"""One evaluation as the pipeline runs it: the lineup (the base model, the champion and the
challenger on the same questions), the judge, the promotion gate against the champion (or
the base model when there is none), and the report folder in the registry.

`Lineup.prepare` checks everything cheap before a model loads, so a missing adapter, an
eval split that cannot be scored or an unknown prompt fails in seconds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from driftloop.evaluation.cache import AnswerCache
from driftloop.evaluation.gate import GateRules, decide, gate_view
from driftloop.engines import load_generator
from driftloop.evaluation.generate import Answerer
from driftloop.evaluation.agreement import cached_agreement, load_labelled, sample_rows
from driftloop.evaluation.judge import JudgeError, JudgeSettings, build_judge, judge_method
from driftloop.evaluation.metrics import REFUSAL, EvalItem, eval_items
from driftloop.evaluation.report import is_partial, judge_note, write_report
from driftloop.evaluation.run import evaluate_models
from driftloop.models.generator import BaseModel
from driftloop.prompts import PromptTemplate, load_prompt
from driftloop.registry import AdapterRegistry, AdapterVersion
from driftloop.retrieval.index import VectorIndex
from driftloop.retrieval.store import RetrievalStore

LOG = logging.getLogger(__name__)
# Twice the power analysis' requirement (docs/gate-power.md), rounded to the batch: a
# margin for an SD measured on 40 questions; with the answer cache a report generates
# only the challenger's, 32 x 9-16 s on 2 cores.
DEFAULT_MAX_QUESTIONS = 32


@dataclass(frozen=True)
class EvalSettings:
    max_questions: int  # a seeded sample of the eval split; every model answers the same ones
    k: int  # retrieved contexts per question
    max_new_tokens: int
    batch_size: int
    prompt_version: str
    prompt_b_version: str  # a second template run on the challenger (A/B); empty: none
    seed: int
    rules: GateRules
    judge: JudgeSettings


@dataclass(frozen=True)
class EvalOutcome:
    challenger: str
    champion: str | None
    result: dict  # evaluate_models' result, with the versions evaluated
    gate: dict  # decide's decision, with the challenger and the reference it was judged against
    folder: Path
    markdown: str  # the report with its chart inlined
    partial: bool  # judged metrics were asked for but are missing
    judge_note: str

    @property
    def passed(self) -> bool:
        return self.gate["passed"]

    @property
    def verdict(self) -> str:
        """The gate's decision in one sentence, with the rules that decided it."""
        return {"PASSED": "passed", "FAILED": "failed: " + "; ".join(self.gate["failures"]),
                "INCONCLUSIVE": "inconclusive, not promoted: " + "; ".join(self.gate["inconclusive"])}[self.gate["verdict"]]

    @property
    def answers_reused(self) -> dict[str, int]:
        return {name: int(m.get("answers_reused", 0)) for name, m in self.result["models"].items()}


@dataclass(frozen=True)
class Lineup:
    root: Path  # the registry's: the answer cache and the reports live under it
    challenger: AdapterVersion
    champion: AdapterVersion | None
    items: list[EvalItem]
    prompt: PromptTemplate
    prompt_b: PromptTemplate | None
    index: VectorIndex
    settings: EvalSettings

    @classmethod
    def prepare(cls, registry: AdapterRegistry, challenger_version: str, qa_rows: Sequence[dict], store: RetrievalStore,
                settings: EvalSettings) -> Lineup:
        """Raises ArtifactError (an adapter or the current index is missing or corrupt),
        EvaluationError (the eval split cannot be scored) or FileNotFoundError (no such prompt)."""
        challenger = registry.get(challenger_version)
        champion = registry.champion()
        items = eval_items(qa_rows, settings.max_questions, settings.seed)
        prompt = load_prompt(settings.prompt_version)
        prompt_b = load_prompt(settings.prompt_b_version) if settings.prompt_b_version else None
        index = VectorIndex(store.current_index_folder())
        return cls(registry.root, challenger, champion, items, prompt, prompt_b, index, settings)

    @property
    def models(self) -> dict[str, Path | None]:
        """Display name to adapter folder, None for the base model; a champion that is the
        challenger itself is not answered twice."""
        models: dict[str, Path | None] = {"base": None}
        if self.champion is not None and self.champion.version != self.challenger.version:
            models["champion"] = self.champion.path
        models["challenger"] = self.challenger.path
        return models

    @property
    def reference(self) -> str:
        """The model the challenger must not regress against."""
        return "champion" if "champion" in self.models else "base"

    def evaluate(self, base: BaseModel, embedder, *, device: str, precision: str = "auto", engine: str = "transformers", run_id: str,
                 log: logging.Logger = LOG) -> EvalOutcome:
        """Answer, score, gate and write the report under `<registry>/reports`, generating
        with `engine` (the one that serves). Raises JudgeError when the judge cannot start,
        before any answer is generated."""
        settings = self.settings
        answerer = Answerer(base.path, device, precision=precision)
        if engine != "transformers":
            answerer.generate_with(load_generator(engine, base.path, device, precision=precision, slots=settings.batch_size))
        try:
            judge = build_judge(settings.judge, embedder, answerer, device, REFUSAL)
        except OSError as err:  # a judge model that cannot be read is the judge failing to start
            raise JudgeError(str(err)) from err
        agreement = None
        if judge is not None and settings.judge.labelled_set:
            rows, digest = load_labelled(settings.judge.labelled_set)
            t0 = time.perf_counter()
            # The base generator judging has a version; another judge is measured every time.
            identity = (f"{judge.name}@{base.version}/{answerer.precision}/{judge_method(settings.judge.faithfulness)}"
                        if settings.judge.kind == "local" and not settings.judge.model else None)
            agreement = cached_agreement(judge, sample_rows(rows, settings.judge.labelled_rows), f"{Path(settings.judge.labelled_set).name}@{digest}",
                                         self.root / "judge_agreement", identity)
            log.info(f"judge agreement on the labelled set in {time.perf_counter() - t0:.0f}s{' (cached)' if agreement.get('cached') else ''}")
        models, champion = self.models, self.champion
        log.info(f"evaluating {list(models)} on {len(self.items)} questions (challenger {self.challenger.version}, "
                 f"champion {champion.version if champion else 'none'}, judge {judge.name if judge else 'none'})")
        # Names by weights, so the cache reuses answers of a model that reappears in another role.
        # An engine other than transformers answers differently, so its answers are its own.
        suffix = "" if engine == "transformers" else f"@{engine}"
        identities = {"base": f"base:{base.version}{suffix}", "challenger": f"base:{base.version}+{self.challenger.version}{suffix}"}
        if champion is not None:
            identities["champion"] = f"base:{base.version}+{champion.version}{suffix}"
        result = evaluate_models(answerer, self.index, embedder, self.items, models, self.prompt, k=settings.k,
                                 max_new_tokens=settings.max_new_tokens, batch_size=settings.batch_size, prompt_b=self.prompt_b,
                                 log=log.info, judge=judge, min_agreement=settings.judge.min_agreement,
                                 control_pairs=settings.judge.control_pairs, agreement=agreement, cache=AnswerCache(self.root / "answer_cache"),
                                 identities=identities)
        reference, judgement = self.reference, result.get("judge")
        gate = decide(gate_view(result["models"]["challenger"], judgement), gate_view(result["models"][reference], judgement),
                      settings.rules, result["questions"], ("challenger", reference))
        gate.update({"challenger": self.challenger.version, "reference": reference,
                     "reference_version": champion.version if reference == "champion" else f"base:{base.version}"})
        result["versions"] = {"challenger": self.challenger.version, "champion": champion.version if champion else None,
                              "base": base.version, "index": self.index.version, "generator_precision": answerer.precision,
                              "generator_engine": engine}
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%f")
        folder = self.root / "reports" / f"{stamp}-{self.challenger.version}-{run_id[:8]}"
        markdown = write_report(folder, result, gate, f"Evaluation of {self.challenger.version}")
        return EvalOutcome(self.challenger.version, champion.version if champion else None, result, gate, folder, markdown,
                           is_partial(result), judge_note(judgement))
