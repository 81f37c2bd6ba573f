"""The reverse proxy on the stable port: every request goes to the supervisor's active
backend, or for inference calls to the canary when one takes that caller's share (and a
copy to the shadow when one runs); the answer streams back as the backend produces it."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from driftloop.serving.shadow import REQUEST_ID_HEADER, new_request_id, request_id_from

if TYPE_CHECKING:
    import aiohttp
    from aiohttp import web

    from driftloop.serving.supervisor.backend import Backend
    from driftloop.serving.supervisor.daemon import Supervisor

log = logging.getLogger(__name__)

# RFC 9110 section 7.6.1: meaningful for one connection only, never forwarded.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
    "te", "trailer", "trailers", "transfer-encoding", "upgrade",
})
# Shorter than uvicorn's default 5 s keep-alive (BentoML serves with uvicorn), so the proxy
# always drops an idle pooled connection before the backend does. Otherwise a request can be
# written onto a connection the backend is closing; aiohttp retries that only for idempotent
# methods, and inference calls are POSTs.
UPSTREAM_KEEPALIVE_S = 2.0
UNREACHED_HEADER = "X-Driftloop-Unreachable"


def upstream_session() -> aiohttp.ClientSession:
    import aiohttp

    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=1024, keepalive_timeout=UPSTREAM_KEEPALIVE_S),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
        # Relay bytes as the backend sent them; compression and content type are the backend's business.
        auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        # The session is shared by all clients: a cookie jar would hand one user's cookies to the next.
        cookie_jar=aiohttp.DummyCookieJar(),
    )


def _named_by_connection(headers: Any) -> set[str]:
    return {token.strip().lower() for value in headers.getall("Connection", ()) for token in value.split(",")}


def upstream_headers(request: web.Request) -> Any:
    from multidict import CIMultiDict

    named_by_connection = _named_by_connection(request.headers)
    headers: CIMultiDict[str] = CIMultiDict()
    for key, value in request.headers.items():
        lowered = key.lower()
        # The body is already read in full: aiohttp sets its length, and a 100-continue
        # handshake with the backend would only add a round trip.
        if lowered in HOP_BY_HOP or lowered in named_by_connection or lowered in {"content-length", "expect"}:
            continue
        headers.add(key, value)
    if request.remote:
        earlier = ", ".join(request.headers.getall("X-Forwarded-For", ()))
        headers["X-Forwarded-For"] = f"{earlier}, {request.remote}" if earlier else request.remote
    headers.setdefault("X-Forwarded-Proto", request.scheme)
    if "Host" in request.headers:
        headers.setdefault("X-Forwarded-Host", request.headers["Host"])
    return headers


def proxy_app(supervisor: Supervisor) -> web.Application:
    from aiohttp import web

    async def relay(request: web.Request) -> web.StreamResponse:
        if supervisor.closing:
            return web.json_response({"error": "the supervisor is shutting down"}, status=503)
        body = await request.read()
        # Picking the backend and counting the request happen in one step of the event loop,
        # so a deploy can never stop a backend between the two.
        backend = supervisor.active
        if backend is None:
            return web.json_response({"error": "no model is deployed"}, status=503)
        headers = upstream_headers(request)
        if supervisor.shadow.wants(request.method, request.path):
            # One id for both answers, so the request log pairs them.
            if request_id_from(headers) is None:
                headers[REQUEST_ID_HEADER] = new_request_id()
            supervisor.shadow.submit(supervisor.session, request.raw_path, headers.copy(), body)
        canary = supervisor.canary
        side = None
        if canary is not None and canary.wants(request.method, request.path):
            side = "canary" if canary.takes(request.headers, request.remote) else "baseline"
            if side == "canary":
                backend = canary.backend
        backend.acquire()
        try:
            response = await forward(supervisor.session, request, backend, body, headers)
        finally:
            backend.release()
        if side is not None:
            canary.count(side, response.status)
            if side == "canary" and unreached(response) and supervisor.active is not None:
                # Nothing reached the client yet: the serving version answers instead, and
                # the canary's failure stays counted against it.
                fallback = supervisor.active
                fallback.acquire()
                try:
                    return await forward(supervisor.session, request, fallback, body, headers)
                finally:
                    fallback.release()
        return response

    app = web.Application(client_max_size=256 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", relay)
    return app


def unreached(response: web.StreamResponse) -> bool:
    """An answer the proxy made up because the backend could not be reached (nothing sent yet)."""
    return response.status == 502 and not response.prepared and UNREACHED_HEADER in response.headers


async def forward(session: aiohttp.ClientSession, request: web.Request, backend: Backend, body: bytes,
                  headers: Any) -> web.StreamResponse:
    import aiohttp
    from aiohttp import web
    from yarl import URL

    target = URL(f"http://127.0.0.1:{backend.port}{request.raw_path}", encoded=True)
    try:
        upstream = await session.request(request.method, target, headers=headers, data=body or None, allow_redirects=False)
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        detail = str(exc) or type(exc).__name__
        log.warning("backend %s (127.0.0.1:%d) unreachable: %s", backend.name, backend.port, detail)
        error = f"backend {backend.name} at 127.0.0.1:{backend.port} cannot be reached: {detail}"
        return web.json_response({"error": error, "backend": backend.name}, status=502, headers={UNREACHED_HEADER: backend.name})
    response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
    named_by_connection = _named_by_connection(upstream.headers)
    for key, value in upstream.headers.items():
        if key.lower() not in HOP_BY_HOP and key.lower() not in named_by_connection:
            response.headers.add(key, value)
    downstream_failed = False
    try:
        await response.prepare(request)
        # iter_any hands over whatever has arrived, so server-sent events are relayed as
        # they are produced instead of in fixed-size blocks.
        async for chunk in upstream.content.iter_any():
            try:
                await response.write(chunk)
            except (ConnectionError, aiohttp.ClientError):
                downstream_failed = True
                raise
        await response.write_eof()
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        if downstream_failed:
            # A client that stops reading (a closed chat window) is routine, not a fault.
            log.debug("client left while %s was answering %s", backend.name, request.path)
        else:
            log.warning("relay from %s aborted mid-body: %s", backend.name, str(exc) or type(exc).__name__)
        # Closing the backend connection tells it to stop generating for nobody; closing the
        # client's tells it the body is incomplete (a clean end would pass it off as whole).
        upstream.close()
        if request.transport is not None:
            request.transport.close()
    finally:
        upstream.release()
    return response
