"""How one forward pass runs across the group: rank 0 leads it, the others follow.

``lead(tokens, hidden)`` runs on rank 0 after the command went out and returns
what ``Target.__call__`` returns; ``follow(rows)`` runs on every other rank for a
forward command and returns that rank's own input of the pass (what a replay
after a rejected round feeds again, when a cache needs one: see
``RoundCache.end``).
"""

from __future__ import annotations

import os

import mlx.core as mx

from ..engine.cached_model import CachedModel
from ..engine.cuda import on_cuda
from .stage_cache import StageCache
from .traffic import Traffic


def _eager_hops() -> bool:
    """Whether to evaluate each side of a hop on its own: on MLX's CUDA backend a lazy
    GPU result sent with mx.distributed.send, received back through
    ``mx.depends(recv, send)`` and posted with ``mx.async_eval`` never completes
    (benchmarks/cuda_sendrecv.py reproduces it with no model); changing any one of
    the three avoids it. EXO_SPEC_EAGER_HOPS=0/1 overrides."""
    forced = os.environ.get("EXO_SPEC_EAGER_HOPS")
    if forced is not None:
        return forced not in ("", "0")
    return on_cuda()


class PipelineForward:
    """Hidden rows go 0 -> 1 -> ... -> n-1 -> 0 with send/recv; rank 0 applies the head.

    The ring backend runs send/recv on the CPU stream. On CUDA the hidden rows are
    evaluated before they are sent and what comes back is evaluated before the GPU
    reads it (``_eager_hops``); elsewhere the transfer is posted lazily."""

    def __init__(self, local: StageCache, group: mx.distributed.Group, traffic: Traffic):
        self._local, self._group, self._traffic = local, group, traffic
        self._stage = local.stage
        self._eager = _eager_hops()

    def lead(self, tokens: mx.array, hidden: bool):
        size = self._group.size()
        h = self._local(tokens[None])
        if self._eager:
            mx.eval(h)
        sent = mx.distributed.send(h, 1, group=self._group)
        self._traffic.count(h)
        back = mx.depends(mx.distributed.recv_like(h, size - 1, group=self._group), sent)
        # Post the transfer now: a later command must not overtake it on the wire.
        (mx.eval if self._eager else mx.async_eval)(back)
        h = self._stage.norm(back)
        logits = self._stage.project(h)[0]
        return logits, (h[0] if hidden else None)

    def follow(self, rows: int) -> mx.array:
        rank, size = self._group.rank(), self._group.size()
        stage = self._stage
        x = mx.distributed.recv((1, rows, stage.hidden_size), stage.wire_dtype, rank - 1,
                                group=self._group)
        if self._eager:
            mx.eval(x)
        out = self._local(x)
        if self._eager:
            mx.eval(out)
        self._traffic.count(out)
        mx.eval(mx.distributed.send(out, (rank + 1) % size, group=self._group))
        return x[0]


class TensorForward:
    """Every rank runs the same sharded forward (mlx-lm's ``shard``) on the token ids
    rank 0 broadcasts; the model's own collectives give every rank the same logits,
    and rank 0 decides.

    The broadcast is evaluated before the pass on every rank, so the collectives run
    in the same order everywhere: command, token ids, then the pass (with any
    replay of the previous round, which rank 0 queued lazily and followers queue
    when the command arrives).
    """

    def __init__(self, local: CachedModel, group: mx.distributed.Group, traffic: Traffic):
        self._local, self._group, self._traffic = local, group, traffic

    def lead(self, tokens: mx.array, hidden: bool):
        ids = tokens.astype(mx.int32)
        self._traffic.count(ids)
        mx.eval(mx.distributed.all_sum(ids, group=self._group))
        return self._local(tokens, hidden=hidden)

    def follow(self, rows: int) -> mx.array:
        ids = mx.distributed.all_sum(mx.zeros(rows, dtype=mx.int32), group=self._group)
        tokens = ids.astype(mx.uint32)
        mx.eval(tokens)
        mx.eval(self._local(tokens)[0])
        return tokens
