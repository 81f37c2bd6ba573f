"""LLM-judged metrics, faithfulness and answer relevancy as ragas defines them, with a
judge that is either a local transformers model (the default: no key, no network) or any
OpenAI-compatible endpoint.

An endpoint judge runs ragas' own metric classes, whose prompts ask for JSON. A small
local model cannot follow those. The local judge's faithfulness is, by default,
K-Precision: the share of the answer's tokens that its contexts contain. On the
hand-labelled set it agrees with people on 81% of the rows, where SmolLM2-135M's Yes/No
verdict per statement (`faithfulness: yesno`, ragas' definition asked one statement at a
time, read from the next-token probabilities of "Yes" against "No") agrees on 50%.
Answer relevancy is the cosine between the question and the question the judge model
writes back from the answer, zero for a noncommittal answer. Nothing is parsed from
free text.

Every judge is calibrated in the same run on control pairs whose right verdict is known
(an answer against its own source versus another question's source; an answer to its own
question versus someone else's answer). The agreement on those pairs is the report's trust
statement, and a judge below `min_agreement` is not trusted: its scores are shown but the
gate sees them as missing.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import os
import random
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

JUDGED = ("faithfulness", "answer_relevancy")
_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")
FAITHFULNESS_SYSTEM = "You check facts. Reply with Yes or No only."
FAITHFULNESS_USER = ("Context:\n{context}\n\nStatement: {statement}\n\n"
                     "Does the context support the statement? Reply Yes or No.")
QUESTION_USER = "Here is an answer:\n{answer}\n\nWrite the one question this answer responds to. Reply with the question only."


FAITHFULNESS_METHODS = ("kprecision", "yesno")
_PUNCTUATION = str.maketrans("", "", string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def judge_method(faithfulness: str = "kprecision") -> str:
    """A digest of how the local judge asks, so a measured agreement is not reused for another method."""
    return hashlib.sha256("\n".join((faithfulness, FAITHFULNESS_SYSTEM, FAITHFULNESS_USER, QUESTION_USER)).encode()).hexdigest()[:12]


def _squad_tokens(text: str) -> list[str]:
    """SQuAD's answer normalisation: lower case, no punctuation, no articles."""
    return _ARTICLES.sub(" ", text.lower().translate(_PUNCTUATION)).split()


def k_precision(answer: str, contexts: Sequence[str]) -> float | None:
    """The share of the answer's tokens found in its contexts (K-Precision, Adlakha et al.
    2023, who found it the automatic faithfulness metric closest to people's verdicts).
    None for an answer with no token to check."""
    tokens = _squad_tokens(answer)
    if not tokens:
        return None
    known = set(_squad_tokens(" ".join(contexts)))
    return sum(t in known for t in tokens) / len(tokens)


class JudgeError(RuntimeError):
    """The judge cannot score at all (unreachable, misconfigured)."""


@dataclass(frozen=True)
class JudgeSample:
    question: str
    answer: str
    contexts: tuple[str, ...]


@dataclass
class JudgeScores:
    faithfulness: list[float | None]
    answer_relevancy: list[float | None]
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, list[float | None]]:
        return {"faithfulness": self.faithfulness, "answer_relevancy": self.answer_relevancy}


def statements(answer: str, limit: int = 8) -> list[str]:
    """The answer's sentences of at least three words, at most `limit` of them."""
    parts = [" ".join(p.split()) for p in _SENTENCE.split(answer or "")]
    return [p for p in parts if len(p.split()) >= 3][:limit]


def _finite(value) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    denominator = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b) / denominator if denominator else 0.0


