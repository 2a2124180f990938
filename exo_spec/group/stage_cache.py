"""A pipeline stage with its own rewindable caches.

Every forward of the stage between ``begin`` and ``end`` of a round goes through
``__call__``, so GatedDeltaNet layers on every rank record their per-token state
and are rewound in place, without a replay. A replay (a rotating cache that
wrapped, other non-trimmable state) feeds the stage's own inputs of that round
again (token ids on rank 0, the received hidden rows elsewhere), so no rank needs
another rank to repair its state.
"""

from __future__ import annotations

import mlx.core as mx

from ..engine.cached_model import make_cache
from ..engine.round_cache import RoundCache
from .pipeline import Stage


class StageCache:
    def __init__(self, stage: Stage, max_kv_size: int | None = None):
        self.stage = stage
        self.rounds = RoundCache(lambda: make_cache(stage.model, max_kv_size), stage.forward)

    def __call__(self, x: mx.array) -> mx.array:
        """The stage's output (1, S, H) for its input ``x`` (see ``Stage``), on its caches."""
        return self.stage.forward(x, self.rounds.cache)
