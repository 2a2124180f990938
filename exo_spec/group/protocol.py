"""The per-call command rank 0 sends every other rank, as one all_sum of int32s.

A forward carries the row count (so followers can post their receives), the
width of the speculative round it opens (0: none) and how many rows the
previous round kept (-1: no round to close). Closing a round is deferred to the
next command, so a speculative round costs one command, not three. A traffic
command asks every rank to add up what it has sent (``Traffic.total``). A reset
gives every rank fresh caches for the next job of a long-lived group; park sends
its followers to wait off the ring until the next job (``doorbell``); stop ends
the group's loop. The prefix cache (``group.prefix_cache``) adds three, each with an
entry id in ``rows``: restore (every rank starts the job from its own snapshot of that
entry), snapshot (every rank keeps its caches, at the prompt's end, under that id) and
forget (every rank drops that id; -1: all).
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx

from .traffic import Traffic

FORWARD = 1
STOP = 2
TRAFFIC = 3
RESET = 4
PARK = 5
RESTORE = 6
SNAPSHOT = 7
FORGET = 8


@dataclass(frozen=True)
class Command:
    op: int
    rows: int = 0
    begin_width: int = 0
    end_kept: int = -1

    def encode(self) -> mx.array:
        return mx.array([self.op, self.rows, self.begin_width, self.end_kept + 1], dtype=mx.int32)


def exchange(command: Command | None, group: mx.distributed.Group,
             traffic: Traffic | None = None) -> Command:
    """Rank 0 passes its command (and counts it), the others ``None``; every rank gets rank 0's."""
    mine = command.encode() if command else mx.zeros(4, dtype=mx.int32)
    if command and traffic:
        traffic.count(mine)
    op, rows, begin_width, end_kept = mx.distributed.all_sum(mine, group=group).tolist()
    return Command(op, rows, begin_width, end_kept - 1)
