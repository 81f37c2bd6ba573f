"""The request-timeout fix (driftloop/serving/traffic.py) on BentoML's own middleware."""

import asyncio

from bentoml._internal.server.http.traffic import TimeoutMiddleware

from driftloop.serving.traffic import release_request_timers


async def _answer(scope, receive, send):
    await send({"type": "http.response.start", "status": 429, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


async def _slow(scope, receive, send):
    await asyncio.sleep(1)


def _requests(app, n: int) -> tuple[list[int], int]:
    async def scenario():
        statuses = []

        async def send(message):
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        async def receive():
            return {"type": "http.request", "body": b""}

        for _ in range(n):
            await app({"type": "http", "path": "/answer", "headers": []}, receive, send)
        await asyncio.sleep(0.01)  # a cancelled app gets to unwind
        loop = asyncio.get_running_loop()
        return statuses, sum(not handle.cancelled() for handle in loop._scheduled)

    return asyncio.run(scenario())


def test_finished_requests_leave_no_live_timer_and_the_timeout_still_answers_504():
    release_request_timers()
    assert not release_request_timers(), "patching twice must be a no-op"
    statuses, live = _requests(TimeoutMiddleware(_answer, timeout=300), 200)
    assert statuses == [429] * 200 and live == 0
    statuses, live = _requests(TimeoutMiddleware(_slow, timeout=0.05), 1)
    assert statuses == [504] and live == 0
