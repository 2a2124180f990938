"""Length-prefixed msgpack frames: how a worker and its runner processes talk over
the runner's stdin and stdout.

A frame is a 4-byte big-endian payload length, then one msgpack map (what the maps
say is ``exo_spec.worker.messages``). ``read`` serves blocking binary streams (the
runner's side), ``read_async`` an asyncio ``StreamReader`` (the worker's side); both
return None at a clean end of stream and raise ``FrameError`` when it ends inside a
frame.

Frames are bounded both ways: ``encode`` refuses one over ``MAX_FRAME``, and a reader
refuses a header announcing more before reading the payload. An error frame (type
"error") has a tighter bound, ``MAX_ERROR_FRAME``, and is never refused: its message
is cut to fit, keeping its start, since the error is what the other side must hear
(``StatusError`` clips what gRPC sends to less anyway).
"""

from __future__ import annotations

import asyncio
import struct
from typing import BinaryIO

import msgpack

HEADER = struct.Struct(">I")
MAX_FRAME = 64 << 20  # a job's prompt and result text fit many times over
MAX_ERROR_FRAME = 64 << 10
CUT = "..."


class FrameError(ValueError):
    """A frame that cannot be read: the stream ended inside it, it is too large to be
    one, or it holds no message."""


def encode(frame: dict) -> bytes:
    if frame.get("type") == "error" and isinstance(frame.get("message"), str):
        frame = _error_that_fits(frame)
    payload = msgpack.packb(frame, use_bin_type=True)
    if len(payload) > MAX_FRAME:
        raise FrameError(f"frame of {len(payload)} bytes exceeds {MAX_FRAME}")
    return HEADER.pack(len(payload)) + payload


def _error_that_fits(frame: dict) -> dict:
    """``frame`` with its message cut (ending with ``CUT``) so that the frame's payload
    takes at most ``MAX_ERROR_FRAME`` bytes."""
    message = frame["message"]
    over = len(msgpack.packb(frame, use_bin_type=True)) - MAX_ERROR_FRAME
    if over <= 0:
        return frame
    data = message.encode(errors="replace")
    kept = data[:max(len(data) - over - len(CUT) - 8, 0)]  # 8: room for a longer str header
    return {**frame, "message": kept.decode(errors="ignore") + CUT}


def decode(payload: bytes) -> dict:
    return msgpack.unpackb(payload, raw=False)


def write(stream: BinaryIO, frame: dict) -> None:
    stream.write(encode(frame))
    stream.flush()


def _length(header: bytes) -> int:
    (length,) = HEADER.unpack(header)
    if length > MAX_FRAME:
        raise FrameError(f"frame header announces {length} bytes (limit {MAX_FRAME})")
    return length


def _read_exactly(stream: BinaryIO, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = stream.read(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def read(stream: BinaryIO) -> dict | None:
    header = _read_exactly(stream, HEADER.size)
    if not header:
        return None
    if len(header) < HEADER.size:
        raise FrameError("stream ended inside a frame header")
    length = _length(header)
    payload = _read_exactly(stream, length)
    if len(payload) < length:
        raise FrameError(f"stream ended after {len(payload)} of {length} payload bytes")
    return decode(payload)


async def read_async(reader: asyncio.StreamReader) -> dict | None:
    try:
        header = await reader.readexactly(HEADER.size)
    except asyncio.IncompleteReadError as e:
        if not e.partial:
            return None
        raise FrameError("stream ended inside a frame header") from None
    length = _length(header)
    try:
        return decode(await reader.readexactly(length))
    except asyncio.IncompleteReadError as e:
        raise FrameError(
            f"stream ended after {len(e.partial)} of {length} payload bytes") from None
