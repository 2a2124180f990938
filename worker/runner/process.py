"""One rank of one placement: ``python -m exo_spec.worker.runner SPEC_JSON``.

Talks to its worker in frames (``exo_spec.frames``) over stdin and stdout; the
real stdout is kept for frames and fd 1 is pointed at stderr, so nothing any
library prints can corrupt them. It loads its weights once ("progress" frames,
then "ready" with the proposer mode, or an "error"), then serves jobs one after
the other until stdin closes, which is how the worker releases it, or dies.

SPEC_JSON: ``model``, ``draft_model``, ``spec`` (a ``SpecMode`` value),
``split`` (layers per rank or null), ``ranks`` and ``group_timeout_s`` (see
``watchdog``). With more than one rank the worker also sets MLX_RANK and
MLX_HOSTFILE, and the runner joins the ring: rank 0 drafts and leads every job
(each opens with a reset that gives every rank fresh caches), the others follow
it for as long as the group lives, waiting off the ring between jobs
(``dist.doorbell``).
"""

from __future__ import annotations

import faulthandler
import json
import os
import queue
import signal
import sys
import threading
from contextlib import nullcontext
from functools import partial
from typing import BinaryIO

import mlx.core as mx

from ... import frames
from ...group.rank import Rank, load_rank
from ...model_set import load_models
from ...models.load import ModelLoadError
from ...spec_mode import SpecMode
from .job import run_job
from .targets import GroupLeader, Local
from .watchdog import Watchdog


class Commands:
    """Reads the worker's frames on a thread: jobs queue up, cancels mark a job id.
    When stdin closes the worker is gone or released us, so the process exits at
    once, even from inside a blocked collective."""

    def __init__(self, stream: BinaryIO):
        self.jobs: queue.Queue[dict] = queue.Queue()
        self.cancelled: set[str] = set()
        self._stream = stream
        threading.Thread(target=self._read, daemon=True, name="commands").start()

    def is_cancelled(self, job_id: str) -> bool:
        return job_id in self.cancelled

    def _read(self) -> None:
        try:
            while (frame := frames.read(self._stream)) is not None:
                if frame["type"] == "job":
                    self.jobs.put(frame)
                elif frame["type"] == "cancel":
                    self.cancelled.add(frame["job_id"])
        except Exception as e:
            print(f"exo-spec runner: bad frame from the worker: {e}", file=sys.stderr)
            os._exit(1)
        os._exit(0)


def _frame_stream() -> BinaryIO:
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return out


def load(spec: dict, send) -> Local | GroupLeader | Rank:
    def progress(message: str) -> None:
        send({"type": "progress", "message": message})

    mode = SpecMode(spec["spec"])
    if spec["ranks"] == 1:
        progress("loading target and drafter" if spec["draft_model"] else "loading target")
        return Local(load_models(spec["model"], spec["draft_model"], mode))
    progress(f"joining a group of {spec['ranks']}")
    group = mx.distributed.init(backend="ring", strict=True)
    rank = load_rank(group, spec["model"], spec["draft_model"], mode, split=spec["split"],
                     progress=progress)
    # Ready means the whole group is: rank 0 takes no job before every rank holds its
    # share (a job's first command would wait on a rank still loading).
    progress("waiting for the other ranks")
    rank.wait_off_ring()
    return GroupLeader(rank) if group.rank() == 0 else rank


def serve(target: Local | GroupLeader, commands: Commands, send, timeout_s: float) -> int:
    watchdog = None
    if isinstance(target, GroupLeader):
        def stalled(job_id: str) -> None:
            send({"type": "error", "job_id": job_id, "code": "UNAVAILABLE",
                  "message": f"the group made no progress for {timeout_s:g}s: "
                             "a rank is gone or stuck"})
            os._exit(1)

        watchdog = Watchdog(lambda: target.target.forwards, timeout_s, stalled)
    while True:
        job = commands.jobs.get()
        job_id = job["job_id"]
        try:
            with watchdog.guarding(job_id) if watchdog else nullcontext():
                run_job(job, target, send, partial(commands.is_cancelled, job_id))
            if isinstance(target, GroupLeader) and commands.jobs.empty():
                target.target.park()  # followers idle off the ring (dist.doorbell)
        except Exception as e:
            if isinstance(target, Local):  # fresh caches next job: nothing is left broken
                send({"type": "error", "job_id": job_id, "code": "INTERNAL",
                      "message": f"{type(e).__name__}: {e}"})
                continue
            # The group's ranks may now disagree on where they are: it serves no more jobs.
            lost = isinstance(e, RuntimeError)  # the ring backend's "peer was lost"
            send({"type": "error", "job_id": job_id, "code": "UNAVAILABLE" if lost else "INTERNAL",
                  "message": f"a rank of the group is gone: {e}" if lost else
                  f"{type(e).__name__}: {e} (the group is stopped)"})
            return 1
        commands.cancelled.discard(job_id)


def main(spec_json: str) -> int:
    out = _frame_stream()
    lock = threading.Lock()  # the watchdog's thread may send too

    def send(message: dict) -> None:
        with lock:
            frames.write(out, message)

    faulthandler.register(signal.SIGUSR1)  # kill -USR1 prints where a runner is stuck
    spec = json.loads(spec_json)
    commands = Commands(sys.stdin.buffer)
    try:
        target = load(spec, send)
    except (ModelLoadError, ValueError, OSError) as e:
        send({"type": "error", "code": "INVALID_ARGUMENT", "message": str(e)})
        return 2
    except RuntimeError as e:  # a peer left while the group formed or loaded
        send({"type": "error", "code": "UNAVAILABLE", "message": str(e)})
        return 1
    except Exception as e:
        send({"type": "error", "code": "INTERNAL", "message": f"{type(e).__name__}: {e}"})
        return 1
    send({"type": "ready", "mode": getattr(target, "mode", "")})
    if isinstance(target, Rank):
        try:
            target.follow()
        except RuntimeError as e:
            send({"type": "error", "code": "UNAVAILABLE", "message": f"rank 0 is gone: {e}"})
            return 1
        return 0
    return serve(target, commands, send, spec["group_timeout_s"])
