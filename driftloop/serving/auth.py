"""The service's door: API keys checked before any route, errors in OpenAI's shape."""

from __future__ import annotations

import hmac

from starlette.responses import JSONResponse

OPEN_PATHS = ("/livez", "/readyz", "/healthz", "/metrics")


def openai_error(status: int, message: str, kind: str = "invalid_request_error", code: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "code": code, "param": None}}, status_code=status)


class ApiKeyMiddleware:
    """401 without the configured key (Authorization: Bearer, or X-API-Key); health and
    metrics stay open so probes and scrapers need no secret."""

    def __init__(self, app, api_key: str = "") -> None:
        self.app, self.api_key = app, api_key

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not self.api_key or scope.get("path", "").startswith(OPEN_PATHS):
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        offered = headers.get("x-api-key") or headers.get("authorization", "").removeprefix("Bearer ").strip()
        if offered and hmac.compare_digest(offered.encode(), self.api_key.encode()):
            return await self.app(scope, receive, send)
        response = openai_error(401, "a valid API key is required (Authorization: Bearer <key>)", "authentication_error", "invalid_api_key")
        return await response(scope, receive, send)
