"""Prompt reuse (driftloop/models/kvcache.py) on the tiny Llama: a prompt that shares a
prefix with one seen before computes only its new tokens and gets the logits and
answers it gets from scratch; memory stays under its bound, least recently used first;
one adapter's keys and values are never reused under another."""

import numpy as np
import pytest
import torch

from driftloop.evaluation.generate import BASE, Answerer
from driftloop.models.kvcache import PrefixCache, prefill

SYSTEM = "You answer questions from the documentation excerpts given, in one sentence."


def chat(answerer, context: str, question: str) -> str:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"Excerpts:\n{context}\n\nQuestion: {question}"}]
    return answerer.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


@pytest.fixture(scope="module")
def prompts(tiny_llama):
    answerer = Answerer(tiny_llama, "cpu", precision="fp32", prefix_cache_mb=0)
    contexts = ["the harbor opens at dawn and closes at dusk", "ferries leave from pier four every hour",
                "tickets are sold at the blue kiosk by the gate"]
    return [chat(answerer, c, q) for c in contexts for q in ("When does it open?", "Where is it?")]


def last_logits(model, rows, past):
    width = max(len(r) for r in rows)
    ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    with torch.inference_mode():
        if past is None:
            return model(input_ids=ids, attention_mask=mask).logits[:, -1]
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, -1:]
        return model(input_ids=ids[:, -1:], attention_mask=mask, past_key_values=past, position_ids=positions).logits[:, -1]


def test_reused_prefixes_give_the_logits_of_a_full_computation(tiny_llama, prompts):
    answerer = Answerer(tiny_llama, "cpu", precision="fp32", prefix_cache_mb=64)
    cache = answerer.prefix_cache
    rows = answerer.tokenizer(prompts, add_special_tokens=False)["input_ids"]
    expected = last_logits(answerer.model, rows, None)
    with torch.inference_mode():
        first = prefill(answerer.model, cache, BASE, rows[:2])
    np.testing.assert_allclose(last_logits(answerer.model, rows[:2], first), expected[:2], atol=2e-4)
    # Now a batch mixing exact repeats, prompts sharing only the system prompt and the
    # first context, and a prompt extended past a cached one.
    longer = rows[0] + answerer.tokenizer(" And on Sundays?", add_special_tokens=False)["input_ids"]
    mixed = [rows[1], rows[0], rows[3], rows[4], longer]
    with torch.inference_mode():
        reused = prefill(answerer.model, cache, BASE, mixed)
    full = last_logits(answerer.model, mixed, None)
    np.testing.assert_allclose(last_logits(answerer.model, mixed, reused), full, atol=2e-4)
    stats = cache.stats()
    assert stats["hits"] >= 5 and stats["reused_tokens"] >= len(rows[0]) + len(rows[1]) - 2
    # The extension replaced the prompt it extends: one entry per distinct prompt.
    assert stats["entries"] == 4


def test_answers_with_reuse_are_the_answers_without(tiny_llama, prompts):
    plain = Answerer(tiny_llama, "cpu", precision="fp32", prefix_cache_mb=0)
    reusing = Answerer(tiny_llama, "cpu", precision="fp32", prefix_cache_mb=64)
    assert plain.prefix_cache is None and reusing.prefix_cache is not None
    ids = [str(i) for i in range(len(prompts))]
    expected = [a.answer for a in plain.answer(BASE, prompts, ids, 12, batch_size=3)]
    for _ in range(2):  # the second pass is served from the cache
        assert [a.answer for a in reusing.answer(BASE, prompts, ids, 12, batch_size=3)] == expected
    assert reusing.prefix_cache.stats()["reused_share"] > 0.5
    seeded = dict(temperature=0.9, top_p=0.9, seed=7)
    assert ([a.answer for a in reusing.answer(BASE, prompts[:3], ids[:3], 12, batch_size=3, **seeded)]
            == [a.answer for a in plain.answer(BASE, prompts[:3], ids[:3], 12, batch_size=3, **seeded)])


def test_memory_stays_bounded_and_the_least_recently_used_goes_first():
    def layers(n):
        return [(torch.zeros(1, 2, n, 8), torch.zeros(1, 2, n, 8))]

    entry = sum(k.nbytes + v.nbytes for k, v in layers(10))
    cache = PrefixCache(max_bytes=3 * entry)
    for first in (1, 2, 3):
        cache.put(BASE, [first] * 10, layers(10))
    assert cache.longest(BASE, [1] * 10 + [5])[0] == 10  # prompt 1 is now the most recent
    cache.put(BASE, [4] * 10, layers(10))
    assert cache.bytes <= cache.max_bytes and cache.evictions == 1
    assert cache.longest(BASE, [2] * 10)[0] == 0  # the least recently used went
    assert cache.longest(BASE, [1] * 10)[0] == 10 and cache.longest(BASE, [3] * 10)[0] == 10
    cache.put(BASE, [9] * 40, layers(40))  # larger than the whole budget: not kept, nothing evicted for it
    assert cache.longest(BASE, [9] * 40)[0] == 0 and cache.stats()["entries"] == 3
    with pytest.raises(ValueError, match="at least 0"):
        PrefixCache(-1)


def test_one_adapters_keys_and_values_never_serve_another(tiny_llama, prompts, tmp_path):
    from test_answer_cache import random_adapter

    adapter = random_adapter(tiny_llama, tmp_path / "adapter")
    plain = Answerer(tiny_llama, "cpu", precision="fp32", prefix_cache_mb=0)
    plain.add_adapter("challenger", adapter)
    reusing = Answerer(tiny_llama, "cpu", precision="fp32", prefix_cache_mb=64)
    reusing.add_adapter("challenger", adapter)
    ids = [str(i) for i in range(len(prompts))]
    reusing.answer(BASE, prompts, ids, 8, batch_size=3)
    hits = reusing.prefix_cache.hits
    challenger = [a.answer for a in reusing.answer("challenger", prompts, ids, 8, batch_size=3)]
    assert challenger == [a.answer for a in plain.answer("challenger", prompts, ids, 8, batch_size=3)]
    assert challenger != [a.answer for a in plain.answer(BASE, prompts, ids, 8, batch_size=3)]
    # The challenger's first batch found nothing of its own to reuse.
    assert reusing.prefix_cache.misses >= 1 and reusing.prefix_cache.hits >= hits
