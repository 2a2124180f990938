"""The one error every part of exo-spec raises for a request it cannot serve: a gRPC
status code and a sentence a person understands.

The coordinator, the worker, the runner and the client all raise and catch
``StatusError``; runner frames carry the code by name (``code.name``), and gRPC
servers end a call with it (``abort``).
"""

from __future__ import annotations

import grpc


class StatusError(Exception):
    def __init__(self, code: grpc.StatusCode | str, message: str):
        """``code``: a ``grpc.StatusCode``, or its name (as frames carry it)."""
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
