"""A pipeline stage with its own rewindable cache.

The round bookkeeping is CachedModel's own ``begin_round``/``end_round``: they
only need ``cache``, ``_snapshots``, ``replayed_tokens`` and ``model(x, cache=)``,
which here runs this rank's layers. A replay after a rejected hybrid round feeds
the stage's own inputs of that round again (token ids on rank 0, the received
hidden rows elsewhere), so no rank needs another rank to repair its state.
"""

from __future__ import annotations

import mlx.core as mx

from ..spec.cached_model import CachedModel, make_cache
from .pipeline import Stage


class StageCache:
    begin_round = CachedModel.begin_round
    end_round = CachedModel.end_round

    def __init__(self, stage: Stage, max_kv_size: int | None = None):
        self.stage = stage
        self._max_kv_size = max_kv_size
        self.reset()

    def reset(self) -> None:
        """Empty caches, as for a new job."""
        self.cache = make_cache(self.stage.model, self._max_kv_size)
        self._snapshots: dict[int, object] = {}
        self.replayed_tokens = 0

    def model(self, x: mx.array, cache: list) -> mx.array:
        return self.stage.forward(x, cache)
