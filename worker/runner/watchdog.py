"""Rank 0's guard against a group that stopped without saying so.

The ring backend fails the operations pending when a peer's connection drops,
but a collective posted after that can wait forever (seen with MLX 0.32: the
next command's all_sum, issued while a pipelined plain step's receive was in
flight when rank 1 died). So while a job runs, a thread checks that rank 0 keeps
starting forwards (one per prefill chunk or round); when none starts for
``timeout_s``, ``on_stall(job_id)`` declares the group lost.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

DEFAULT_TIMEOUT_S = 60.0  # far above one forward of a 512-token chunk on a big model


class Watchdog:
    def __init__(self, progress: Callable[[], int], timeout_s: float,
                 on_stall: Callable[[str], None]):
        self._progress = progress
        self._timeout_s = timeout_s
        self._on_stall = on_stall
        self._job: str | None = None
        self._lock = threading.Lock()
        threading.Thread(target=self._watch, daemon=True, name="watchdog").start()

    @contextmanager
    def guarding(self, job_id: str) -> Iterator[None]:
        with self._lock:
            self._job, self._seen, self._since = job_id, self._progress(), time.monotonic()
        try:
            yield
        finally:
            with self._lock:
                self._job = None

    def _watch(self) -> None:
        while True:
            time.sleep(min(1.0, self._timeout_s / 4))
            with self._lock:
                if self._job is None:
                    continue
                now, seen = time.monotonic(), self._progress()
                if seen != self._seen:
                    self._seen, self._since = seen, now
                    continue
                if now - self._since < self._timeout_s:
                    continue
                job = self._job
            self._on_stall(job)
            return
