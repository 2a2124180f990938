"""Jobs decoded together on a one-node placement (``engine.batch.BatchDecoder``).

The reader thread queues jobs as they come (``process.Commands``); this loop takes
them between rounds. A job joins the batch when the batch can take it and the limits
allow (``BatchLimits``: at most ``max_batch`` jobs, their caches within
``kv_budget_bytes``), and leaves when it ends: an end-of-sequence token or its token
budget (the decoder's), a stop string its text completed or a cancel (ended here,
before the next round). Each job streams its own ``Tokens`` and ``Finished``; its
stats say ``batch_size``, the most jobs it was decoded together with.

A job the batch cannot take runs alone, as on a placement that does not batch
(``job.decode_alone``): penalties or a logit bias, logprobs, a fixed draft length
with no drafter. Jobs keep their order: one that must run alone waits until the batch
before it has drained, and the jobs after it wait behind it.

A job that finds the placement idle with nothing else waiting runs alone too, with all
a lone job has (the prefix cache: a hit, and its prompt stored; pipelined rounds).
When a job the batch can take arrives meanwhile, the lone job stops between two
rounds and goes on in a batch with it, from its prompt and the tokens it emitted, its
stream unbroken: a greedy job emits exactly what it would have alone. A seeded
sampled job never moves (its draws would change); it runs to its end alone. Jobs in
a batch neither read nor store the prefix cache.
"""

from __future__ import annotations

import dataclasses
import itertools
import queue
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, NoReturn, TypeVar

import mlx.core as mx
import mlx.nn as nn
from grpc import StatusCode
from mlx_lm.models.cache import make_prompt_cache

from ...decoder_factory import make_batch_decoder
from ...engine.batch import BatchRequest
from ...engine.stats import Stats
from ...model_set import ModelSet
from ...spec_mode import ProposerKind
from ...status import StatusError
from ..messages import Error, Job
from .job import JobStream, Send, decode_alone, job_failure, named_logprobs
from .targets import Local

if TYPE_CHECKING:
    from .process import Commands

T = TypeVar("T")

# A row's caches hold its prompt and output, the holes rejected drafts leave until
# ``RaggedKVCache.compact`` gathers them (it waits for a quarter of the width and 32
# slots), and one round's drafts: a job is planned at this many slots per token, and
# these more.
HOLES_SHARE = 1.25
ROUND_SLOTS = 64


@dataclass(frozen=True)
class BatchLimits:
    max_batch: int  # jobs decoded together
    kv_budget_bytes: int  # what their caches may take together; 0: no bound
    kv_bytes_per_token: int  # per token of a row: the target's caches and the drafter's

    def fit(self, ends: list[int]) -> bool:
        """Whether rows ending at these lengths fit in one batch: each row is as wide
        as the longest (rows are left-padded to a common width)."""
        if len(ends) > self.max_batch:
            return False
        need = len(ends) * (max(ends) * HOLES_SHARE + ROUND_SLOTS) * self.kv_bytes_per_token
        return not self.kv_budget_bytes or need <= self.kv_budget_bytes


def batch_limits(models: ModelSet, max_batch: int, kv_budget_bytes: int) -> BatchLimits | None:
    """The placement's limits, or None where it decodes one job at a time: ``max_batch``
    1, or models a batch cannot hold (``make_batch_decoder`` says why, on stderr)."""
    if max_batch < 2:
        return None
    try:
        make_batch_decoder(models)
    except (TypeError, ValueError) as e:
        print(f"exo-spec runner: jobs run one at a time: {e}", file=sys.stderr)
        return None
    per_token = kv_bytes_per_token(models.target.model)
    if models.mode == ProposerKind.DRAFT:
        per_token += kv_bytes_per_token(models.drafter.model)
    return BatchLimits(max_batch, kv_budget_bytes, per_token)


