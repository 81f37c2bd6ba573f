"""A fix to BentoML's request timeout, applied by the service at import.

BentoML's `TimeoutMiddleware` arms a `call_later` of the traffic timeout (300 s here) for
every request and never cancels it, and it sits outside the concurrency limiter, so every
request, a refused 429 included, leaves a live timer behind holding its future and a copy
of the request's context for five minutes. Under sustained overload that was the public
process growing by about 4 KB per request (655 to 835 MB in 180 s of 250 requests/s,
linear), a growth bounded only by the timeout. The replacement below is the same
middleware with its timer cancelled when the request finishes.
"""

from __future__ import annotations

import asyncio


def release_request_timers() -> bool:
    """Patch BentoML's TimeoutMiddleware in this process; True if it was patched now."""
    from bentoml._internal.server.http import traffic
    from starlette.responses import JSONResponse

    middleware = traffic.TimeoutMiddleware
    if getattr(middleware.__call__, "releases_timer", False):
        return False

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        timer = loop.call_later(self.timeout, self._set_timer_out, waiter)

        async def _send(message) -> None:
            if not waiter.done():
                waiter.set_result(None)
            await send(message)

        fut = asyncio.ensure_future(self.app(scope, receive, _send))
        try:
            try:
                await waiter
            except asyncio.TimeoutError:
                if fut.cancel():
                    response = JSONResponse({"error": f"Not able to process the request in {self.timeout} seconds"}, status_code=504)
                    await response(scope, receive, send)
            else:
                await fut
        finally:
            timer.cancel()

    __call__.releases_timer = True
    middleware.__call__ = __call__
    return True
