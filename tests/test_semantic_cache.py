"""The semantic cache (driftloop/serving/semantic_cache.py): a near-identical question gets
the answer already given, under the same model, index, prompt and request settings only;
memory is bounded; only deterministic requests are cached; cached answers are logged as
such and counted once by the drift statistics; and, in a real service, a repeated question
is answered from the cache, marked, logged and counted in /metrics."""

import json
from dataclasses import replace
from datetime import UTC, datetime

import numpy as np
import pytest

from driftloop.monitoring.traffic import columns, rate_counts
from driftloop.serving.chat import ChatRequest, Sampling
from driftloop.serving.semantic_cache import SemanticCache, answer_key, cacheable, content_words, served_from
from driftloop.settings import ServiceSettings, SettingsError

SPEC = {"index_version": "idx-1", "prompt_version": "rag.v1"}


def unit(*values) -> np.ndarray:
    v = np.array(values, dtype=np.float32)
    return v / np.linalg.norm(v)


def test_a_near_identical_question_gets_the_answer_already_given_under_its_own_key_only():
    cache = SemanticCache(threshold=0.95)
    key = answer_key(SPEC, "lora-a", 3, 64, "answer")
    cache.put(key, unit(1, 0, 0), {"answer": "A"}, "req-1")
    near, far = unit(1, 0.2, 0), unit(1, 0.5, 0)  # cosine 0.981 and 0.894
    hit = cache.get(key, near)
    assert hit.result == {"answer": "A"} and hit.request_id == "req-1" and hit.similarity == pytest.approx(0.9806, abs=1e-3)
    assert cache.get(key, far) is None
    # Another model, index, prompt, k, token limit or endpoint never sees it.
    for other in (answer_key(SPEC, "lora-b", 3, 64, "answer"), answer_key({**SPEC, "index_version": "idx-2"}, "lora-a", 3, 64, "answer"),
                  answer_key({**SPEC, "prompt_version": "rag.v2"}, "lora-a", 3, 64, "answer"), answer_key(SPEC, "lora-a", 5, 64, "answer"),
                  answer_key(SPEC, "lora-a", 3, 32, "answer"), answer_key(SPEC, "lora-a", 3, 64, "chat")):
        assert cache.get(other, unit(1, 0, 0)) is None, other
    served = served_from(hit, "req-2", 0.004)
    assert served["request_id"] == "req-2" and served["completion_tokens"] == 0 and served["cache"]["answered_as"] == "req-1"


def test_a_question_about_another_name_never_gets_that_names_answer():
    """all-MiniLM-L6-v2 scores these two 0.981: by the embedding alone, one would be served
    the other's answer. Under match="words" (the default) it is answered afresh; a rewording
    that keeps the words (case, order, punctuation, filler) still hits."""
    asked = "What does `asyncio.base_events.BaseEventLoop.set_task_factory` do?"
    other = "What does `asyncio.base_events.BaseEventLoop.get_task_factory` do?"
    same = "what does asyncio.base_events.BaseEventLoop.set_task_factory do"
    assert content_words(asked) == content_words(same) != content_words(other)
    assert content_words("How do I create a virtual environment in Python?") == content_words("In Python, how do I create a virtual environment")
    vector = unit(1, 0, 0)
    strict, loose = SemanticCache(threshold=0.97), SemanticCache(threshold=0.97, match="embedding")
    for cache in (strict, loose):
        cache.put(("k",), vector, {"answer": "set_task_factory sets ..."}, "req-1", asked)
    assert strict.get(("k",), vector, other) is None and strict.get(("k",), vector, same).request_id == "req-1"
    assert loose.get(("k",), vector, other).request_id == "req-1"


def test_a_question_asked_again_in_the_same_words_is_found_without_its_embedding():
    cache = SemanticCache(threshold=0.99, max_entries=1)
    cache.put(("k",), unit(1, 0, 0), {"answer": "A"}, "req-1", "What does section 3 say?")
    hit = cache.repeat(("k",), "  what does Section 3 say ")
    assert hit.request_id == "req-1" and hit.similarity == 1.0
    assert cache.repeat(("k",), "What does section 4 say?") is None and cache.repeat(("other",), "What does section 3 say?") is None
    cache.put(("k",), unit(0, 1, 0), {"answer": "B"}, "req-2", "Another question?")  # evicts the first, and its wording with it
    assert cache.repeat(("k",), "What does section 3 say?") is None and cache.repeat(("k",), "another question").request_id == "req-2"


def test_memory_is_bounded_least_recently_used_first_and_by_age(monkeypatch):
    cache = SemanticCache(threshold=0.99, max_entries=2)
    key = ("k",)
    cache.put(key, unit(1, 0, 0), {"answer": "x"}, "req-x")
    cache.put(key, unit(0, 1, 0), {"answer": "y"}, "req-y")
    assert cache.get(key, unit(1, 0, 0)) is not None  # x is now the most recently used
    cache.put(key, unit(0, 0, 1), {"answer": "z"}, "req-z")
    assert len(cache) == 2 and cache.get(key, unit(0, 1, 0)) is None and cache.get(key, unit(1, 0, 0)).result["answer"] == "x"

    import driftloop.serving.semantic_cache as module

    now = [1000.0]
    monkeypatch.setattr(module.time, "monotonic", lambda: now[0])
    aged = SemanticCache(threshold=0.99, ttl_s=60)
    aged.put(key, unit(1, 0, 0), {"answer": "old"}, "req-old")
    now[0] += 61
    assert aged.get(key, unit(1, 0, 0)) is None and len(aged) == 0


