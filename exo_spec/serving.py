"""What the coordinator and worker servers share: how an address is written, how a
server waits to be told to stop, and how a request that does not parse is refused."""

from __future__ import annotations

import asyncio
import signal
from inspect import isasyncgenfunction

import grpc
from google.protobuf.message import DecodeError


def address(host: str, port: int) -> str:
    """The dialable "host:port" (IPv6 hosts in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def until_stopped() -> None:
    """Return on SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


class ParsedRequests(grpc.aio.ServerInterceptor):
    """A request that does not parse (protobuf refuses a string field that is not valid
    UTF-8, say) is INVALID_ARGUMENT, in one line, rather than gRPC's UNKNOWN with a
    traceback in the server's log: the handlers of single-request methods take the raw
    bytes and parse them here first. Both servers install it (``grpc.aio.server(
    interceptors=[ParsedRequests()])``)."""

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or handler.request_streaming or handler.request_deserializer is None:
            return handler
        parse, method = handler.request_deserializer, details.method

        async def request(raw: bytes, context):
            try:
                return parse(raw)
            except DecodeError as e:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                    f"{method}: the request does not parse: {e}")

        if not handler.response_streaming:
            unary = handler.unary_unary

            async def one(raw, context):
                return await unary(await request(raw, context), context)

            return grpc.unary_unary_rpc_method_handler(
                one, response_serializer=handler.response_serializer)
        stream = handler.unary_stream
        if isasyncgenfunction(stream):
            async def events(raw, context):
                async for event in stream(await request(raw, context), context):
                    yield event
        else:  # a coroutine that writes its responses (grpc-health's Watch)
            async def events(raw, context):
                return await stream(await request(raw, context), context)
        return grpc.unary_stream_rpc_method_handler(
            events, response_serializer=handler.response_serializer)
