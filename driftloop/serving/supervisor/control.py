"""The supervisor's control API (loopback only): POST /deploy, GET /status, POST /shutdown,
POST and DELETE /shadow, POST /canary, POST /canary/promote and DELETE /canary (the
rollback). Each route turns one HTTP call into one Supervisor call."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from driftloop.serving.canary import ROUTE_FIELDS, CanaryRoute
from driftloop.serving.supervisor.spec import BadRequest, DeploySpec

if TYPE_CHECKING:
    from aiohttp import web

    from driftloop.serving.supervisor.daemon import Supervisor


async def _spec(request: web.Request) -> DeploySpec | web.Response:
    """The request's deploy spec, or the 400 answer that says what is wrong with it."""
    from aiohttp import web

    try:
        return DeploySpec.parse(await request.json())
    except ValueError as exc:
        return web.json_response({"error": str(exc) if isinstance(exc, BadRequest) else f"invalid JSON: {exc}"}, status=400)


def control_app(supervisor: Supervisor) -> web.Application:
    from aiohttp import web

    async def deploy(request: web.Request) -> web.Response:
        spec = await _spec(request)
        if isinstance(spec, web.Response):
            return spec
        task = supervisor.start_deploy(spec)
        try:
            # Shielded: a control client that disconnects must not abort a switch half-way.
            status, body = await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.cancelled():
                raise
            status, body = 503, {"error": f"{spec.name} was not deployed: the supervisor is shutting down"}
        return web.json_response(body, status=status)

    async def status(request: web.Request) -> web.Response:
        return web.json_response(supervisor.status())

    async def shutdown(request: web.Request) -> web.Response:
        return web.json_response({"action": "shutdown", "stopped": await supervisor.shutdown()})

    async def shadow(request: web.Request) -> web.Response:
        spec = await _spec(request)
        if isinstance(spec, web.Response):
            return spec
        status, body = await asyncio.shield(supervisor.set_shadow(spec))
        return web.json_response(body, status=status)

    async def stop_shadow(request: web.Request) -> web.Response:
        status, body = await asyncio.shield(supervisor.stop_shadow())
        return web.json_response(body, status=status)

    async def canary(request: web.Request) -> web.Response:
        try:
            body = await request.json()
            route = CanaryRoute.parse_route(body) if isinstance(body, dict) else None
        except ValueError as exc:
            return web.json_response({"error": f"invalid canary request: {exc}"}, status=400)
        if route is None:
            return web.json_response({"error": "the canary body must be a JSON object"}, status=400)
        try:
            spec = DeploySpec.parse({k: v for k, v in body.items() if k not in ROUTE_FIELDS})
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        status, answer = await asyncio.shield(supervisor.set_canary(spec, route))
        return web.json_response(answer, status=status)

    async def end_canary(request: web.Request) -> web.Response:
        promote = request.method == "POST"
        status, answer = await asyncio.shield(supervisor.end_canary(promote, request.query.get("name")))
        return web.json_response(answer, status=status)

    app = web.Application()
    app.router.add_post("/deploy", deploy)
    app.router.add_get("/status", status)
    app.router.add_post("/shutdown", shutdown)
    app.router.add_post("/shadow", shadow)
    app.router.add_delete("/shadow", stop_shadow)
    app.router.add_post("/canary", canary)
    app.router.add_post("/canary/promote", end_canary)
    app.router.add_delete("/canary", end_canary)
    return app