class LocalJudge:
    """A causal LM judging by next-token probabilities; by default the base generator
    itself, shared with the answerer (its adapters disabled while judging)."""

    def __init__(self, model, tokenizer, embedder, device: str = "cpu", name: str = "local", disable=None,
                 refusal: re.Pattern | None = None, batch_size: int = 8, max_context_chars: int = 1500,
                 faithfulness: str = "kprecision") -> None:
        if faithfulness not in FAITHFULNESS_METHODS:
            raise JudgeError(f"judge faithfulness method must be one of {', '.join(FAITHFULNESS_METHODS)}, not {faithfulness!r}")
        self.model, self.tokenizer, self.embedder, self.device = model, tokenizer, embedder, device
        self.faithfulness_method = faithfulness
        name = name if faithfulness == "yesno" else f"{name} (faithfulness: K-Precision)"
        self.name, self.batch_size, self.max_context_chars = name, batch_size, max_context_chars
        self._disable = disable
        self._refusal = refusal
        yes = tokenizer.encode("Yes", add_special_tokens=False)
        no = tokenizer.encode("No", add_special_tokens=False)
        if not yes or not no:
            raise JudgeError(f"judge {name}: its tokenizer cannot encode Yes/No")
        self.yes, self.no = yes[0], no[0]

    @classmethod
    def load(cls, path: str, embedder, device: str = "cpu", refusal: re.Pattern | None = None, faithfulness: str = "kprecision") -> LocalJudge:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path)
        tokenizer.padding_side = "left"
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
        return cls(model, tokenizer, embedder, device, name=f"local:{path}", refusal=refusal, faithfulness=faithfulness)

    def _chat(self, system: str | None, user: str) -> str:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def _scope(self):
        import contextlib

        return self._disable() if self._disable else contextlib.nullcontext()

    def support(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """P(Yes) over {Yes, No} for each (context, statement)."""
        import torch

        prompts = [self._chat(FAITHFULNESS_SYSTEM, FAITHFULNESS_USER.format(context=c[: self.max_context_chars], statement=s)) for c, s in pairs]
        out: list[float] = []
        with self._scope(), torch.inference_mode():
            for start in range(0, len(prompts), self.batch_size):
                enc = self.tokenizer(prompts[start : start + self.batch_size], return_tensors="pt", padding=True,
                                     add_special_tokens=False).to(self.device)
                logits = self.model(**enc).logits[:, -1, [self.yes, self.no]].float()
                out += torch.softmax(logits, dim=-1)[:, 0].tolist()
        return out

    def write_questions(self, answers: Sequence[str], max_new_tokens: int = 32) -> list[str]:
        import torch

        prompts = [self._chat(None, QUESTION_USER.format(answer=a[:1000])) for a in answers]
        out: list[str] = []
        with self._scope(), torch.inference_mode():
            for start in range(0, len(prompts), self.batch_size):
                enc = self.tokenizer(prompts[start : start + self.batch_size], return_tensors="pt", padding=True,
                                     add_special_tokens=False).to(self.device)
                generated = self.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=self.tokenizer.pad_token_id)
                for row in generated[:, enc["input_ids"].shape[1] :]:
                    text = self.tokenizer.decode(row, skip_special_tokens=True).strip()
                    out.append(text.splitlines()[0].strip() if text else "")
        return out

    def score(self, samples: Sequence[JudgeSample], metrics: Sequence[str] = JUDGED) -> JudgeScores:
        faithfulness = self._faithfulness(samples) if "faithfulness" in metrics else [None] * len(samples)
        relevancy = self._relevancy(samples) if "answer_relevancy" in metrics else [None] * len(samples)
        return JudgeScores(faithfulness, relevancy)

    def _faithfulness(self, samples: Sequence[JudgeSample]) -> list[float | None]:
        if self.faithfulness_method == "kprecision":
            return [k_precision(s.answer, s.contexts) for s in samples]
        pairs, owners = [], []
        for n, sample in enumerate(samples):
            context = "\n\n".join(sample.contexts)
            for statement in statements(sample.answer):
                pairs.append((context, statement))
                owners.append(n)
        verdicts: list[list[float]] = [[] for _ in samples]
        for owner, p in zip(owners, self.support(pairs) if pairs else [], strict=True):
            verdicts[owner].append(p)
        # ragas' definition: supported statements over all statements; an answer with no
        # statement to check has no faithfulness, it is not perfectly faithful.
        return [sum(p >= 0.5 for p in v) / len(v) if v else None for v in verdicts]

    def _relevancy(self, samples: Sequence[JudgeSample]) -> list[float | None]:
        relevancy: list[float | None] = [None] * len(samples)
        answered = [n for n, s in enumerate(samples) if s.answer.strip()]
        if answered:
            questions = self.write_questions([samples[n].answer for n in answered])
            originals = self.embedder.encode([samples[n].question for n in answered])
            written = self.embedder.encode([q or " " for q in questions])
            for row, n in enumerate(answered):
                noncommittal = bool(self._refusal and self._refusal.search(samples[n].answer))
                relevancy[n] = 0.0 if noncommittal else _cosine(written[row], originals[row]) if questions[row] else None
        return relevancy


