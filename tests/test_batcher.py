"""The service's event-driven batcher (driftloop/serving/batcher.py), without a model."""

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from driftloop.serving.batcher import Batcher, QueueFull


class Recorder:
    """A stand-in model: records each batch and the thread it ran on, and can be held."""

    def __init__(self, seconds: float = 0.0) -> None:
        self.batches: list[list] = []
        self.threads: set[str] = set()
        self.seconds = seconds
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def __call__(self, items):
        self.entered.set()
        self.gate.wait(10)
        self.threads.add(threading.current_thread().name)
        self.batches.append(list(items))
        time.sleep(self.seconds)
        return [f"answer to {item}" for item in items]


def run(coro):
    return asyncio.run(coro)


async def running(model: Recorder) -> None:
    """Until the model has a batch in hand: a fixed sleep is too short on a loaded machine."""
    assert await asyncio.to_thread(model.entered.wait, 10), "the first batch never reached the model"


def test_requests_queued_behind_a_running_batch_go_out_together_in_order():
    model, lane = Recorder(), ThreadPoolExecutor(1, thread_name_prefix="lane")
    batcher = Batcher(model, lane, max_batch=4, window_s=0)

    async def scenario():
        model.gate.clear()
        first = asyncio.ensure_future(batcher.submit("q0"))
        await running(model)  # q0 is running, held at the gate
        rest = [asyncio.ensure_future(batcher.submit(f"q{i}")) for i in range(1, 7)]
        await asyncio.sleep(0)
        model.gate.set()
        return [await first] + list(await asyncio.gather(*rest))

    answers = run(scenario())
    assert answers == [f"answer to q{i}" for i in range(7)]
    assert model.batches == [["q0"], ["q1", "q2", "q3", "q4"], ["q5", "q6"]]
    assert model.threads == {"lane_0"} and batcher.batches == 3 and batcher.batched == 7


def test_a_lone_request_waits_only_its_window_and_company_joins_it():
    model = Recorder()
    batcher = Batcher(model, ThreadPoolExecutor(1), max_batch=8, window_s=0.2)

    async def scenario():
        started = time.perf_counter()
        first = asyncio.ensure_future(batcher.submit("a"))
        await asyncio.sleep(0.05)
        second = await batcher.submit("b")
        return await first, second, time.perf_counter() - started

    first, second, seconds = run(scenario())
    assert (first, second) == ("answer to a", "answer to b") and model.batches == [["a", "b"]]
    assert 0.15 <= seconds < 2


def test_a_full_queue_refuses_at_once_and_stale_requests_are_shed_not_run():
    model = Recorder()
    batcher = Batcher(model, ThreadPoolExecutor(1), max_batch=1, max_queue=2, max_wait_s=0.1, window_s=0)

    async def scenario():
        model.gate.clear()
        first = asyncio.ensure_future(batcher.submit("running"))
        await running(model)
        waiting = [asyncio.ensure_future(batcher.submit(f"w{i}")) for i in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(QueueFull, match="limit 2"):
            await batcher.submit("one too many")
        await asyncio.sleep(0.2)  # the two waiting ones pass their deadline while held
        model.gate.set()
        results = await asyncio.gather(first, *waiting, return_exceptions=True)
        return results, await batcher.submit("after")

    results, after = run(scenario())
    assert results[0] == "answer to running"
    assert all(isinstance(r, QueueFull) and "waited" in str(r) for r in results[1:]), results
    assert after == "answer to after" and model.batches == [["running"], ["after"]] and batcher.shed == 3


def test_a_failing_batch_fails_its_callers_and_the_next_batch_still_runs():
    calls = []

    def flaky(items):
        calls.append(list(items))
        if len(calls) == 1:
            raise RuntimeError("out of memory in the model")
        return [item.upper() for item in items]

    batcher = Batcher(flaky, ThreadPoolExecutor(1), max_batch=4, window_s=0.05)

    async def scenario():
        failed = await asyncio.gather(batcher.submit("x"), batcher.submit("y"), return_exceptions=True)
        return failed, await batcher.submit("z")

    failed, ok = run(scenario())
    assert [str(e) for e in failed] == ["out of memory in the model"] * 2 and ok == "Z"


def test_a_model_returning_the_wrong_count_is_an_error_not_a_misrouted_answer():
    batcher = Batcher(lambda items: ["only one"], ThreadPoolExecutor(1), max_batch=4, window_s=0.05)

    async def scenario():
        return await asyncio.gather(batcher.submit("a"), batcher.submit("b"), return_exceptions=True)

    results = run(scenario())
    assert all(isinstance(r, RuntimeError) and "returned 1 results" in str(r) for r in results)


def test_a_cancelled_caller_gives_its_place_back():
    model = Recorder()
    batcher = Batcher(model, ThreadPoolExecutor(1), max_batch=8, window_s=0)

    async def scenario():
        model.gate.clear()
        first = asyncio.ensure_future(batcher.submit("running"))
        await running(model)
        gone = asyncio.ensure_future(batcher.submit("gone"))
        kept = asyncio.ensure_future(batcher.submit("kept"))
        await asyncio.sleep(0)
        gone.cancel()
        await asyncio.sleep(0)
        assert batcher.queued == 1
        model.gate.set()
        return await first, await kept

    assert run(scenario()) == ("answer to running", "answer to kept")
    assert model.batches == [["running"], ["kept"]]


def test_bad_limits_are_refused():
    with pytest.raises(ValueError, match="max_batch"):
        Batcher(lambda items: items, ThreadPoolExecutor(1), max_batch=0)


def test_only_items_with_the_same_key_share_a_batch_and_the_rest_keep_their_order():
    model, lane = Recorder(), ThreadPoolExecutor(1, thread_name_prefix="lane")
    batcher = Batcher(model, lane, max_batch=4, window_s=0, key=lambda item: item[0])

    async def scenario():
        model.gate.clear()
        first = asyncio.ensure_future(batcher.submit("g0"))
        await running(model)
        rest = [asyncio.ensure_future(batcher.submit(item)) for item in ("g1", "s1", "g2", "s2", "g3", "g4", "g5")]
        await asyncio.sleep(0)
        model.gate.set()
        return [await first] + list(await asyncio.gather(*rest))

    answers = run(scenario())
    assert answers == [f"answer to {item}" for item in ("g0", "g1", "s1", "g2", "s2", "g3", "g4", "g5")]
    # Greedy and sampled requests never share a generate call; the queue's order holds within each.
    assert model.batches == [["g0"], ["g1", "g2", "g3", "g4"], ["s1", "s2"], ["g5"]]


@pytest.mark.parametrize("concurrency", [1, 3])
def test_an_engine_with_its_own_slots_gets_each_request_as_it_comes(concurrency):
    """With `concurrency`, that many batches run at once (llama.cpp's slots take a request
    while others decode); with 1, the next waits for the one running."""
    lock, state = threading.Lock(), {"now": 0, "most": 0}

    def model(items):
        with lock:
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])
        time.sleep(0.3)
        with lock:
            state["now"] -= 1
        return [f"answer to {item}" for item in items]

    batcher = Batcher(model, ThreadPoolExecutor(3), max_batch=1, window_s=0, concurrency=concurrency)

    async def scenario():
        return await asyncio.gather(*(batcher.submit(f"q{i}") for i in range(3)))

    assert run(scenario()) == [f"answer to q{i}" for i in range(3)]
    assert state["most"] == concurrency and batcher.batches == 3
