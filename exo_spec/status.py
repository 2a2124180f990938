"""The one error every part of exo-spec raises for a request it cannot serve: a gRPC
status code and a sentence a person understands.

The coordinator, the worker, the runner and the client all raise and catch
``StatusError``; runner frames carry the code by name (``code.name``), and gRPC
servers end a call with it (``abort``).
"""

from __future__ import annotations

import grpc

# gRPC sends a status's message in a trailer, percent-encoding every byte but printable
# ASCII, and a client drops trailers past 8 KiB: then it sees no status at all. So a
# message is cut to this many bytes as sent (a request field echoed back may be long).
MAX_MESSAGE_BYTES = 4096


def clipped(message: str) -> str:
    """``message``, cut (ending with "...") to ``MAX_MESSAGE_BYTES`` as gRPC sends it."""
    sent = 0
    for i, c in enumerate(message):
        sent += 1 if " " <= c <= "~" and c != "%" else 3 * len(c.encode(errors="replace"))
        if sent > MAX_MESSAGE_BYTES - 3:
            return message[:i] + "..."
    return message


class StatusError(Exception):
    def __init__(self, code: grpc.StatusCode | str, message: str):
        """``code``: a ``grpc.StatusCode``, or its name (as frames carry it);
        ``message`` is ``clipped``."""
        message = clipped(message)
        super().__init__(message)
        self.code = code if isinstance(code, grpc.StatusCode) else grpc.StatusCode[code]
        self.message = message

    def line(self) -> str:
        """``CODE: message``, as the CLI prints it."""
        return f"{self.code.name}: {self.message}"

    @classmethod
    def from_rpc(cls, e: grpc.RpcError) -> StatusError:
        """The status a gRPC call (sync or asyncio) ended with."""
        details = (e.details() or "").splitlines()
        return cls(e.code(), details[0] if details else e.code().name)
