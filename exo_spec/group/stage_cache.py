"""A pipeline stage with its own rewindable cache.

The round bookkeeping and ``reset`` are CachedModel's own: they only need
``cache``, ``_rounds``, ``replayed_tokens``, ``_new_cache()``
and ``model(x, cache=)``, which here runs this rank's layers. Every forward of
the stage between ``begin_round`` and ``end_round`` goes through ``model``, so
GatedDeltaNet layers on every rank record their per-token state and are rewound
in place, without a replay. A replay (a rotating cache that wrapped, other
non-trimmable state) feeds the stage's own inputs of that round again (token ids
on rank 0, the received hidden rows elsewhere), so no rank needs another rank to
repair its state.
"""

from __future__ import annotations

import mlx.core as mx

from ..engine.cached_model import CachedModel, make_cache
from .pipeline import Stage


class StageCache:
    begin_round = CachedModel.begin_round
    end_round = CachedModel.end_round
    drop_round = CachedModel.drop_round
    _rewind = CachedModel._rewind
    reset = CachedModel.reset

    def __init__(self, stage: Stage, max_kv_size: int | None = None):
        self.stage = stage
        self._max_kv_size = max_kv_size
        self._rounds = []
        self.reset()

    def _new_cache(self) -> list:
        return make_cache(self.stage.model, self._max_kv_size)

    def model(self, x: mx.array, cache: list) -> mx.array:
        return self.stage.forward(x, cache)
