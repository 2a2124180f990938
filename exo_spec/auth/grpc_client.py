"""Channels whose every call carries proof of its caller: a fresh cluster key
signature (``signature.sign``) or an API key (``authorization: Bearer KEY``), added
to the metadata by a client interceptor. (gRPC's call credentials would do the same
but are sent only over TLS channels; these channels are plain TCP.)"""

from __future__ import annotations

import collections
from collections.abc import Sequence

import grpc

from .key_file import ClusterKey
from .signature import METADATA, sign

Credential = ClusterKey | str  # the cluster key, or an API key


def _metadata(credential: Credential, method: str | bytes) -> tuple[str, str]:
    if isinstance(credential, str):
        return ("authorization", f"Bearer {credential}")
    name = method.decode() if isinstance(method, bytes) else method
    return (METADATA, sign(credential, name))


class _Details(collections.namedtuple(
        "_Details", ("method", "timeout", "metadata", "credentials", "wait_for_ready",
                     "compression")), grpc.ClientCallDetails):
    pass


class _Signing(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
               grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    def __init__(self, credential: Credential):
        self.credential = credential

    def _details(self, d) -> _Details:
        metadata = [*(d.metadata or ()), _metadata(self.credential, d.method)]
        return _Details(d.method, d.timeout, metadata, d.credentials,
                        getattr(d, "wait_for_ready", None), getattr(d, "compression", None))

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._details(details), request)

    intercept_unary_stream = intercept_unary_unary
    intercept_stream_unary = intercept_unary_unary
    intercept_stream_stream = intercept_unary_unary


class _AioSigning:
    def __init__(self, credential: Credential):
        self.credential = credential

    async def _continue(self, continuation, d, request):
        metadata = grpc.aio.Metadata(*(d.metadata or ()), _metadata(self.credential, d.method))
        return await continuation(d._replace(metadata=metadata), request)


# An asyncio channel takes each interceptor for one kind of call only (its first base).
class _AioUnaryUnary(_AioSigning, grpc.aio.UnaryUnaryClientInterceptor):
    intercept_unary_unary = _AioSigning._continue


class _AioUnaryStream(_AioSigning, grpc.aio.UnaryStreamClientInterceptor):
    intercept_unary_stream = _AioSigning._continue


class _AioStreamUnary(_AioSigning, grpc.aio.StreamUnaryClientInterceptor):
    intercept_stream_unary = _AioSigning._continue


class _AioStreamStream(_AioSigning, grpc.aio.StreamStreamClientInterceptor):
    intercept_stream_stream = _AioSigning._continue


def channel(target: str, credential: Credential,
            options: Sequence[tuple[str, object]] = ()) -> grpc.Channel:
    """A blocking channel to ``target`` whose calls carry ``credential``."""
    return grpc.intercept_channel(grpc.insecure_channel(target, options=list(options)),
                                  _Signing(credential))


def aio_channel(target: str, credential: Credential,
                options: Sequence[tuple[str, object]] = ()) -> grpc.aio.Channel:
    """An asyncio channel to ``target`` whose calls carry ``credential``."""
    return grpc.aio.insecure_channel(target, options=list(options), interceptors=[
        kind(credential) for kind in (_AioUnaryUnary, _AioUnaryStream, _AioStreamUnary,
                                      _AioStreamStream)])
