"""Chat examples to token ids with loss only on the answer, and length-grouped batches."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

IGNORE = -100


class TrainingDataError(ValueError):
    """The training data cannot be used: empty, too small, or longer than the model sees."""


@dataclass(frozen=True)
class Encoded:
    example_id: str
    input_ids: list[int]
    labels: list[int]

    @property
    def n_target(self) -> int:
        return sum(1 for t in self.labels if t != IGNORE)

    @property
    def n_predicted(self) -> int:
        """Labels a causal LM is scored on: every target after the first position."""
        return sum(1 for t in self.labels[1:] if t != IGNORE)


def encode_example(example: dict, tokenizer) -> Encoded:
    messages = example["messages"]
    prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    if full_ids[: len(prompt_ids)] != prompt_ids:
        # A template that renders the prompt differently inside the full chat: fall back to
        # masking by length, which still keeps the loss off the prompt.
        prompt_ids = full_ids[: len(prompt_ids)]
    labels = [IGNORE] * len(prompt_ids) + full_ids[len(prompt_ids) :]
    return Encoded(example["example_id"], full_ids, labels)


def encode_dataset(examples: Sequence[dict], tokenizer, max_seq_length: int, long_examples: str, min_examples: int) -> tuple[list[Encoded], list[str]]:
    """Encode all examples; those over max_seq_length raise, or are skipped and listed."""
    if len(examples) < min_examples:
        raise TrainingDataError(f"the instruction dataset has {len(examples)} examples; training needs at least {min_examples}")
    encoded, too_long = [], []
    for example in examples:
        item = encode_example(example, tokenizer)
        if len(item.input_ids) > max_seq_length:
            too_long.append(f"{item.example_id} ({len(item.input_ids)} tokens)")
        elif item.n_target == 0:
            too_long.append(f"{item.example_id} (no answer tokens)")
        else:
            encoded.append(item)
    if too_long and long_examples == "error":
        raise TrainingDataError(
            f"{len(too_long)} of {len(examples)} examples exceed max_seq_length={max_seq_length} or have no answer tokens, "
            f"e.g. {too_long[:3]}; raise max_seq_length or set long_examples: skip"
        )
    if len(encoded) < min_examples:
        raise TrainingDataError(f"only {len(encoded)} examples fit max_seq_length={max_seq_length}; training needs at least {min_examples}")
    return encoded, too_long


def fill_padded(order: Sequence[int], lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Split `order` into consecutive runs whose padded size (rows x longest) fits `budget`.

    A row longer than the budget on its own still gets a run of its own.
    """
    runs: list[list[int]] = []
    run: list[int] = []
    longest = 0
    for i in order:
        if run and max(longest, lengths[i]) * (len(run) + 1) > budget:
            runs.append(run)
            run, longest = [], 0
        run.append(i)
        longest = max(longest, lengths[i])
    if run:
        runs.append(run)
    return runs


def length_grouped_batches(items: Sequence[Encoded], token_budget: int, seed: int, epoch: int) -> list[list[int]]:
    """Batches of similar-length examples, each padded to at most `token_budget` tokens.

    Sorting by length within large random pools keeps padding near zero while the
    order of batches stays random, epoch by epoch and reproducibly by seed.
    """
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(items)))
    rng.shuffle(order)
    pool = max(64, len(order) // 8)
    lengths = [len(x.input_ids) for x in items]
    batches: list[list[int]] = []
    for start in range(0, len(order), pool):
        chunk = sorted(order[start : start + pool], key=lengths.__getitem__, reverse=True)
        batches += fill_padded(chunk, lengths, token_budget)
    rng.shuffle(batches)
    return batches


def collate(items: Sequence[Encoded], pad_id: int):
    import torch

    width = max(len(x.input_ids) for x in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for row, x in enumerate(items):
        n = len(x.input_ids)
        ids[row, :n] = torch.tensor(x.input_ids)
        labels[row, :n] = torch.tensor(x.labels)
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}