class EndpointJudge:
    """ragas' own Faithfulness and AnswerRelevancy metrics through an OpenAI-compatible
    chat endpoint; the embeddings stay local."""

    def __init__(self, base_url: str, model: str, embedder, api_key: str = "", timeout_s: float = 60.0,
                 strictness: int = 3, concurrency: int = 4) -> None:
        if not base_url or not model:
            raise JudgeError("an endpoint judge needs judge_base_url and judge_model")
        self.base_url, self.model_name, self.embedder = base_url, model, embedder
        self.name = f"endpoint:{model}@{base_url}"
        self.api_key, self.timeout_s, self.strictness, self.concurrency = api_key, timeout_s, strictness, concurrency

    def _metrics(self):
        from openai import AsyncOpenAI
        from ragas.embeddings.base import BaseRagasEmbedding
        from ragas.llms.base import InstructorBaseRagasLLM, llm_factory
        from ragas.metrics.collections import AnswerRelevancy, Faithfulness

        embedder = self.embedder

        class LocalEmbeddings(BaseRagasEmbedding):
            def embed_text(self, text: str, **kwargs) -> list[float]:
                return embedder.encode([text])[0].tolist()

            async def aembed_text(self, text: str, **kwargs) -> list[float]:
                return self.embed_text(text)

        class NoEmptyFields(InstructorBaseRagasLLM):
            """ragas scores a response it got no question or statement for as 0.0; an
            empty reply from the judge is an error here, so the score stays missing."""

            def __init__(self, inner) -> None:
                self.inner = inner

            @staticmethod
            def _check(result):
                for name in ("question", "statements"):
                    value = getattr(result, name, "x")
                    if not (value.strip() if isinstance(value, str) else value):
                        raise JudgeError(f"the judge returned an empty {name!r}")
                return result

            def generate(self, prompt, response_model):
                return self._check(self.inner.generate(prompt, response_model))

            async def agenerate(self, prompt, response_model):
                return self._check(await self.inner.agenerate(prompt, response_model))

        # The key may be absent (local servers need none), but the client insists on one.
        client = AsyncOpenAI(base_url=self.base_url, api_key=self.api_key or "unused", timeout=self.timeout_s, max_retries=1)
        llm = NoEmptyFields(llm_factory(self.model_name, client=client, max_tokens=512))
        return Faithfulness(llm=llm), AnswerRelevancy(llm=llm, embeddings=LocalEmbeddings(), strictness=self.strictness), client

    def score(self, samples: Sequence[JudgeSample], metrics: Sequence[str] = JUDGED) -> JudgeScores:
        faithfulness_metric, relevancy_metric, client = self._metrics()
        errors: list[str] = []

        async def one(metric, **kwargs) -> float | None:
            try:
                return _finite((await metric.ascore(**kwargs)).value)
            except Exception as err:  # noqa: BLE001 - every failure is recorded and the score is missing, never guessed
                errors.append(f"{type(err).__name__}: {str(err)[:300]}")
                return None

        async def run() -> tuple[list, list]:
            gate = asyncio.Semaphore(self.concurrency)

            async def limited(metric, **kwargs):
                async with gate:
                    return await one(metric, **kwargs)

            faith = [limited(faithfulness_metric, user_input=s.question, response=s.answer, retrieved_contexts=list(s.contexts))
                     if s.answer.strip() and s.contexts and "faithfulness" in metrics else asyncio.sleep(0, None) for s in samples]
            rel = [limited(relevancy_metric, user_input=s.question, response=s.answer)
                   if s.answer.strip() and "answer_relevancy" in metrics else asyncio.sleep(0, None) for s in samples]
            try:
                return list(await asyncio.gather(*faith)), list(await asyncio.gather(*rel))
            finally:
                await client.close()

        faithfulness, relevancy = asyncio.run(run())
        return JudgeScores(faithfulness, relevancy, errors)


@dataclass(frozen=True)
class JudgeSettings:
    kind: str = "local"  # local | endpoint | none
    model: str = ""  # local: a directory or model id, empty = the base generator; endpoint: the served model name
    base_url: str = ""
    api_key_env: str = "DRIFTLOOP_JUDGE_API_KEY"
    timeout_s: float = 60.0
    min_agreement: float = 0.75
    control_pairs: int = 8
    strictness: int = 3
    labelled_set: str = "packaged"  # a JSONL of hand-labelled rows (driftloop/evaluation/labelled/README.md); empty: control pairs only
    labelled_rows: int = 0  # rows per metric drawn from it, half of each verdict; 0: all
    faithfulness: str = "kprecision"  # the local judge's: kprecision (token support) or yesno (the model's Yes/No per statement)

    def __post_init__(self) -> None:
        if self.kind not in ("local", "endpoint", "none"):
            raise JudgeError(f"judge kind must be local, endpoint or none, not {self.kind!r}")
        if self.faithfulness not in FAITHFULNESS_METHODS:
            raise JudgeError(f"judge faithfulness method must be one of {', '.join(FAITHFULNESS_METHODS)}, not {self.faithfulness!r}")


def build_judge(settings: JudgeSettings, embedder, answerer=None, device: str = "cpu", refusal: re.Pattern | None = None):
    if settings.kind == "none":
        return None
    if settings.kind == "endpoint":
        return EndpointJudge(settings.base_url, settings.model, embedder, os.environ.get(settings.api_key_env, ""),
                             settings.timeout_s, settings.strictness)
    if settings.model:
        return LocalJudge.load(settings.model, embedder, device, refusal, settings.faithfulness)
    if answerer is None:
        raise JudgeError("a local judge without judge_model shares the base generator, but none is loaded")
    disable = answerer.base_scope
    return LocalJudge(answerer.model, answerer.tokenizer, embedder, device, name="local:base generator", disable=disable, refusal=refusal,
                      faithfulness=settings.faithfulness)


