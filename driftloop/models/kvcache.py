"""Prompt reuse for the transformers generator: the key/value tensors of prompts already
computed, so that a prompt sharing a prefix with one seen before (the template's system
prompt always; the whole prompt when a question repeats) computes only what is new.

Causal attention makes the keys and values at position j depend on tokens 0..j alone,
so the first n positions of any cached prompt are exact for every prompt that starts
with the same n tokens. Only a prompt's new tokens are prefilled: alike rows as one
batch, a row that reuses much more than the others on its own (on 2 CPU cores eight
500-token prompts one at a time took about as long as one batch of eight: the matmuls
are already large). The batch then decodes together from the stacked caches, so reuse
changes which work is done, not the answer (in fp32 exactly; in bf16 as much as any
change of batch shape does).

Memory is bounded by bytes; the least recently used prompt goes first. A prompt that
extends a cached one replaces it. Entries are per adapter: the same tokens have other
keys and values under other weights.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

import numpy as np

DEFAULT_MB = 512


@dataclass
class _Entry:
    tokens: np.ndarray
    layers: list  # per layer (keys, values), each [1, kv_heads, len(tokens), head_dim]
    nbytes: int


def common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    n = min(len(a), len(b))
    differ = np.flatnonzero(a[:n] != b[:n])
    return int(differ[0]) if len(differ) else n


class PrefixCache:
    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"prefix cache size must be at least 0 bytes, got {max_bytes}")
        self.max_bytes = max_bytes
        self._entries: collections.OrderedDict[tuple[str, int], _Entry] = collections.OrderedDict()
        self._next = 0
        self.bytes = 0
        self.hits = self.misses = self.evictions = 0
        self.reused_tokens = self.computed_tokens = 0

    def longest(self, scope: str, tokens: list[int]) -> tuple[int, list]:
        """The most positions of `tokens` some cached prompt of `scope` covers, and their
        per-layer keys and values (views, never written to)."""
        wanted = np.asarray(tokens, dtype=np.int64)
        best, best_key = 0, None
        for key, entry in self._entries.items():
            if key[0] == scope:
                n = common_prefix(entry.tokens, wanted)
                if n > best:
                    best, best_key = n, key
        if best_key is None:
            self.misses += 1
            return 0, []
        self.hits += 1
        self._entries.move_to_end(best_key)
        layers = self._entries[best_key].layers
        return best, [(k[:, :, :best], v[:, :, :best]) for k, v in layers]

    def put(self, scope: str, tokens: list[int], layers: list) -> None:
        nbytes = sum(k.nbytes + v.nbytes for k, v in layers)
        if nbytes > self.max_bytes:
            return
        wanted = np.asarray(tokens, dtype=np.int64)
        for key in [key for key, entry in self._entries.items()
                    if key[0] == scope and len(entry.tokens) <= len(wanted) and common_prefix(entry.tokens, wanted) == len(entry.tokens)]:
            self._drop(key)
        while self._entries and self.bytes + nbytes > self.max_bytes:
            self._drop(next(iter(self._entries)))
            self.evictions += 1
        self._next += 1
        self._entries[(scope, self._next)] = _Entry(wanted, layers, nbytes)
        self.bytes += nbytes

    def _drop(self, key: tuple[str, int]) -> None:
        self.bytes -= self._entries.pop(key).nbytes

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0

    def stats(self) -> dict:
        total = self.reused_tokens + self.computed_tokens
        return {"entries": len(self._entries), "bytes": self.bytes, "max_bytes": self.max_bytes, "hits": self.hits,
                "misses": self.misses, "evictions": self.evictions, "reused_tokens": self.reused_tokens,
                "computed_tokens": self.computed_tokens, "reused_share": round(self.reused_tokens / total, 4) if total else None}


def supports_reuse(model) -> bool:
    """Only plain full-attention caches can be cut and stacked per row; sliding-window
    and recurrent layers keep state that a prefix slice does not describe."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    try:
        cache = DynamicCache(config=model.config)
    except Exception:  # noqa: BLE001 - a config this version cannot build a cache for: no reuse
        return False
    return all(type(layer) is DynamicLayer for layer in cache.layers)


