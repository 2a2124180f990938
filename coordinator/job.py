"""A job as the coordinator tracks it: what it asks for, its state, its output so
far, and the stream of events its caller reads."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field

from google.protobuf.timestamp_pb2 import Timestamp

from ..spec_mode import SpecMode
from ..status import StatusError
from ..v1 import common_pb2, inference_pb2
from .states import JobState


@dataclass(frozen=True)
class JobRequest:
    """A ``GenerateRequest`` as the coordinator reads it, once the API checked it."""

    model: str
    draft_model: str  # "" lets the worker choose
    spec: SpecMode
    nodes: int  # 0 lets the coordinator choose
    decode: common_pb2.Decode  # what rank 0's worker runs, as the caller sent it
    owner: str  # the Caller.id of who submitted it: only the admin and it see the job


@dataclass(frozen=True)
class End:
    """The last item of a job's event queue: the status its Generate call ends with."""

    error: StatusError | None  # None: OK


def timestamp(t: float | None) -> Timestamp | None:
    if t is None:
        return None
    ts = Timestamp()
    ts.FromNanoseconds(int(t * 1e9))
    return ts


@dataclass(eq=False)
class Job:
    request: JobRequest
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    state: JobState = JobState.QUEUED
    created: float = field(default_factory=time.time)
    finished_at: float | None = None
    placement_id: str = ""
    node_ids: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    result: common_pb2.Finished | None = None
    error: str = ""
    stopping: StatusError | None = None  # why it is being stopped from outside, if it is
    interrupted: StatusError | None = None  # why its placement went away under it, if it did
    task: asyncio.Task | None = None  # the scheduler's, which alone changes ``state``
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def finished(self) -> bool:
        return self.state.finished

    def stop(self, why: StatusError) -> None:
        """End the job from outside: its task ends it CANCELLED (with its partial
        output) for CANCELLED and DEADLINE_EXCEEDED, FAILED for anything else."""
        if self.finished or self.stopping is not None:
            return
        self.stopping = why
        if self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()

    def interrupt(self, why: StatusError) -> None:
        """Its placement went away while it ran: its task places it again and resumes
        after the tokens it emitted (``Scheduler``), unless it is being stopped."""
        if self.finished or self.stopping is not None:
            return
        self.interrupted = why
        if self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()

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
            id=self.id, state=self.state.to_proto(), model=self.request.model,
            draft_model=self.request.draft_model, placement_id=self.placement_id,
            node_ids=self.node_ids, created=timestamp(self.created),
            finished_at=timestamp(self.finished_at), generated_tokens=len(self.token_ids),
            result=self.result, error=self.error, owner=self.request.owner)
