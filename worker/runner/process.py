"""One rank of one placement: ``python -m exo_spec.worker.runner LOAD_JSON``.

LOAD_JSON is a ``worker.messages.LoadConfig``. The runner talks to its worker in
frames (``exo_spec.frames``) over stdin and stdout; the real stdout is kept for
frames and fd 1 is pointed at stderr, so nothing any library prints can corrupt
them. It loads its weights once (``Progress``, then ``Ready`` with the proposer
mode and how many jobs it decodes together, or an ``Error``), then serves jobs until
stdin closes, which is how the worker releases it, or dies: one node's runner decodes
the jobs it can together (``batch``, up to ``LoadConfig.max_batch``), any other one
after the other. A placement keeps the caches
of its recent prompts (``LoadConfig.prefix_cache_bytes``, ``engine.prefix_cache``), so a
conversation's next turn prefills only its new tokens (a group: every rank its own
stage's, ``group.prefix_cache``).

With more than one rank the worker also sets MLX_RANK and MLX_HOSTFILE, and the
runner joins the ring: rank 0 drafts and leads every job (each opens with a reset
that gives every rank fresh caches), the others follow it for as long as the group
lives, waiting off the ring between jobs (``group.doorbell``); ``watchdog`` fails a
job whose group stops making progress.
"""

from __future__ import annotations

import faulthandler
import os
import queue
import signal
import sys
import threading
from contextlib import nullcontext
from functools import partial
from typing import BinaryIO

import mlx.core as mx
from grpc import StatusCode

from ... import frames
from ...engine.prefix_cache import PrefixCache
from ...group.rank import Rank, load_rank
from ...model_set import load_models
from ...spec_mode import ProposerKind
from ...status import StatusError
from ..messages import (
    Cancel,
    Error,
    Job,
    LoadConfig,
    Progress,
    Ready,
    RunnerMessage,
    from_frame,
    to_frame,
)
from .batch import BatchedJobs, batch_limits
from .job import Send, job_failure, run_job
from .targets import GroupLeader, Local
from .watchdog import Watchdog


class Commands:
    """Reads the worker's messages on a thread: jobs queue up, cancels mark a job id.
    When stdin closes the worker is gone or released us, so the process exits at
    once, even from inside a blocked collective."""

    def __init__(self, stream: BinaryIO):
        self.jobs: queue.Queue[Job] = queue.Queue()
        self.cancelled: set[str] = set()
        self._stream = stream
        threading.Thread(target=self._read, daemon=True, name="commands").start()

    def is_cancelled(self, job_id: str) -> bool:
        return job_id in self.cancelled

    def _read(self) -> None:
        try:
            while (frame := frames.read(self._stream)) is not None:
                match from_frame(frame):
                    case Job() as job:
                        self.jobs.put(job)
                    case Cancel(job_id):
                        self.cancelled.add(job_id)
                    case message:
                        raise frames.FrameError(f"a worker sends no {type(message).__name__}")
        except Exception as e:
            print(f"exo-spec runner: bad frame from the worker: {e}", file=sys.stderr)
            os._exit(1)
        os._exit(0)


def _frame_stream() -> BinaryIO:
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return out


def load(config: LoadConfig, send: Send) -> Local | GroupLeader | Rank:
    def progress(text: str) -> None:
        send(Progress(text))

    if config.ranks == 1:
        progress("loading target and drafter" if config.draft_model else "loading target")
        prefix_cache = PrefixCache(config.prefix_cache_bytes) if config.prefix_cache_bytes \
            else None
        return Local(load_models(config.model, config.draft_model, config.spec), prefix_cache)
    progress(f"joining a group of {config.ranks}")
    group = mx.distributed.init(backend="ring", strict=True)
    rank = load_rank(group, config.model, config.draft_model, config.spec, split=config.split,
                     progress=progress)
    # Ready means the whole group is: rank 0 takes no job before every rank holds its
    # share (a job's first command would wait on a rank still loading).
    progress("waiting for the other ranks")
    rank.wait_off_ring()
    return GroupLeader(rank, config.prefix_cache_bytes) if group.rank() == 0 else rank


def load_failure(e: Exception) -> StatusError:
    match e:
        case ValueError() | OSError():  # ModelLoadError is a ValueError
            return StatusError(StatusCode.INVALID_ARGUMENT, str(e))
        case RuntimeError():  # a peer left while the group formed or loaded
            return StatusError(StatusCode.UNAVAILABLE, str(e))
    return StatusError(StatusCode.INTERNAL, f"{type(e).__name__}: {e}")


def serve(target: Local | GroupLeader, commands: Commands, send: Send, timeout_s: float) -> int:
    watchdog = None
    if isinstance(target, GroupLeader):
        def stalled(job_id: str) -> None:
            send(Error.of(StatusError(StatusCode.UNAVAILABLE,
                                      f"the group made no progress for {timeout_s:g}s: "
                                      "a rank is gone or stuck"), job_id))
            os._exit(1)

        watchdog = Watchdog(lambda: target.target.forwards, timeout_s, stalled)
    while True:
        job = commands.jobs.get()
        try:
            with watchdog.guarding(job.job_id) if watchdog else nullcontext():
                run_job(job, target, send, partial(commands.is_cancelled, job.job_id))
            if isinstance(target, GroupLeader) and commands.jobs.empty():
                target.target.park()  # followers idle off the ring (group.doorbell)
        except StatusError as e:  # refused before its first round: nothing has changed
            send(Error.of(e, job.job_id))
        except Exception as e:
            send(Error.of(job_failure(e, target), job.job_id))
            # Local: fresh caches next job, nothing is left broken (the prefix cache is
            # emptied too: the failure may have been memory). A group's ranks may now
            # disagree on where they are: it serves no more jobs.
            if isinstance(target, GroupLeader):
                return 1
            if target.prefix_cache is not None:
                target.prefix_cache.clear()
        finally:
            commands.cancelled.discard(job.job_id)


def follow(rank: Rank, send: Send) -> int:
    try:
        rank.follow()
    except RuntimeError as e:
        send(Error.of(StatusError(StatusCode.UNAVAILABLE, f"rank 0 is gone: {e}")))
        return 1
    return 0


def main(load_json: str) -> int:
    out = _frame_stream()
    lock = threading.Lock()  # the watchdog's thread may send too

    def send(message: RunnerMessage) -> None:
        with lock:
            frames.write(out, to_frame(message))

    faulthandler.register(signal.SIGUSR1)  # kill -USR1 prints where a runner is stuck
    config = LoadConfig.from_json(load_json)
    commands = Commands(sys.stdin.buffer)
    try:
        target = load(config, send)
        # Only one node's jobs are batched: a group decodes one job at a time.
        limits = batch_limits(target.models, config.max_batch, config.kv_budget_bytes) \
            if isinstance(target, Local) else None
    except Exception as e:
        failure = load_failure(e)
        send(Error.of(failure))
        return 2 if failure.code == StatusCode.INVALID_ARGUMENT else 1
    if isinstance(target, Rank):  # a follower: only rank 0 holds a proposer
        send(Ready(ProposerKind.NONE))
        return follow(target, send)
    send(Ready(target.mode, limits.max_batch if limits else 1))
    if limits is not None:
        BatchedJobs(target, limits, commands, send).serve()
    return serve(target, commands, send, config.group_timeout_s)
