"""The runner processes of a worker, one per placement held here, and their frames.

A reader task per runner routes its frames: load frames (progress, ready, or an
error before ready) to whoever waits on the load, job frames to the job with
their id. Jobs queue in the runner, which serves them one at a time; a job whose
caller went away is sent a cancel and its remaining frames are dropped. When a
runner exits, everything still waiting on it fails with UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from .. import frames
from .refusal import Refusal

log = logging.getLogger(__name__)
EXIT_WAIT_S = 10.0


class Placement:
    def __init__(self, placement_id: str, rank: int, hosts: list[str]):
        self.id = placement_id
        self.rank = rank
        self.hosts = hosts
        self.state = "loading"  # then "ready", or "failed"
        self.mode = ""
        self.error: Refusal | None = None
        self._load: asyncio.Queue[dict] = asyncio.Queue()
        self._jobs: dict[str, asyncio.Queue[dict]] = {}
        self._tmp = tempfile.TemporaryDirectory(prefix="exo-spec-placement-")
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task | None = None
        self._released = False

    def __str__(self) -> str:
        return f"placement {self.id} rank {self.rank}"

    async def start(self, spec: dict) -> None:
        env = dict(os.environ)
        if len(self.hosts) > 1:
            hostfile = Path(self._tmp.name) / "hosts.json"
            hostfile.write_text(json.dumps([[h] for h in self.hosts]))
            env.update(MLX_RANK=str(self.rank), MLX_HOSTFILE=str(hostfile))
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "exo_spec.worker.runner", json.dumps(spec),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env)
        self._reader = asyncio.create_task(self._read(), name=f"frames of {self}")

    async def _read(self) -> None:
        try:
            while (frame := await frames.read_async(self._proc.stdout)) is not None:
                self._route(frame)
        except frames.FrameError as e:
            log.error("%s: bad frame from the runner: %s", self, e)
            self._proc.kill()
        code = await self._proc.wait()
        self._tmp.cleanup()
        if self._released:
            self._fail(Refusal("UNAVAILABLE", f"{self} was released"))
            return
        log.info("%s: runner exited with status %s", self, code)
        self._fail(Refusal("UNAVAILABLE", self.error.message if self.error else
                           f"the runner of {self} exited with status {code}"))

    def _route(self, frame: dict) -> None:
        if frame["type"] == "error":
            self.error = Refusal(frame["code"], frame["message"])
            log.info("%s: %s", self, frame["message"])
            if frame["code"] == "UNAVAILABLE":  # the runner's group is lost: it is exiting
                self.state = "failed"
        if "job_id" in frame:
            events = self._jobs.get(frame["job_id"])
            if events:  # else a cancelled job's last frames
                events.put_nowait(frame)
            return
        if frame["type"] == "ready":
            self.state, self.mode = "ready", frame["mode"]
        elif frame["type"] == "progress":
            log.info("%s: %s", self, frame["message"])
        self._load.put_nowait(frame)

    def _fail(self, error: Refusal) -> None:
        self.state, self.error = "failed", error
        gone = {"type": "error", "code": error.code, "message": error.message}
        self._load.put_nowait(gone)
        for events in self._jobs.values():
            events.put_nowait(gone)

    async def load_events(self) -> AsyncIterator[dict]:
        """Progress frames until the runner holds its weights, ending with "ready"."""
        while True:
            frame = await self._load.get()
            if frame["type"] == "error":
                raise Refusal(frame["code"], frame["message"])
            yield frame
            if frame["type"] == "ready":
                return

    def usable(self) -> None:
        if self.state == "failed":
            raise Refusal("UNAVAILABLE", f"{self} failed: {self.error.message}")
        if self.state == "loading":
            raise Refusal("FAILED_PRECONDITION", f"{self} is still loading")

    async def run(self, job: dict) -> AsyncIterator[dict]:
        """The job's "tokens" frames, then its "finished" frame. Closing this
        iterator before then cancels the job in the runner."""
        self.usable()
        job_id = job["job_id"]
        if job_id in self._jobs:
            raise Refusal("ALREADY_EXISTS", f"job {job_id} is already running on {self}")
        events: asyncio.Queue[dict] = asyncio.Queue()
        self._jobs[job_id] = events
        done = False
        try:
            self._send(job)
            while not done:
                frame = await events.get()
                if frame["type"] == "error":
                    done = True
                    raise Refusal(frame["code"], frame["message"])
                done = frame["type"] == "finished"
                yield frame
        finally:
            del self._jobs[job_id]
            if not done:
                self._send({"type": "cancel", "job_id": job_id})
                log.info("%s: job %s cancelled", self, job_id)

    def _send(self, message: dict) -> None:
        if self._proc.stdin.is_closing():
            return
        self._proc.stdin.write(frames.encode(message))

    async def release(self) -> None:
        """Stop the runner: closing its stdin ends it even inside a collective."""
        self._released = True
        if self._proc is None or self._proc.returncode is not None:
            return
        self._proc.stdin.close()
        try:
            await asyncio.wait_for(self._proc.wait(), EXIT_WAIT_S)
        except TimeoutError:
            self._proc.kill()
            await self._proc.wait()


class Placements:
    """The placements this worker holds, by id."""

    def __init__(self):
        self._by_id: dict[str, Placement] = {}

    def ids(self) -> list[str]:
        return list(self._by_id)

    def get(self, placement_id: str) -> Placement:
        if placement_id not in self._by_id:
            raise Refusal("NOT_FOUND", f"no placement {placement_id} on this node")
        return self._by_id[placement_id]

    async def start(self, placement_id: str, rank: int, hosts: list[str],
                    spec: dict) -> Placement:
        if placement_id in self._by_id:
            raise Refusal("ALREADY_EXISTS", f"placement {placement_id} is already here")
        placement = Placement(placement_id, rank, hosts)
        self._by_id[placement_id] = placement
        try:
            await placement.start(spec)
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