def kv_bytes_per_token(model: nn.Module) -> int:
    """What one token takes in ``model``'s KV caches, read from the shapes a one-token
    pass gives them (nothing is evaluated). A recurrent layer's state does not grow
    with the tokens (a few MB per row at most), so it is not counted."""
    caches = make_prompt_cache(model)
    model(mx.array([[0]]), cache=caches)
    return sum((c.keys.nbytes + c.values.nbytes) // c.keys.shape[2]
               for c in caches if getattr(c, "keys", None) is not None)


@dataclass
class _Row:
    stream: JobStream
    joined_at: float  # time.perf_counter()
    first_at: float | None = None  # when it emitted its first token in the batch


class BatchedJobs:
    """The runner's loop for a ``Local`` target that batches (see the module's doc)."""

    def __init__(self, target: Local, limits: BatchLimits, commands: Commands, send: Send):
        self.target = target
        self.limits = limits
        self.commands = commands
        self.send = send
        self.batch = make_batch_decoder(target.models)
        self.rows: dict[int, _Row] = {}  # by the batch's sequence id
        self.waiting: deque[JobStream] = deque()

    def serve(self) -> NoReturn:
        while True:
            self._take(block=not self.rows and not self.waiting)
            self._admit()
            if self.rows:
                self._step()
            elif self.waiting:
                self._alone(self.waiting.popleft())

    # -- waiting jobs ------------------------------------------------------------------

    def _take(self, block: bool) -> None:
        """Queue the jobs that came (waiting for one if ``block``); end the waiting jobs
        that were cancelled."""
        try:
            self._queue(self.commands.jobs.get(block=block))
            while True:
                self._queue(self.commands.jobs.get_nowait())
        except queue.Empty:
            pass
        for stream in [s for s in self.waiting if self._cancelled(s)]:
            self.waiting.remove(stream)
            stream.end_early(True, self.send)
            self._forget(stream.job)

    def _queue(self, job: Job) -> None:
        stream = self._guarded(job, lambda: JobStream(job, self.target))
        if stream is None:
            return
        if stream.end_early(self._cancelled(stream), self.send):
            self._forget(job)
        else:
            self.waiting.append(stream)

    def _batchable(self, stream: JobStream) -> bool:
        job = stream.job
        return job.num_draft is None or self.batch.drafter is not None

    def _fits(self, streams: list[JobStream]) -> bool:
        return self.limits.fit([len(s.prompt) + s.max_tokens for s in streams])

    def _admit(self) -> None:
        """Let the waiting jobs in order into the batch while they can join it. An idle
        placement starts a batch only for two jobs at least: one alone runs alone."""
        while self.waiting and self._batchable(self.waiting[0]):
            ahead = [r.stream for r in self.rows.values()]
            group = ahead + list(itertools.islice(self.waiting, 1 if ahead else 2))
            if len(group) < 2 or not all(map(self._batchable, group)) \
                    or not self._fits(group):
                return
            self._join(self.waiting.popleft())

    def _alone(self, stream: JobStream) -> None:
        job = stream.job
        movable = self._batchable(stream) and (job.sampling.greedy or job.seed is None)

        def move() -> bool:  # between two of its rounds
            self._take(block=False)
            return movable and bool(self.waiting) and self._batchable(self.waiting[0]) \
                and self._fits([stream, self.waiting[0]])

        moved = self._guarded(job, lambda: decode_alone(
            stream, self.target, self.send, partial(self.commands.is_cancelled, job.job_id),
            move))
        if moved:
            self._join(stream)
        else:
            self._forget(job)

    # -- the batch ---------------------------------------------------------------------

    def _join(self, stream: JobStream) -> None:
        job = stream.job

        def add() -> None:
            try:
                sequence = self.batch.add(BatchRequest(
                    prompt=stream.prompt + stream.tokens, max_tokens=stream.left,
                    sampling=job.sampling, seed=job.seed, num_draft=job.num_draft,
                    penalties=job.penalties, logprobs=job.top_logprobs))
            except ValueError as e:  # a logit bias on a token outside the vocabulary
                raise StatusError(StatusCode.INVALID_ARGUMENT, str(e)) from None
            self.rows[sequence] = _Row(stream, time.perf_counter())

        self._guarded(job, add)

    def _step(self) -> None:
        try:
            self._round()
        except Exception as e:
            self._fail(e)

    def _round(self) -> None:
        size = len(self.rows)
        emitted = self.batch.step()
        now = time.perf_counter()
        for e in emitted:
            row = self.rows.get(e.sequence)
            if row is None:  # its first token, in the same step, ended it
                continue
            stream = row.stream
            stream.batch_size = max(stream.batch_size, size)
            row.first_at = row.first_at or now
            stream.add(e.tokens, self.send,
                       named_logprobs(e.logprobs, self.target) if e.logprobs else ())
            if e.finish is not None:
                self._end(e.sequence, "stop" if stream.output.stopped else e.finish.reason,
                          e.stats)
            elif stream.output.stopped:
                self._end(e.sequence, "stop", self.batch.cancel(e.sequence))
        for sequence in [s for s, r in self.rows.items() if self._cancelled(r.stream)]:
            self._end(sequence, "cancelled", self.batch.cancel(sequence))

    def _end(self, sequence: int, reason: str, stats: Stats) -> None:
        row = self.rows.pop(sequence)
        stream, end = row.stream, time.perf_counter()
        first = row.first_at or end
        if stream.carried is None:
            stats.ttft_s, stats.decode_s = first - row.joined_at, end - first
        else:
            stats = _went_on(stream.carried, stats, end - row.joined_at)
        stream.finish(reason, {**stats.to_dict(), "ranks": 1, "batch_size": stream.batch_size},
                      self.send)
        self._forget(stream.job)

    def _fail(self, e: Exception) -> None:
        """The batch failed: its jobs fail with it, and the next batch starts afresh
        (the prefix cache is emptied too: the failure may have been memory)."""
        failure = job_failure(e, self.target)
        for row in self.rows.values():
            self.send(Error.of(failure, row.stream.job.job_id))
            self._forget(row.stream.job)
        self.rows.clear()
        self.batch = make_batch_decoder(self.target.models)
        if self.target.prefix_cache is not None:
            self.target.prefix_cache.clear()

    # -- helpers -----------------------------------------------------------------------

    def _cancelled(self, stream: JobStream) -> bool:
        return self.commands.is_cancelled(stream.job.job_id)

    def _forget(self, job: Job) -> None:
        """The job has ended: a cancel of it that comes later is for nothing."""
        self.commands.cancelled.discard(job.job_id)

    def _guarded(self, job: Job, work: Callable[[], T]) -> T | None:
        """``work()`` for one job, whose failure fails that job alone (None, then)."""
        try:
            return work()
        except StatusError as e:  # refused before its first round
            self.send(Error.of(e, job.job_id))
        except Exception as e:
            self.send(Error.of(job_failure(e, self.target), job.job_id))
            if self.target.prefix_cache is not None:  # the failure may have been memory
                self.target.prefix_cache.clear()
        self._forget(job)
        return None


def _went_on(alone: Stats, batched: Stats, batched_s: float) -> Stats:
    """One job's stats over the decoder it started alone on and the batch it went on
    in: the counts of both, the prompt and time to first token of the first."""
    return dataclasses.replace(
        batched, drafted=alone.drafted + batched.drafted,
        accepted=alone.accepted + batched.accepted, rounds=alone.rounds + batched.rounds,
        generation_tokens=alone.generation_tokens + batched.generation_tokens,
        prompt_tokens=alone.prompt_tokens, cached_prompt_tokens=alone.cached_prompt_tokens,
        ttft_s=alone.ttft_s, decode_s=alone.decode_s + batched_s)
