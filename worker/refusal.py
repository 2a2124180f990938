"""A request a worker or runner refuses, with the gRPC status code it maps to."""

from __future__ import annotations


class Refusal(Exception):
    def __init__(self, code: str, message: str):
        """``code``: a ``grpc.StatusCode`` name, e.g. "NOT_FOUND" (frames carry names)."""
        super().__init__(message)
        self.code = code
        self.message = message
