"""The gRPC servers' gate: every call proves the cluster key (``signature``) or, where
the server takes them, an API key (``authorization: Bearer KEY``, the coordinator's
Inference service); any other call ends UNAUTHENTICATED before its handler runs or
its request is parsed. The standard health service stays open: it says only whether
the server serves. Server reflection is behind the gate like any service.

The handler of a call let through reads who made it with ``caller()``.
"""

from __future__ import annotations

import contextvars

import grpc
from grpc_health.v1 import health_pb2

from .callers import ADMIN, ApiKeys, Caller, bearer_token
from .key_file import ClusterKey
from .signature import METADATA, Verifier

OPEN = ("/" + health_pb2.DESCRIPTOR.services_by_name["Health"].full_name + "/",)

_caller: contextvars.ContextVar[Caller] = contextvars.ContextVar("exo_spec_caller")


def caller() -> Caller:
    """Who made the call being handled (the interceptor let it through)."""
    return _caller.get()


class Authenticated(grpc.aio.ServerInterceptor):
    """``grpc.aio.server(interceptors=[Authenticated(key), ...])``, first, so nothing
    else sees a call it refuses. ``api_keys``: those the server also takes (none on a
    worker: only the cluster key's holders drive it)."""

    def __init__(self, key: ClusterKey, api_keys: ApiKeys | None = None):
        self.verifier = Verifier(key)
        self.api_keys = api_keys or ApiKeys()

    async def intercept_service(self, continuation, details):
        method = details.method
        if method.startswith(OPEN):
            return await continuation(details)
        metadata = {k: v for k, v in details.invocation_metadata or () if isinstance(v, str)}
        token = bearer_token(metadata.get("authorization"))
        if token and (who := self.api_keys.caller(token)) is not None:
            _caller.set(who)
            return await continuation(details)
        why = self.verifier.check(method, metadata.get(METADATA))
        if why is None:
            _caller.set(ADMIN)
            return await continuation(details)
        if token:
            why = "an API key this server does not take"
        return _refusal(f"{method}: {why}")


def _refusal(message: str) -> grpc.RpcMethodHandler:
    """A handler that ends any call, of any kind, UNAUTHENTICATED at once: the request
    is never read, so the caller's kind of call does not matter."""

    async def refuse(requests, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield  # an async generator, as a streaming handler is

    return grpc.stream_stream_rpc_method_handler(refuse)
