"""Rank 0's view of a pipeline group: a target with CachedModel's interface.

Per call: one command (``protocol.exchange``), then the hidden rows go
0 -> 1 -> ... -> n-1 -> 0 with send/recv, and rank 0 applies the head.
"""

from __future__ import annotations

import mlx.core as mx

from ..spec.cached_model import CachedModel
from .protocol import FORWARD, STOP, Command, exchange
from .stage_cache import StageCache


class GroupTarget:
    prefill = CachedModel.prefill

    def __init__(self, local: StageCache, group: mx.distributed.Group):
        self._local = local
        self._stage = local.stage
        self._group = group
        self.model = local.stage.model
        self.cache = local.cache
        self._begin_width = 0
        self._end_kept = -1

    @property
    def replayed_tokens(self) -> int:
        return self._local.replayed_tokens

    def _last_hidden(self, tokens: mx.array) -> mx.array:
        """The last rank's raw hidden rows (1, S, H) for ``tokens`` (S,)."""
        exchange(Command(FORWARD, tokens.shape[0], self._begin_width, self._end_kept),
                 self._group)
        self._begin_width, self._end_kept = 0, -1
        size = self._group.size()
        h = self._local.model(tokens[None], self.cache)
        sent = mx.distributed.send(h, 1, group=self._group)
        back = mx.depends(mx.distributed.recv_like(h, size - 1, group=self._group), sent)
        # Post the transfer now: a later command must not overtake it on the wire.
        mx.async_eval(back)
        return back

    def __call__(self, tokens: mx.array, hidden: bool = False):
        h = self._stage.norm(self._last_hidden(tokens))
        logits = self._stage.project(h)[0]
        return (logits, h[0]) if hidden else logits

    def last_logits(self, tokens: mx.array) -> mx.array:
        return self._stage.head(self._last_hidden(tokens)[:, -1:])[0]

    def begin_round(self, width: int) -> None:
        self._local.begin_round(width)
        self._begin_width = width

    def end_round(self, fed: mx.array, kept: int) -> None:
        self._local.end_round(fed, kept)
        self._end_kept = kept

    def close(self) -> None:
        """Release the followers."""
        exchange(Command(STOP), self._group)
