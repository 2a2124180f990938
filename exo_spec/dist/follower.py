"""Ranks > 0: run this stage for every command from rank 0 until it says stop."""

from __future__ import annotations

import mlx.core as mx

from .protocol import STOP, exchange
from .stage_cache import StageCache


def follow(local: StageCache, group: mx.distributed.Group) -> None:
    rank, size = group.rank(), group.size()
    stage = local.stage
    fed = None  # this stage's inputs of the last forward, to close its round
    while True:
        command = exchange(None, group)
        if command.end_kept >= 0:
            local.end_round(fed, command.end_kept)
        if command.op == STOP:
            return
        if command.begin_width:
            local.begin_round(command.begin_width)
        x = mx.distributed.recv((1, command.rows, stage.hidden_size), stage.wire_dtype,
                                rank - 1, group=group)
        out = local.model(x, local.cache)
        mx.eval(mx.distributed.send(out, (rank + 1) % size, group=group))
        fed = x[0]
