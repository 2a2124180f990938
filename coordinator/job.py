"""A job as the coordinator tracks it: its request, state, output so far, and the
stream of events its caller reads."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field

from google.protobuf.timestamp_pb2 import Timestamp

from ..v1 import common_pb2, inference_pb2

QUEUED = inference_pb2.JOB_STATE_QUEUED
LOADING = inference_pb2.JOB_STATE_LOADING
RUNNING = inference_pb2.JOB_STATE_RUNNING
SUCCEEDED = inference_pb2.JOB_STATE_SUCCEEDED
FAILED = inference_pb2.JOB_STATE_FAILED
CANCELLED = inference_pb2.JOB_STATE_CANCELLED
TERMINAL = (SUCCEEDED, FAILED, CANCELLED)


def state_name(state: int) -> str:
    """JOB_STATE_RUNNING -> "running"."""
    return inference_pb2.JobState.Name(state).removeprefix("JOB_STATE_").lower()


class JobError(Exception):
    """Why a job failed, with the gRPC status (a ``grpc.StatusCode`` name) its
    caller gets."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class End:
    """The last item of a job's event queue: the status its Generate call ends with."""

    code: str  # "OK" or a grpc.StatusCode name
    message: str = ""


def timestamp(t: float | None) -> Timestamp | None:
    if t is None:
        return None
    ts = Timestamp()
    ts.FromNanoseconds(int(t * 1e9))
    return ts


@dataclass(eq=False)
class Job:
    request: inference_pb2.GenerateRequest
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    state: int = QUEUED
    created: float = field(default_factory=time.time)
    finished_at: float | None = None
    placement_id: str = ""
    node_ids: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    result: common_pb2.Finished | None = None
    code: str = ""  # the final status, once done
    error: str = ""
    stop: End | None = None  # why it is being stopped from outside, if it is
    task: asyncio.Task | None = None
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL

    def emit(self, event: inference_pb2.GenerateEvent) -> None:
        self.events.put_nowait(event)

    def progress(self, stage: str, message: str) -> None:
        self.emit(inference_pb2.GenerateEvent(
            progress=inference_pb2.Progress(stage=stage, message=message)))

    def partial(self) -> common_pb2.Finished:
        """What it produced before it was cancelled."""
        return common_pb2.Finished(finish_reason="cancelled", text="".join(self.texts),
                                   token_ids=self.token_ids)

    def to_proto(self) -> inference_pb2.Job:
        return inference_pb2.Job(
            id=self.id, state=self.state, model=self.request.model,
            draft_model=self.request.draft_model, placement_id=self.placement_id,
            node_ids=self.node_ids, created=timestamp(self.created),
            finished_at=timestamp(self.finished_at), generated_tokens=len(self.token_ids),
            result=self.result, error=self.error)
