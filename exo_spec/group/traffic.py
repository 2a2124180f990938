"""What the ranks of a group send each other, counted where it is sent.

Payload bytes and messages: a command or a token broadcast counts once (rank 0's
array), a hidden-row send once per hop. Collectives inside a tensor-parallel
model's own forward are not counted.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx


@dataclass
class Traffic:
    bytes: int = 0
    messages: int = 0

    def count(self, array: mx.array) -> None:
        self.bytes += array.nbytes
        self.messages += 1

    def total(self, group: mx.distributed.Group) -> Traffic:
        """Every rank's counts summed; every rank must call it (not counted itself)."""
        mine = mx.array([self.bytes, self.messages], dtype=mx.int64)
        total, messages = mx.distributed.all_sum(mine, group=group).tolist()
        return Traffic(total, messages)

    def __sub__(self, other: Traffic) -> Traffic:
        return Traffic(self.bytes - other.bytes, self.messages - other.messages)
