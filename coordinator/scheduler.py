"""Jobs onto placements: dispatch, streaming, cancellation, failure.

A job runs as one task:

1. ask the placer for a placement (a warm one is reused, else one is planned and
   loaded: see ``placer``);
2. wait for the placement to load, then for it to be free (one job at a time);
3. ``RunJob`` on rank 0's worker, streaming token chunks and the result to the
   job's caller.

Cancelling a job (``CancelJob``, or its caller leaving) cancels its task, which
cancels the worker's ``RunJob``; the job ends CANCELLED with what it produced so
far. A placement that is dropped (its node was lost, say) stops the job running on
it with UNAVAILABLE. A job whose placement fails before it produced a token is
placed again (at most ``ATTEMPTS`` times): nothing accepted is lost while the
cluster can serve it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque

import grpc

from ..v1 import inference_pb2, worker_pb2
from . import job as jobs
from . import placement_record as placements
from .job import End, Job, JobError
from .placement_lifecycle import Placer
from .placement_record import Placement
from .registry import READY, Registry

log = logging.getLogger(__name__)

ATTEMPTS = 3
CANCEL_WAIT_S = 10.0
PROBE_TIMEOUT_S = 1.0  # after a job failed: which of its nodes still answers
HISTORY = 1000  # finished jobs kept for GetJob and ListJobs


class _Replace(Exception):
    """The placement went away before the job produced anything: place it again."""


class Scheduler:
    def __init__(self, registry: Registry, *, history: int = HISTORY):
        self.registry = registry
        self.history = history
        self.jobs: dict[str, Job] = {}
        self.placer = Placer(registry, self.stop)
        self._finished: deque[str] = deque()

    # -- jobs ------------------------------------------------------------------------

    def submit(self, request: inference_pb2.GenerateRequest) -> Job:
        job = Job(request)
        self.jobs[job.id] = job
        log.info("job %s queued: %s (nodes %s)", job.id, request.model,
                 request.nodes or "auto")
        job.task = asyncio.create_task(self._run(job), name=f"job {job.id}")
        return job

    def stop(self, job: Job, code: str, message: str) -> None:
        """End ``job`` from outside: CANCELLED (with its partial output) for
        CANCELLED and DEADLINE_EXCEEDED, FAILED for anything else."""
        if job.finished or job.stop is not None:
            return
        job.stop = End(code, message)
        if job.task is not None and job.task is not asyncio.current_task():
            job.task.cancel()

    async def cancel(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None:
            raise JobError("NOT_FOUND", f"no job {job_id}")
        self.stop(job, "CANCELLED", "cancelled by CancelJob")
        try:
            await asyncio.wait_for(job.done.wait(), CANCEL_WAIT_S)
        except TimeoutError:
            pass
        return job

    async def _run(self, job: Job) -> None:
        try:
            for attempt in range(1, ATTEMPTS + 1):
                p = await self.placer.placement_for(job)
                try:
                    await self._run_on(job, p)
                    break
                except _Replace as e:
                    if attempt == ATTEMPTS:
                        raise JobError("UNAVAILABLE", str(e)) from None
                    log.info("job %s: %s; placing it again", job.id, e)
                    job.progress("queued", f"{e}; placing the job again")
                    self._state(job, jobs.QUEUED)
            self._end(job, jobs.SUCCEEDED, "OK", "", job.result)
        except JobError as e:
            self._end(job, jobs.FAILED, e.code, e.message)
        except asyncio.CancelledError:
            stop = job.stop or End("CANCELLED", "cancelled")
            if stop.code in ("CANCELLED", "DEADLINE_EXCEEDED"):
                self._end(job, jobs.CANCELLED, stop.code, stop.message, job.partial())
            else:
                self._end(job, jobs.FAILED, stop.code, stop.message)
        except Exception as e:  # a bug: say so rather than hang the caller
            log.exception("job %s", job.id)
            self._end(job, jobs.FAILED, "INTERNAL", f"{type(e).__name__}: {e}")

    def _state(self, job: Job, state: int, detail: str = "") -> None:
        if job.state != state:
            job.state = state
            log.info("job %s %s%s", job.id, jobs.state_name(state), detail)

    def _end(self, job: Job, state: int, code: str, message: str,
             result=None) -> None:
        if job.finished:
            return
        job.code, job.error, job.finished_at = code, "" if code == "OK" else message, time.time()
        if result is not None:
            job.result = result
            job.emit(inference_pb2.GenerateEvent(finished=result))
        if state == jobs.SUCCEEDED:
            detail = f": {len(job.token_ids)} tokens, {result.finish_reason}"
        else:
            detail = f": {code}: {message}"
        self._state(job, state, detail)
        job.events.put_nowait(End(code, message))
        job.done.set()
        self._finished.append(job.id)
        while len(self._finished) > self.history:
            self.jobs.pop(self._finished.popleft(), None)

    # -- running a job on a placement --------------------------------------------------

    async def _run_on(self, job: Job, p: Placement) -> None:
        if p.state == placements.LOADING:
            self._state(job, jobs.LOADING, f": {p} on {', '.join(p.node_ids)}")
            job.progress("loading", f"loading {p.model} on {', '.join(p.node_ids)} ({p.id})")
            p.waiting.add(job)
            try:
                await asyncio.shield(p.loaded)
            except JobError as e:
                if e.code == "UNAVAILABLE":
                    raise _Replace(e.message) from None
                raise
            finally:
                p.waiting.discard(job)
        if p.lock.locked() and p.active is not None:
            self._state(job, jobs.QUEUED, f": waiting for job {p.active.id} on {p}")
            job.progress("queued", f"waiting for job {p.active.id} on {p.id}")
        async with p.lock:
            if p.state != placements.READY:
                raise _Replace(p.error or f"{p} is gone")
            p.active = job
            try:
                await self._decode(job, p)
            finally:
                p.active = None
                p.jobs_served += 1
                p.last_used = time.monotonic()

    async def _decode(self, job: Job, p: Placement) -> None:
        leader = self.registry.get(p.node_ids[0])
        if leader is None or leader.state != READY:
            raise _Replace(f"node {p.node_ids[0]} of {p} is not ready")
        job.placement_id, job.node_ids = p.id, list(p.node_ids)
        self._state(job, jobs.RUNNING, f" on {', '.join(p.node_ids)} ({p.id}, {p.mode})")
        job.progress("running", f"running on {', '.join(p.node_ids)} ({p.id}, {p.mode})")
        call = leader.stub.RunJob(worker_pb2.RunJobRequest(
            placement_id=p.id, job_id=job.id, decode=job.request.decode))
        try:
            async for event in call:
                if event.HasField("tokens"):
                    job.token_ids.extend(event.tokens.token_ids)
                    job.texts.append(event.tokens.text)
                    job.emit(inference_pb2.GenerateEvent(tokens=event.tokens))
                elif event.HasField("finished"):
                    job.result = event.finished
        except grpc.aio.AioRpcError as e:
            code, details = e.code().name, e.details() or e.code().name
            if code in ("INVALID_ARGUMENT", "FAILED_PRECONDITION", "RESOURCE_EXHAUSTED"):
                raise JobError(code, details) from None  # the job's fault: the placement is fine
            reason = f"{p} on {', '.join(p.node_ids)} failed: {details}"
            gone = await self._unreachable(p.node_ids)
            if gone:
                reason += f" (node{'s' * (len(gone) > 1)} {', '.join(gone)} not answering)"
            self.placer.drop(p, "UNAVAILABLE", reason)
            if not job.token_ids:
                raise _Replace(reason) from None
            raise JobError("UNAVAILABLE", reason) from None
        finally:
            call.cancel()
        if job.result is None:
            reason = f"{p}: the worker ended the job without a result"
            self.placer.drop(p, "UNAVAILABLE", reason)
            raise JobError("UNAVAILABLE", reason)

    async def _unreachable(self, node_ids: list[str]) -> list[str]:
        """Which of these nodes do not answer a heartbeat now (or are known LOST)."""
        async def gone(node_id: str) -> bool:
            node = self.registry.get(node_id)
            if node is None or node.state != READY:
                return True
            try:
                await node.stub.GetInfo(worker_pb2.GetInfoRequest(), timeout=PROBE_TIMEOUT_S)
            except grpc.aio.AioRpcError:
                node.wake.set()  # and let its heartbeat find out for the registry
                return True
            return False

        answers = await asyncio.gather(*(gone(n) for n in node_ids))
        return [n for n, g in zip(node_ids, answers, strict=True) if g]

    # -- shutdown --------------------------------------------------------------------

    async def close(self) -> None:
        for job in list(self.jobs.values()):
            self.stop(job, "UNAVAILABLE", "the coordinator is shutting down")
        tasks = [j.task for j in self.jobs.values() if j.task]
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.placer.close()
