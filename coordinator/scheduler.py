"""Jobs onto placements: dispatch, streaming, cancellation, failure.

A job runs as one task:

1. ask the placements for one (a warm one is reused, else one is planned and
   loaded: see ``placement_lifecycle``);
2. wait for the placement to load, then for one of its slots: as many jobs as its
   runner decodes together (``Placement.batch_capacity``; one on a placement that
   does not batch);
3. ``RunJob`` on rank 0's worker, streaming token chunks and the result to the
   job's caller.

Jobs are served in arrival order: those of one model get their placement one
after the other (``_in_turn``), then wait for it to load and for a slot, and
asyncio wakes both kinds of waiter first come, first served. At most
``max_queue`` jobs of a model wait (queued or loading) at a time: a job submitted
beyond that fails at once with RESOURCE_EXHAUSTED, never queued.

Cancelling a job (``CancelJob``, or its caller leaving) cancels its task, which
cancels the worker's ``RunJob``; the job ends CANCELLED with what it produced so
far.

A job whose placement goes away (a node lost, a runner gone, ``RunJob`` cut off) is
placed again, at most ``ATTEMPTS`` times in all, on the nodes still there, and
resumes: ``RunJob`` carries the tokens it emitted so far (``generated_token_ids``),
and the runner decodes on after them (``worker.runner.job``), so the caller's stream
goes on with no token repeated or missing. Nodes that do not answer once their job
failed are LOST at once, so the next plan leaves them out. When it cannot be placed
again, the job fails UNAVAILABLE, saying why it was interrupted and why it could not
go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

import grpc
from grpc import StatusCode

from ..status import StatusError
from ..v1 import common_pb2, inference_pb2, worker_pb2
from .job import End, Job, JobRequest
from .placement_lifecycle import PlacementLifecycle
from .placement_record import Placement
from .registry import Registry
from .state_store import StateStore
from .states import JobState, NodeState, PlacementState

log = logging.getLogger(__name__)

ATTEMPTS = 3
CANCEL_WAIT_S = 10.0
PROBE_TIMEOUT_S = 1.0  # after a job failed: which of its nodes still answers
DEFAULT_MAX_QUEUE = 64  # jobs of one model waiting at a time
DEFAULT_MAX_TOKENS = 4096  # the cap of a job that names no max_tokens
WAITING = (JobState.QUEUED, JobState.LOADING)
# A RunJob that ends with these failed the job, not the placement: it stays (a runner
# that hit a bug in one job starts the next with fresh caches).
JOB_FAULTS = (StatusCode.INVALID_ARGUMENT, StatusCode.FAILED_PRECONDITION,
              StatusCode.RESOURCE_EXHAUSTED, StatusCode.OUT_OF_RANGE, StatusCode.INTERNAL)
# A job stopped from outside with these ends CANCELLED, with what it produced;
# any other stop ends it FAILED.
CALLER_STOPS = (StatusCode.CANCELLED, StatusCode.DEADLINE_EXCEEDED)


class _Replace(Exception):
    """The placement went away: place the job again, and resume it."""


class Scheduler:
    def __init__(self, registry: Registry, placements: PlacementLifecycle, store: StateStore,
                 *, max_queue: int = DEFAULT_MAX_QUEUE,
                 default_max_tokens: int = DEFAULT_MAX_TOKENS):
        """``store`` records every job (finished jobs are read from there);
        ``max_queue``: how many jobs of one model may wait at a time;
        ``default_max_tokens``: the cap of a job that names no max_tokens (it decodes
        the rest of the model's context, at most this many tokens)."""
        if max_queue < 1 or default_max_tokens < 1:
            raise ValueError(f"max_queue and default_max_tokens must be >= 1, got "
                             f"{max_queue} and {default_max_tokens}")
        self.registry = registry
        self.placements = placements
        self.store = store
        self.max_queue = max_queue
        self.default_max_tokens = default_max_tokens
        self.jobs: dict[str, Job] = {}  # the unfinished ones
        self._turns: dict[str, tuple[asyncio.Lock, list[int]]] = {}

    # -- jobs ------------------------------------------------------------------------

    def submit(self, request: JobRequest) -> Job:
        """The job, queued; or, when ``max_queue`` jobs of its model already wait,
        refused: ended at once, FAILED with RESOURCE_EXHAUSTED (its caller reads that
        from its events as from any job that fails)."""
        waiting = self.waiting(request.model)
        job = Job(request)
        self.jobs[job.id] = job
        self.store.save_job(job.to_proto())
        if waiting >= self.max_queue:
            self._end(job, JobState.FAILED, StatusError(
                StatusCode.RESOURCE_EXHAUSTED,
                f"{waiting} job{' is' if waiting == 1 else 's are'} already waiting for "
                f"{request.model}"))
            return job
        log.info("job %s queued: %s (nodes %s)", job.id, request.model,
                 request.nodes or "auto")
        job.task = asyncio.create_task(self._run(job), name=f"job {job.id}")
        return job

    def waiting(self, model: str) -> int:
        """How many jobs of ``model`` wait for a placement, for it to load or to be free."""
        return sum(j.request.model == model and j.state in WAITING
                   for j in self.jobs.values())

    def record(self, job_id: str) -> inference_pb2.Job | None:
        """What GetJob returns: an unfinished job as it is now, a finished one as the
        store keeps it."""
        job = self.jobs.get(job_id)
        return job.to_proto() if job is not None else self.store.job(job_id)

    def records(self, states: set[int]) -> list[inference_pb2.Job]:
        """Every job kept (those whose ``inference_pb2.JobState`` is in ``states``, if
        any), oldest first."""
        found = self.store.finished_jobs() + [j.to_proto() for j in self.jobs.values()]
        return sorted((j for j in found if not states or j.state in states),
                      key=lambda j: j.created.ToNanoseconds())

    async def cancel(self, job_id: str) -> inference_pb2.Job:
        """The job once cancelled; a finished one unchanged."""
        job = self.jobs.get(job_id)
        if job is None:
            if (finished := self.store.job(job_id)) is None:
                raise StatusError(StatusCode.NOT_FOUND, f"no job {job_id}")
            return finished
        job.stop(StatusError(StatusCode.CANCELLED, "cancelled by CancelJob"))
        try:
            await asyncio.wait_for(job.done.wait(), CANCEL_WAIT_S)
        except TimeoutError:
            pass
        return job.to_proto()

    async def _run(self, job: Job) -> None:
        try:
            lost = ""  # why its last placement went away, if one did
            for attempt in range(1, ATTEMPTS + 1):
                try:
                    async with self._in_turn(job.request.model):
                        p = await self.placements.placement_for(job)
                except StatusError as e:
                    if not lost:
                        raise
                    raise StatusError(StatusCode.UNAVAILABLE,
                                      f"{lost}; the job cannot go on: {e.line()}") from None
                try:
                    await self._run_on(job, p)
                    break
                except _Replace as e:
                    if attempt == ATTEMPTS:
                        raise StatusError(StatusCode.UNAVAILABLE, str(e)) from None
                    lost = str(e)
                    again = (f"resuming the job after {len(job.token_ids)} tokens"
                             if job.token_ids else "placing the job again")
                    log.info("job %s: %s; %s", job.id, e, again)
                    job.progress("queued", f"{e}; {again}")
                    self._state(job, JobState.QUEUED)
            self._end(job, JobState.SUCCEEDED, result=job.result)
        except StatusError as e:
            self._end(job, JobState.FAILED, e)
        except asyncio.CancelledError:
            why = job.stopping or StatusError(StatusCode.CANCELLED, "cancelled")
            if why.code in CALLER_STOPS:
                self._end(job, JobState.CANCELLED, why, job.partial())
            else:
                self._end(job, JobState.FAILED, why)
        except Exception as e:  # a bug: say so rather than hang the caller
            log.exception("job %s", job.id)
            self._end(job, JobState.FAILED,
                      StatusError(StatusCode.INTERNAL, f"{type(e).__name__}: {e}"))

    @contextlib.asynccontextmanager
    async def _in_turn(self, model: str) -> AsyncIterator[None]:
        """One job of ``model`` at a time, in arrival order, gets its placement: the
        one after it then reuses the same (loading) placement and waits behind it,
        however long each one's placing took."""
        lock, users = self._turns.setdefault(model, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if not users[0]:
                del self._turns[model]

    def _state(self, job: Job, state: JobState, detail: str = "") -> None:
        if job.state != state:
            job.state = state
            log.info("job %s %s%s", job.id, state, detail)
            self.store.save_job(job.to_proto())

    def _end(self, job: Job, state: JobState, error: StatusError | None = None,
             result: common_pb2.Finished | None = None) -> None:
        """``job`` is done: ``state``, with ``error`` unless it succeeded."""
        if job.finished:
            return
        job.error, job.finished_at = error.message if error else "", time.time()
        if result is not None:
            job.result = result
            job.emit(inference_pb2.GenerateEvent(finished=result))
        if error is None:
            self._state(job, state, f": {len(job.token_ids)} tokens, {result.finish_reason}")
        else:
            self._state(job, state, f": {error.line()}")
        job.events.put_nowait(End(error))
        job.done.set()
        del self.jobs[job.id]  # the store has it

    # -- running a job on a placement --------------------------------------------------

    async def _run_on(self, job: Job, p: Placement) -> None:
        if p.state == PlacementState.LOADING:
            self._state(job, JobState.LOADING, f": {p} on {', '.join(p.node_ids)}")
            job.progress("loading", f"loading {p.model} on {', '.join(p.node_ids)} ({p.id})")
            p.waiting.add(job)
            try:
                await asyncio.shield(p.loaded)
            except StatusError as e:
                if e.code == StatusCode.UNAVAILABLE:
                    raise _Replace(e.message) from None
                raise
            finally:
                p.waiting.discard(job)
        if p.slots.locked() and p.active:
            ahead = _jobs_line(p.active)
            self._state(job, JobState.QUEUED, f": waiting for {ahead} on {p}")
            job.progress("queued", f"waiting for {ahead} on {p.id}")
        async with p.slots:
            if p.state != PlacementState.READY:
                raise _Replace(p.error or f"{p} is gone")
            p.active.add(job)
            try:
                await self._decode(job, p)
            except asyncio.CancelledError:
                if job.interrupted is None or job.stopping is not None:
                    raise
                asyncio.current_task().uncancel()  # an interruption, not a cancel
                why, job.interrupted = job.interrupted, None
                raise _Replace(why.message) from None
            finally:
                p.active.discard(job)
                p.jobs_served += 1
                p.last_used = time.monotonic()

    async def _decode(self, job: Job, p: Placement) -> None:
        leader = self.registry.get(p.node_ids[0])
        if leader is None or leader.state != NodeState.READY:
            raise _Replace(f"node {p.node_ids[0]} of {p} is not ready")
        job.placement_id, job.node_ids = p.id, list(p.node_ids)
        self._state(job, JobState.RUNNING, f" on {', '.join(p.node_ids)} ({p.id}, {p.mode})")
        job.progress("running", f"running on {', '.join(p.node_ids)} ({p.id}, {p.mode})")
        call = leader.stub.RunJob(worker_pb2.RunJobRequest(
            placement_id=p.id, job_id=job.id, decode=job.request.decode,
            default_max_tokens=self.default_max_tokens, generated_token_ids=job.token_ids,
            coordinator_id=self.registry.coordinator_id))
        try:
            async for event in call:
                if event.HasField("tokens"):
                    job.token_ids.extend(event.tokens.token_ids)
                    job.texts.append(event.tokens.text)
                    job.emit(inference_pb2.GenerateEvent(tokens=event.tokens))
                elif event.HasField("finished"):
                    job.result = event.finished
        except grpc.aio.AioRpcError as e:
            error = StatusError.from_rpc(e)
            if error.code in JOB_FAULTS:
                raise error from None
            reason = f"{p} on {', '.join(p.node_ids)} failed: {error.message}"
            gone = await self._unreachable(p.node_ids)
            if gone:
                reason += f" (node{'s' * (len(gone) > 1)} {', '.join(gone)} not answering)"
            self.placements.drop(p, StatusError(StatusCode.UNAVAILABLE, reason))
            raise _Replace(reason) from None
        finally:
            call.cancel()
        if job.result is None:
            reason = f"{p}: the worker ended the job without a result"
            self.placements.drop(p, StatusError(StatusCode.UNAVAILABLE, reason))
            raise StatusError(StatusCode.UNAVAILABLE, reason)

    async def _unreachable(self, node_ids: list[str]) -> list[str]:
        """Which of these nodes do not answer a heartbeat now (or are known LOST). Those
        that do not answer are LOST from now: a job of theirs failed, and placing it
        again must not wait for their heartbeats to tell."""
        async def gone(node_id: str) -> bool:
            node = self.registry.get(node_id)
            if node is None or node.state != NodeState.READY:
                return True
            try:
                await node.stub.GetInfo(
                    worker_pb2.GetInfoRequest(coordinator_id=self.registry.coordinator_id),
                    timeout=PROBE_TIMEOUT_S)
            except grpc.aio.AioRpcError as e:
                self.registry.lose(node, f"it does not answer since a job of its failed "
                                         f"({StatusError.from_rpc(e).line()})")
                return True
            return False

        answers = await asyncio.gather(*(gone(n) for n in node_ids))
        return [n for n, g in zip(node_ids, answers, strict=True) if g]

    # -- shutdown --------------------------------------------------------------------

    async def close(self) -> None:
        """Stop every job, and wait until each has ended."""
        for job in list(self.jobs.values()):
            job.stop(StatusError(StatusCode.UNAVAILABLE, "the coordinator is shutting down"))
        tasks = [j.task for j in self.jobs.values() if j.task]
        await asyncio.gather(*tasks, return_exceptions=True)


def _jobs_line(jobs: set[Job]) -> str:
    """The jobs a placement serves, for a waiting job's progress: "job ID" or "N jobs"."""
    return f"job {next(iter(jobs)).id}" if len(jobs) == 1 else f"{len(jobs)} jobs"
