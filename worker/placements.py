"""The runner processes of a worker, one per placement held here, and their messages.

A reader task per runner routes what it says: load messages (progress, ready, or an
error before ready) to whoever waits on the load, job messages to the job with their
id. Jobs queue in the runner, which decodes them together or one at a time
(``runner.batch``); a job whose caller went away is sent a cancel and its remaining
messages are dropped. When a runner
exits, everything still waiting on it fails with UNAVAILABLE.

Each placement has a scratch directory (a group's hostfile) named after the worker's
pid; a worker killed before it could remove them leaves them behind, and the next
worker to start removes those of processes that are gone (``remove_dead_workers_dirs``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator
from enum import Enum, auto
from pathlib import Path

from grpc import StatusCode

from .. import frames
from ..status import StatusError
from .messages import (
    Cancel,
    Error,
    Finished,
    Job,
    LoadConfig,
    Progress,
    Ready,
    RunnerMessage,
    Tokens,
    WorkerMessage,
    from_frame,
    to_frame,
)

log = logging.getLogger(__name__)
EXIT_WAIT_S = 10.0
DIR_PREFIX = "exo-spec-placement-"  # then the worker's pid, a dash, tempfile's random part


class PlacementState(Enum):
    LOADING = auto()  # its runner reads the weights
    READY = auto()  # it serves jobs
    FAILED = auto()  # its runner is gone or going
    RELEASED = auto()  # the coordinator let it go: its runner is told to exit


class Placement:
    def __init__(self, placement_id: str, rank: int, hosts: list[str]):
        self.id = placement_id
        self.rank = rank
        self.hosts = hosts
        self.state = PlacementState.LOADING
        self.failure: StatusError | None = None  # once FAILED or RELEASED: what jobs are told
        self._last_error: StatusError | None = None  # the runner's: why it exits, if it does
        self._load: asyncio.Queue[Progress | Ready | Error] = asyncio.Queue()
        self._jobs: dict[str, asyncio.Queue[Tokens | Finished | Error]] = {}
        self._tmp = tempfile.TemporaryDirectory(prefix=f"{DIR_PREFIX}{os.getpid()}-")
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task | None = None

    def __str__(self) -> str:
        return f"placement {self.id} rank {self.rank}"

    def _enter(self, state: PlacementState, failure: StatusError | None = None) -> None:
        """The one place the state changes. RELEASED is final: what a runner says while
        it exits changes nothing."""
        if self.state is not PlacementState.RELEASED:
            self.state, self.failure = state, failure

    async def start(self, config: LoadConfig) -> None:
        env = dict(os.environ)
        if len(self.hosts) > 1:
            hostfile = Path(self._tmp.name) / "hosts.json"
            hostfile.write_text(json.dumps([[h] for h in self.hosts]))
            env.update(MLX_RANK=str(self.rank), MLX_HOSTFILE=str(hostfile))
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "exo_spec.worker.runner", config.to_json(),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env)
        # Held: the event loop keeps only a weak reference to a task.
        self._reader = asyncio.create_task(self._read(), name=f"messages of {self}")

    async def _read(self) -> None:
        try:
            while (frame := await frames.read_async(self._proc.stdout)) is not None:
                self._route(from_frame(frame))
        except frames.FrameError as e:
            log.error("%s: bad frame from the runner: %s", self, e)
            self._proc.kill()
        code = await self._proc.wait()
        self._tmp.cleanup()
        if self.state is not PlacementState.RELEASED:
            log.info("%s: runner exited with status %s", self, code)
            self._enter(PlacementState.FAILED, StatusError(
                StatusCode.UNAVAILABLE, self._last_error.message if self._last_error
                else f"the runner of {self} exited with status {code}"))
        gone = Error.of(self.failure)
        self._load.put_nowait(gone)
        for events in self._jobs.values():
            events.put_nowait(gone)

    def _route(self, message: RunnerMessage) -> None:
        match message:
            case Progress(text):
                log.info("%s: %s", self, text)
                self._load.put_nowait(message)
            case Ready():
                self._enter(PlacementState.READY)
                self._load.put_nowait(message)
            case Tokens(job_id) | Finished(job_id):
                self._to_job(job_id, message)
            case Error(code, text, job_id):
                log.info("%s: %s", self, text)
                self._last_error = message.status()
                if code == StatusCode.UNAVAILABLE:  # the runner's group is lost: it exits
                    self._enter(PlacementState.FAILED, self._last_error)
                if job_id is None:
                    self._load.put_nowait(message)
                else:
                    self._to_job(job_id, message)
            case _:
                raise frames.FrameError(f"a runner says no {type(message).__name__}")

    def _to_job(self, job_id: str, message: Tokens | Finished | Error) -> None:
        events = self._jobs.get(job_id)
        if events:  # else a cancelled job's last messages
            events.put_nowait(message)

    async def load_events(self) -> AsyncIterator[Progress | Ready]:
        """Progress until the runner holds its weights, ending with Ready."""
        while True:
            message = await self._load.get()
            if isinstance(message, Error):
                raise message.status()
            yield message
            if isinstance(message, Ready):
                return

    async def run(self, job: Job) -> AsyncIterator[Tokens | Finished]:
        """The job's Tokens, then its Finished. Closing this iterator before then
        cancels the job in the runner."""
        match self.state:
            case PlacementState.LOADING:
                raise StatusError(StatusCode.FAILED_PRECONDITION, f"{self} is still loading")
            case PlacementState.FAILED | PlacementState.RELEASED:
                raise StatusError(StatusCode.UNAVAILABLE,
                                  f"{self} failed: {self.failure.message}")
        if job.job_id in self._jobs:
            raise StatusError(StatusCode.ALREADY_EXISTS,
                              f"job {job.job_id} is already running on {self}")
        events: asyncio.Queue[Tokens | Finished | Error] = asyncio.Queue()
        self._jobs[job.job_id] = events
        done = False
        try:
            self._send(job)
            while not done:
                message = await events.get()
                done = isinstance(message, Finished | Error)
                if isinstance(message, Error):
                    raise message.status()
                yield message
        finally:
            del self._jobs[job.job_id]
            if not done:
                self._send(Cancel(job.job_id))
                log.info("%s: job %s cancelled", self, job.job_id)

    def _send(self, message: WorkerMessage) -> None:
        if self._proc.stdin.is_closing():
            return
        self._proc.stdin.write(frames.encode(to_frame(message)))

    async def release(self) -> None:
        """Stop the runner: closing its stdin ends it even inside a collective."""
        self._enter(PlacementState.RELEASED,
                    StatusError(StatusCode.UNAVAILABLE, f"{self} was released"))
        if self._proc is None or self._proc.returncode is not None:
            return
        self._proc.stdin.close()
        try:
            await asyncio.wait_for(self._proc.wait(), EXIT_WAIT_S)
        except TimeoutError:
            self._proc.kill()
            await self._proc.wait()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_dead_workers_dirs() -> list[Path]:
    """Remove the placement directories whose worker process is gone (killed before
    it could remove them); those of live processes stay. The ones removed."""
    removed = []
    for path in Path(tempfile.gettempdir()).glob(f"{DIR_PREFIX}*"):
        owner = re.fullmatch(rf"{DIR_PREFIX}(\d+)-.+", path.name)
        if owner and not _alive(int(owner[1])):
            shutil.rmtree(path, ignore_errors=True)
            if not path.exists():
                removed.append(path)
    return removed


class Placements:
    """The placements this worker holds, by id."""

    def __init__(self):
        self._by_id: dict[str, Placement] = {}

    def ids(self) -> list[str]:
        return list(self._by_id)

    def get(self, placement_id: str) -> Placement:
        if placement_id not in self._by_id:
            raise StatusError(StatusCode.NOT_FOUND, f"no placement {placement_id} on this node")
        return self._by_id[placement_id]

    async def start(self, placement_id: str, rank: int, hosts: list[str],
                    config: LoadConfig) -> Placement:
        if placement_id in self._by_id:
            raise StatusError(StatusCode.ALREADY_EXISTS,
                              f"placement {placement_id} is already here")
        placement = Placement(placement_id, rank, hosts)
        self._by_id[placement_id] = placement
        try:
            await placement.start(config)
        except BaseException:
            del self._by_id[placement_id]
            raise
        return placement

    async def release(self, placement_id: str) -> None:
        """Unknown ids are fine: releasing is idempotent."""
        placement = self._by_id.pop(placement_id, None)
        if placement:
            await placement.release()

    async def release_all(self) -> None:
        await asyncio.gather(*(self.release(p) for p in self.ids()))
