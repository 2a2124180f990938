"""Which coordinator this worker serves: one at a time, under a lease.

The first coordinator that loads, runs or releases on a free worker takes the lease,
and each of its calls renews it (the GetInfo of its heartbeat too). While it holds,
another coordinator's such calls are refused with FAILED_PRECONDITION, so two
coordinators never plan the same memory or release each other's placements; anyone
may still read GetInfo. Once the holder has not called for ``timeout_s`` the lease
lapses and the placements are released (only the holder loads, so they are all its
own): a coordinator that died leaves nothing running, and the worker is free for
the next one. A coordinator that restarts with its old id within that time finds
its lease, and its placements, where it left them.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from typing import TYPE_CHECKING

from grpc import StatusCode

from ..status import StatusError
from ..v1 import worker_pb2

if TYPE_CHECKING:  # ``exo-spec worker --help`` reads DEFAULT_TIMEOUT_S without the rest
    from .placements import Placements

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 60.0


def holder_name(coordinator_id: str) -> str:
    return f"coordinator {coordinator_id}" if coordinator_id else \
        "a caller that names no coordinator_id"


class Lease:
    def __init__(self, node_id: str, placements: Placements, timeout_s: float):
        self.node_id = node_id
        self.placements = placements
        self.timeout_s = timeout_s
        self.holder: str | None = None  # None: free
        self._until = 0.0  # time.monotonic() when it lapses unless renewed
        self._timer: asyncio.TimerHandle | None = None
        self._releasing: asyncio.Future | None = None  # a lapsed holder's placements

    def renew(self, coordinator_id: str) -> None:
        """Renew the lease if ``coordinator_id`` holds it; take nothing."""
        if self.holder != coordinator_id:
            return
        self._until = time.monotonic() + self.timeout_s
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(self.timeout_s, self._lapse)

    async def admit(self, coordinator_id: str) -> None:
        """Let ``coordinator_id`` load, run or release here: it takes the lease when it
        is free and renews its own; FAILED_PRECONDITION while another holds it."""
        if self.holder not in (None, coordinator_id):
            raise self._refusal(coordinator_id)
        if self.holder is None:
            if self._releasing is not None:  # the last holder's memory is given back first
                await asyncio.shield(self._releasing)
                if self.holder not in (None, coordinator_id):  # taken while we waited
                    raise self._refusal(coordinator_id)
            if self.holder is None:
                log.info("serving %s (lease of %gs)", holder_name(coordinator_id),
                         self.timeout_s)
            self.holder = coordinator_id
        self.renew(coordinator_id)

    async def end(self, coordinator_id: str) -> None:
        """The holder leaves: its placements are released and the worker is free."""
        if self.holder is None:
            return
        if self.holder != coordinator_id:
            raise self._refusal(coordinator_id)
        log.info("%s ended its lease", holder_name(coordinator_id))
        self._free()
        await self._release_all()

    def to_proto(self) -> worker_pb2.Lease | None:
        if self.holder is None:
            return None
        lease = worker_pb2.Lease(holder=self.holder)
        lease.until.FromNanoseconds(int(self._wall_until() * 1e9))
        return lease

    def _lapse(self) -> None:
        log.info("%s has not called for %gs: its lease lapsed; releasing %d placement(s)",
                 holder_name(self.holder), self.timeout_s, len(self.placements.ids()))
        self._free()
        self._releasing = self._release_all()

    def _free(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.holder, self._timer = None, None

    def _release_all(self) -> asyncio.Future:
        """Release the placements held now (not any a next holder loads meanwhile)."""
        return asyncio.gather(*(self.placements.release(p) for p in self.placements.ids()))

    def _wall_until(self) -> float:
        return time.time() + self._until - time.monotonic()

    def _refusal(self, coordinator_id: str) -> StatusError:
        until = datetime.datetime.fromtimestamp(self._wall_until(), datetime.UTC)
        return StatusError(
            StatusCode.FAILED_PRECONDITION,
            f"node {self.node_id} is held by {holder_name(self.holder)} until "
            f"{until:%Y-%m-%d %H:%M:%S} UTC, not {holder_name(coordinator_id)} (a worker "
            f"serves one coordinator; its lease lapses {self.timeout_s:g}s after the "
            "holder's last call)")
