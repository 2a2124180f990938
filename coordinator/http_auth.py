"""The HTTP API's gate: a request brings one of the coordinator's API keys as
``Authorization: Bearer KEY`` (what OpenAI clients send as their ``api_key``), or
it is refused 401 before anything reads its body. ``/health`` stays open. The
handler finds who made a request let through in ``request.state.caller``."""

from __future__ import annotations

from collections.abc import Callable

from grpc import StatusCode
from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from ..auth.callers import ApiKeys, bearer_token
from ..status import StatusError

OPEN_PATHS = frozenset({"/health"})


class BearerAuth:
    """Starlette middleware: ``Middleware(BearerAuth, api_keys=..., refuse=...)``;
    ``refuse`` turns the reason into the response (OpenAI's error object)."""

    def __init__(self, app: ASGIApp, api_keys: ApiKeys,
                 refuse: Callable[[StatusError], Response]):
        self.app, self.api_keys, self.refuse = app, api_keys, refuse

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        token = bearer_token(Headers(scope=scope).get("authorization"))
        caller = self.api_keys.caller(token)
        if caller is None:
            why = "a wrong API key" if token else "no API key (Authorization: Bearer KEY)"
            response = self.refuse(StatusError(StatusCode.UNAUTHENTICATED, why))
            response.headers["www-authenticate"] = "Bearer"
            return await response(scope, receive, send)
        scope.setdefault("state", {})["caller"] = caller
        return await self.app(scope, receive, send)