def test_only_deterministic_requests_are_cached():
    plain = ChatRequest(model="driftloop", question="q")
    assert cacheable(None) and cacheable(plain)
    assert not cacheable(replace(plain, stream=True))
    assert not cacheable(replace(plain, system=("Reply in French.",)))
    assert not cacheable(replace(plain, history=({"role": "user", "content": "earlier"},)))
    assert not cacheable(replace(plain, sampling=Sampling(temperature=0.7)))
    assert not cacheable(replace(plain, sampling=Sampling(stop=("\n",))))


@pytest.mark.parametrize(("threshold", "entries", "match"), [(0.0, 10, "words"), (1.5, 10, "words"), (0.9, 0, "words"), (0.9, 10, "vibes")])
def test_out_of_range_cache_settings_are_refused(threshold, entries, match):
    with pytest.raises(ValueError, match="semantic cache"):
        SemanticCache(threshold, entries, match=match)


def test_a_bad_threshold_in_the_environment_names_its_variable(monkeypatch):
    monkeypatch.setenv("DRIFTLOOP_SEMANTIC_CACHE_THRESHOLD", "1.5")
    with pytest.raises(SettingsError, match="DRIFTLOOP_SEMANTIC_CACHE_THRESHOLD"):
        ServiceSettings.from_env()


def test_drift_statistics_count_a_cached_answer_once():
    first = {"status": 200, "question": "q?", "question_chars": 2, "answer": "I cannot answer that.", "answer_chars": 21,
             "latency_s": 2.0, "retrieval_scores": [0.7], "completion_tokens": 9}
    hit = {**first, "latency_s": 0.003, "cache": {"hit": True, "similarity": 0.99, "answered_as": "req-1"}}
    got = columns([first, hit])
    assert got["prompt_chars"] == [2.0, 2.0]  # two questions were asked
    assert got["latency_ms"] == [2000.0] and got["answer_chars"] == [21.0] and got["completion_tokens"] == [9.0]
    assert rate_counts([first, hit])["refusal_rate"] == (1, 1)


@pytest.mark.slow
def test_a_service_answers_a_repeated_question_from_the_cache_marked_logged_and_counted(tmp_path, tiny_llama, tiny_embedding_model):
    from driftloop.serving.requestlog import read_partition
    from serving_helpers import call, make_bundle, serve

    # The tiny random embedding model puts unrelated questions close together: only a question
    # that embeds identically (spacing aside) may count as the same here.
    with serve(tmp_path, make_bundle(tmp_path, tiny_llama, tiny_embedding_model), {"DRIFTLOOP_SEMANTIC_CACHE_THRESHOLD": "0.9999"}) as running:
        port = running["port"]

        def answer(question: str) -> dict:
            status, body = call(port, "/answer", {"question": question, "max_new_tokens": 6})
            assert status == 200, body
            return json.loads(body)

        first = answer("What does section 3 say about the castle?")
        again = answer("  What does section 3 say about the castle?  ")
        other = answer("Which ship left the harbour in section 5?")
        assert "cache" not in first and "cache" not in other
        assert again["cache"] == {"hit": True, "similarity": pytest.approx(1.0, abs=1e-3), "answered_as": first["request_id"]}
        assert again["answer"] == first["answer"] and again["chunks"] == first["chunks"] and again["completion_tokens"] == 0
        assert again["request_id"] != first["request_id"] and again["model_version"] == first["model_version"]

        def chat(*system: str) -> dict:
            messages = [{"role": "system", "content": s} for s in system] + [{"role": "user", "content": "What is in section 2?"}]
            status, body = call(port, "/v1/chat/completions", {"model": "driftloop", "messages": messages, "max_tokens": 6})
            assert status == 200, body
            return json.loads(body)["driftloop"]

        assert "cache" not in chat() and chat()["cache"]["hit"] is True
        assert "cache" not in chat("Answer in one word.") and "cache" not in chat("Answer in one word.")  # a client system prompt: never cached

        rows = read_partition(tmp_path / "data" / "serving", "requests", datetime.now(UTC).strftime("%Y-%m-%d"))
        logged = {r["request_id"]: r for r in rows}
        assert logged[again["request_id"]]["cache"]["answered_as"] == first["request_id"]
        assert logged[again["request_id"]]["completion_tokens"] == 0 and "cache" not in logged[first["request_id"]]
        metrics = {line.split()[0]: float(line.split()[-1]) for line in call(port, "/metrics", key=None)[1].splitlines()
                   if line.startswith("driftloop_semantic_cache_total")}
        assert metrics['driftloop_semantic_cache_total{result="hit"}'] == 2, metrics
        assert metrics['driftloop_semantic_cache_total{result="miss"}'] == 3, metrics
