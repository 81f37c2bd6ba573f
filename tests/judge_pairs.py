"""Judges whose right answers are known, for tests/test_judge.py: eval items whose
control pairs are unambiguous, a scripted judge object that is wrong on chosen items,
and a scripted causal LM that LocalJudge can read Yes/No from and generate with."""

from __future__ import annotations

import re
from types import SimpleNamespace

from driftloop.evaluation.judge import JudgeScores, JudgeSample
from driftloop.evaluation.metrics import EvalItem


def control_items(n: int = 4) -> list[EvalItem]:
    """Each answer is a sentence of its own context and of no other, about a part whose
    number names the question it answers."""
    return [EvalItem(f"q{i}", f"What does part {i} do?", f"Part {i} parses tokens quickly.",
                     f"Notes on part {i}. Part {i} parses tokens quickly. It was written in year {i}.", f"d{i}") for i in range(n)]


class ScriptedJudge:
    """Scores a sample by who wrote what: faithfulness 1 when the context is the answer's
    own source, relevancy 1 when the answer is the question's own. On the items (by
    question id) in `faith_wrong` / `relevancy_wrong` it says the opposite; on those in
    `relevancy_tie` it scores every answer 0.5."""

    name = "scripted"

    def __init__(self, items, faith_wrong=(), relevancy_wrong=(), relevancy_tie=()) -> None:
        self.by_question = {i.question: i.question_id for i in items}
        self.by_answer = {i.reference: i.question_id for i in items}
        self.by_context = {i.reference_context: i.question_id for i in items}
        self.faith_wrong, self.relevancy_wrong, self.relevancy_tie = set(faith_wrong), set(relevancy_wrong), set(relevancy_tie)

    def score(self, samples: list[JudgeSample], metrics=("faithfulness", "answer_relevancy")) -> JudgeScores:
        faithfulness, relevancy = [], []
        for s in samples:
            asker, writer, source = self.by_question[s.question], self.by_answer[s.answer], self.by_context[s.contexts[0]]
            faithful = float(writer == source)
            faithfulness.append(1.0 - faithful if asker in self.faith_wrong else faithful)
            relevant = float(writer == asker)
            relevancy.append(0.5 if asker in self.relevancy_tie else 1.0 - relevant if asker in self.relevancy_wrong else relevant)
        return JudgeScores(faithfulness, relevancy)


_FAITH_PROMPT = re.compile(r"Context:\n(?P<context>.*?)\n\nStatement: (?P<statement>.*?)\n\nDoes the context", re.DOTALL)
_QUESTION_PROMPT = re.compile(r"Here is an answer:\n(?P<answer>.*?)\n\nWrite the one question", re.DOTALL)


class ScriptedCausalLM:
    """Stands in for the judge model behind LocalJudge with the real tokenizer: at each
    prompt's last position P(Yes) over {Yes, No} is 0.8 when the statement is a sentence of
    the context and 0.3 when not (0.5 anywhere else, so a read from the wrong position
    shows); `generate` writes back `questions[answer]`."""

    def __init__(self, tokenizer, questions: dict[str, str]) -> None:
        self.tokenizer, self.questions = tokenizer, questions
        self.yes = tokenizer.encode("Yes", add_special_tokens=False)[0]
        self.no = tokenizer.encode("No", add_special_tokens=False)[0]

    def _prompts(self, input_ids, attention_mask) -> list[str]:
        return [self.tokenizer.decode(row[mask.bool()]) for row, mask in zip(input_ids, attention_mask, strict=True)]

    def __call__(self, input_ids, attention_mask):
        import math

        import torch

        logits = torch.zeros(*input_ids.shape, len(self.tokenizer))
        for n, prompt in enumerate(self._prompts(input_ids, attention_mask)):
            match = _FAITH_PROMPT.search(prompt)
            supported = match["statement"] in re.split(r"(?<=[.!?])\s+", match["context"])
            logits[n, -1, self.yes] = math.log(0.8 / 0.2) if supported else math.log(0.3 / 0.7)
        return SimpleNamespace(logits=logits)

    def generate(self, input_ids, attention_mask, max_new_tokens, do_sample, pad_token_id):
        import torch

        written = [self.tokenizer.encode(self.questions[_QUESTION_PROMPT.search(p)["answer"]], add_special_tokens=False)[:max_new_tokens]
                   for p in self._prompts(input_ids, attention_mask)]
        width = max(len(w) for w in written)
        new = torch.tensor([w + [pad_token_id] * (width - len(w)) for w in written], dtype=input_ids.dtype)
        return torch.cat([input_ids, new], dim=1)