def _pairwise_agreement(positive: Sequence[float | None], negative: Sequence[float | None]) -> tuple[float | None, int]:
    """Share of control pairs the judge ranks the right way round (ties count half)."""
    pairs = [(p, n) for p, n in zip(positive, negative, strict=True) if p is not None and n is not None]
    if not pairs:
        return None, 0
    return sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs) / len(pairs), len(pairs)


def calibrate(judge, items: Sequence, n_pairs: int = 8, seed: int = 0) -> dict:
    """The judge's agreement with known verdicts on control pairs built from the eval set:
    a reference answer against its own source context versus another question's context
    (faithfulness), and against its own question versus another question (relevancy)."""
    items = list(items)
    if len(items) < 2:
        return {"faithfulness": None, "answer_relevancy": None, "pairs": 0, "note": "fewer than two eval questions: no control pairs"}
    rng = random.Random(seed)
    chosen = rng.sample(items, min(n_pairs, len(items)))
    others = [rng.choice([o for o in items if o.doc_id != i.doc_id] or [o for o in items if o is not i]) for i in chosen]
    matched = [JudgeSample(i.question, i.reference, (i.reference_context,)) for i in chosen]
    swapped_context = [JudgeSample(i.question, i.reference, (o.reference_context,)) for i, o in zip(chosen, others, strict=True)]
    swapped_answer = [JudgeSample(i.question, o.reference, (i.reference_context,)) for i, o in zip(chosen, others, strict=True)]
    good, bad_context, bad_answer = judge.score(matched), judge.score(swapped_context), judge.score(swapped_answer)
    faith, n_faith = _pairwise_agreement(good.faithfulness, bad_context.faithfulness)
    relevancy, n_rel = _pairwise_agreement(good.answer_relevancy, bad_answer.answer_relevancy)
    return {"faithfulness": faith, "answer_relevancy": relevancy, "pairs": len(chosen), "scored_pairs": {"faithfulness": n_faith, "answer_relevancy": n_rel},
            "errors": (good.errors + bad_context.errors + bad_answer.errors)[:5]}


def trust_statement(judge_name: str, calibration: dict, min_agreement: float, labelled: dict | None = None) -> dict:
    """Which judged metrics may count, and a sentence a reader can act on. With `labelled`
    (driftloop.evaluation.agreement.labelled_agreement), trust is the lower bound of the
    agreement's 95% interval on that set reaching `min_agreement`; the control pairs of
    this run's questions are shown beside it. Without, the control pairs decide."""
    def percent(value) -> str:
        return "not measurable" if value is None else f"{value:.0%}"

    control = ", ".join(f"{metric} {percent(calibration.get(metric))}" for metric in JUDGED)
    if labelled is not None:
        trusted = {m: bool(labelled.get(m) and labelled[m]["interval"] is not None and labelled[m]["interval"][0] >= min_agreement)
                   for m in JUDGED}
        parts = []
        for metric in JUDGED:
            entry = labelled.get(metric) or {}
            if entry.get("agreement") is None:
                parts.append(f"{metric} not measurable")
            else:
                low, high = entry["interval"]
                parts.append(f"{metric} {entry['agreement']:.0%} (95% CI {low:.0%}-{high:.0%}, {entry['n'] + entry['unscored']} rows)")
        head = (f"Judge `{judge_name}` agreed with the hand-labelled set `{labelled['set']}` on {', '.join(parts)}; "
                f"trust needs the interval's lower bound at {min_agreement:.0%}")
        tail = f" On {calibration.get('pairs', 0)} control pairs of this run's questions: {control}."
    else:
        trusted = {m: calibration.get(m) is not None and calibration[m] >= min_agreement for m in JUDGED}
        head = (f"Judge `{judge_name}` agreed with the known verdict on {calibration.get('pairs', 0)} control pairs: {control} "
                f"(chance is 50%, trust needs {min_agreement:.0%})")
        tail = ""
    verdict = ("trusted" if all(trusted.values()) else "partly trusted" if any(trusted.values()) else "not trusted")
    text = (f"{head}. Verdict: {verdict}.{tail} Scores of a metric the judge is not trusted on are "
            f"shown for information and count as missing for the gate.")
    return {"judge": judge_name, "calibration": calibration, "labelled": labelled, "trusted": trusted, "min_agreement": min_agreement,
            "verdict": verdict, "text": text}
