"""Rank 0's view of a group: a ``Target`` the round loop verifies with.

Per call: one command (``protocol.exchange``), then the forward runs across the
group (``forward.PipelineForward`` or ``forward.TensorForward``) and rank 0 gets
the logits. Opening and closing speculative rounds ride on the next command.
A long-lived group resets between jobs instead of closing. With a prefix cache
(``group.prefix_cache.GroupPrefixCache``) a job may start from every rank's own copy
of an earlier prompt's caches: rank 0 ``adopt``s its own, ``command`` tells the rest.
"""

from __future__ import annotations

import mlx.core as mx

from ..engine.cached_model import CachedModel
from ..engine.target import prefill
from .doorbell import Doorbell
from .forward import PipelineForward, TensorForward
from .protocol import FORWARD, PARK, RESET, STOP, TRAFFIC, Command, exchange
from .stage_cache import StageCache
from .traffic import Traffic


class GroupTarget:
    chains_rounds = False  # followers close one round per command, in order

    def __init__(self, local: StageCache | CachedModel, group: mx.distributed.Group,
                 forward: PipelineForward | TensorForward, traffic: Traffic,
                 doorbell: Doorbell | None = None):
        self._local = local
        self._doorbell = doorbell
        self._parked = False
        self._group = group
        self._forward = forward
        self._traffic = traffic
        self._begin_width = 0
        self._end_kept = -1
        self._prompt_traffic = Traffic()
        self.forwards = 0  # forwards started: what a watchdog reads as progress

    def __call__(self, tokens: mx.array, hidden: bool = False):
        self.forwards += 1
        exchange(Command(FORWARD, tokens.shape[0], self._begin_width, self._end_kept),
                 self._group, self._traffic)
        self._begin_width, self._end_kept = 0, -1
        return self._forward.lead(tokens, hidden)

    @property
    def cache(self) -> list:
        """Rank 0's own caches (its stage's, or its shards')."""
        return self._local.rounds.cache

    def adopt(self, caches: list) -> None:
        """Rank 0 goes on from ``caches`` (a prefix-cache hit's); the followers restore
        their own copies on the hit's RESTORE command."""
        self._local.rounds.drop()
        self._local.rounds.cache = caches

    def command(self, command: Command) -> None:
        """Send the followers a command between forwards (the prefix cache's)."""
        self._wake()
        exchange(command, self._group)

    def prefill(self, tokens: mx.array, *, hidden: bool = False, start: int = 0):
        out = prefill(self, self._local.rounds.cache, tokens, hidden=hidden, start=start)
        self._prompt_traffic = self._total_traffic()
        return out

    def begin_round(self, width: int) -> None:
        self._local.rounds.begin(width)
        self._begin_width = width

    def end_round(self, fed: mx.array, kept: int) -> None:
        self._local.rounds.end(fed, kept)
        self._end_kept = kept

    def undo_round(self) -> None:
        raise RuntimeError("a group never chains rounds: there is no later round to undo")

    def traffic_per_round(self, rounds: int) -> dict:
        """Bytes and messages every rank sent per round after the prompt."""
        decode = self._total_traffic() - self._prompt_traffic
        return {"bytes_per_round": round(decode.bytes / max(rounds, 1), 2),
                "messages_per_round": round(decode.messages / max(rounds, 1), 2)}

    def _total_traffic(self) -> Traffic:
        exchange(Command(TRAFFIC), self._group)
        return self._traffic.total(self._group)

    def reset(self) -> None:
        """Fresh caches on every rank for the next job; a round left open by the last
        job (one cancelled between rounds) is dropped, not closed."""
        self._wake()
        exchange(Command(RESET), self._group)
        self._local.rounds.reset()
        self._begin_width, self._end_kept = 0, -1

    def park(self) -> None:
        """Between jobs: the followers wait off the ring until ``reset`` or ``close``
        rings the doorbell (the group must have one). Parked followers are off the
        ring, so a second PARK would wait for them forever: it is a no-op."""
        if self._parked:
            return
        exchange(Command(PARK), self._group)
        self._parked = True

    def close(self) -> None:
        """Release the followers."""
        self._wake()
        exchange(Command(STOP), self._group)

    def _wake(self) -> None:
        if self._parked:
            self._doorbell.ring()
            self._parked = False
