"""A model on this machine with its own caches, rewound after speculation
(``round_cache``). The target and a separate drafter use it the same way; either may
start a job from restored caches (``adopt``, see ``prefix_cache``)."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.cache import KVCache, RotatingKVCache, make_prompt_cache

from ..models.heads import body_and_head
from .round_cache import RoundCache
from .target import prefill


def make_cache(model: nn.Module, max_kv_size: int | None = None) -> list:
    """mlx-lm's cache for ``model`` (any object whose ``layers`` make their own).
    mlx-lm ignores max_kv_size for models that make their own caches; we bound every
    full-attention layer, keeping the first tokens as mlx-lm does."""
    cache = make_prompt_cache(model)
    if max_kv_size:
        cache = [RotatingKVCache(max_kv_size, keep=4) if type(c) is KVCache else c
                 for c in cache]
    return cache


class CachedModel:
    chains_rounds = True

    def __init__(self, model: nn.Module, *, max_kv_size: int | None = None):
        self.model = model
        self._body, self._head = body_and_head(model)
        self.rounds = RoundCache(lambda: make_cache(model, max_kv_size),
                                 lambda x, cache: model(x, cache=cache))

    @property
    def cache(self) -> list:
        return self.rounds.cache

    def __call__(self, tokens: mx.array, hidden: bool = False):
        """Logits (S, V) for ``tokens`` (S,), and the final hidden states (S, H) if
        asked, else None."""
        if not hidden:
            return self.model(tokens[None], cache=self.cache)[0], None
        h = self._body(tokens[None], cache=self.cache)
        return self._head(h)[0], h[0]

    def last_logits(self, tokens: mx.array) -> mx.array:
        """Feed ``tokens`` (S,); logits (1, V) of the last position only, so catching
        up on many tokens does not pay for S rows of the lm_head."""
        h = self._body(tokens[None], cache=self.cache)
        return self._head(h[:, -1:])[0]

    def prefill(self, tokens: mx.array, *, hidden: bool = False, start: int = 0):
        return prefill(self, self.cache, tokens, hidden=hidden, start=start)

    def adopt(self, caches: list) -> None:
        """Go on from ``caches`` (a prefix-cache hit's, of this model's layout) instead of
        the caches it holds; a round left open is dropped, not closed."""
        self.rounds.drop()
        self.rounds.cache = caches

    def begin_round(self, width: int) -> None:
        self.rounds.begin(width)

    def end_round(self, fed: mx.array, kept: int) -> None:
        self.rounds.end(fed, kept)

    def undo_round(self) -> None:
        self.rounds.undo()
