"""The lifecycle states of what the coordinator tracks: jobs, placements and nodes.

Each is a ``StrEnum`` named as the coordinator logs it ("running"), used as is
everywhere in the coordinator; ``to_proto`` and ``from_proto`` convert it where
the API writes or reads one. Each class is named after its ``inference_pb2`` enum,
whose values are its member names behind the prefix of the enum's zero value
(``JOB_STATE_UNSPECIFIED``: ``JobState.RUNNING`` is ``JOB_STATE_RUNNING``).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Self

from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper

from ..v1 import inference_pb2


class _ProtoState(StrEnum):
    @classmethod
    def _proto(cls) -> tuple[EnumTypeWrapper, str]:
        """The proto enum, and the prefix of its values' names."""
        proto = getattr(inference_pb2, cls.__name__)
        return proto, proto.Name(0).removesuffix("UNSPECIFIED")

    def to_proto(self) -> int:
        proto, prefix = self._proto()
        return proto.Value(prefix + self.name)

    @classmethod
    def from_proto(cls, value: int) -> Self:
        """ValueError for a value the proto does not define, or its zero value."""
        proto, prefix = cls._proto()
        name = proto.Name(value).removeprefix(prefix) if value in proto.values() else ""
        if name not in cls.__members__:
            raise ValueError(f"unknown {cls.__name__} {value}")
        return cls[name]


class JobState(_ProtoState):
    QUEUED = "queued"  # waiting for a placement, or for its placement to be free
    LOADING = "loading"  # its placement is loading
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


class PlacementState(_ProtoState):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"  # failed to load, or dropped: it serves nothing any more


class NodeState(_ProtoState):
    PENDING = "pending"  # never answered a heartbeat: the API lists no such node
    READY = "ready"
    LOST = "lost"  # missed its heartbeats; READY again once it answers