def _extend(model, prefixes: list[list], suffixes: list[list[int]], start: int) -> list[list]:
    """Run `suffixes` (right-padded into one batch) after their rows' `start`-long cached
    prefixes; returns each row's keys and values over prefix + suffix. Right padding
    needs no mask: causal attention keeps real tokens from seeing the pads after them."""
    import torch
    from transformers import DynamicCache

    device = next(model.parameters()).device
    width = max(len(suffix) for suffix in suffixes)
    cache = DynamicCache()
    for index in range(len(prefixes[0])):  # none when the rows start from nothing
        cache.update(torch.cat([layers[index][0] for layers in prefixes]), torch.cat([layers[index][1] for layers in prefixes]), index)
    ids = torch.tensor([suffix + [suffix[-1]] * (width - len(suffix)) for suffix in suffixes], device=device)
    # Only keys and values are wanted: one logit row, not the vocabulary at every position
    # (the output projection is a sixth of a small model's prefill).
    model(input_ids=ids, past_key_values=cache, use_cache=True, position_ids=torch.arange(start, start + width, device=device)[None],
          logits_to_keep=1)
    # Copies, not views: a cached row must not keep the whole batch's tensors alive.
    return [[(layer.keys[row : row + 1, :, : start + len(suffix)].clone(), layer.values[row : row + 1, :, : start + len(suffix)].clone())
             for layer in cache.layers] for row, suffix in enumerate(suffixes)]


def prefill(model, cache: PrefixCache, scope: str, rows: list[list[int]], max_waste: float = 0.25):
    """Keys and values of every row but its last token, reusing what `cache` holds and
    adding what was computed; returns a batch cache, left-padded to the longest row, for
    `generate` to decode from.

    Rows with something left to compute run as one batch from their shortest shared
    reuse when that recomputes or pads at most `max_waste` of the useful tokens (one
    matmul over the batch is cheaper than several where rows are alike, as fresh RAG
    prompts are); otherwise each runs alone from its own reuse."""
    import torch
    from transformers import DynamicCache

    heads = [tokens[:-1] for tokens in rows]
    found = [cache.longest(scope, head) for head in heads]
    per_row: list[list] = [layers for _, layers in found]
    todo = [i for i, head in enumerate(heads) if found[i][0] < len(head)]
    useful = sum(len(heads[i]) - found[i][0] for i in todo)
    start = min((found[i][0] for i in todo), default=0)
    width = max((len(heads[i]) - start for i in todo), default=0)
    groups = [todo] if len(todo) > 1 and len(todo) * width - useful <= max_waste * useful else [[i] for i in todo]
    for group in groups:
        begin = min(found[i][0] for i in group)
        prefixes = [[(k[:, :, :begin], v[:, :, :begin]) for k, v in found[i][1]] for i in group] if begin else [[] for _ in group]
        extended = _extend(model, prefixes, [heads[i][begin:] for i in group], begin)
        for i, layers in zip(group, extended, strict=True):
            per_row[i] = layers
            cache.put(scope, heads[i], layers)
    for i, head in enumerate(heads):
        cache.reused_tokens += found[i][0]
        cache.computed_tokens += len(head) - found[i][0]
    longest = max(len(head) for head in heads)
    batch = DynamicCache()
    for index in range(len(per_row[0])):
        keys = [torch.nn.functional.pad(layers[index][0], (0, 0, longest - layers[index][0].shape[2], 0)) for layers in per_row]
        values = [torch.nn.functional.pad(layers[index][1], (0, 0, longest - layers[index][1].shape[2], 0)) for layers in per_row]
        batch.update(torch.cat(keys), torch.cat(values), index)
    return batch

