"""A model with its own cache that can be rewound after speculation.

The target (and a separate drafter) use it the same way: a round feeds
``[last, d1..dk]`` and then keeps only ``[last, d1..dn]``.
Trimmable caches (KVCache, QuantizedKVCache, RotatingKVCache before it wraps)
drop the rejected tail. GatedDeltaNet caches of mlx-lm's qwen3_5 / qwen3_next
hybrids record their state after every token of the round
(``recurrent_capture``) and are set to the state after the kept tokens, so a
rejection costs no extra forward. Other state that cannot be trimmed (SSM
``ArraysCache`` of other models, a rotating cache that wraps during the round) is
snapshotted before the round; after a rejection every cache goes back to the
round's start and the kept tokens are fed again (``replayed_tokens`` counts them),
so every cache ends exactly at the accepted position.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.cache import ArraysCache, KVCache, RotatingKVCache, make_prompt_cache

from ..models.heads import body_and_head
from . import recurrent_capture


def _may_lose_trim(cache, width: int) -> bool:
    if isinstance(cache, RotatingKVCache):
        return cache.offset + width >= cache.max_size
    return not cache.is_trimmable()


def _copy(x):
    return mx.array(x) if isinstance(x, mx.array) else x


def _snapshot(cache):
    if isinstance(cache, ArraysCache):
        return list(cache.cache)
    # mlx-lm 0.32 keeps a RotatingKVCache's offsets in ``state`` and has no ``meta_state``.
    return tuple(_copy(x) for x in cache.state), getattr(cache, "meta_state", None)


def _restore(cache, snapshot) -> None:
    if isinstance(cache, ArraysCache):
        cache.cache = list(snapshot)
        return
    state, meta = snapshot
    cache.state = state
    if meta is not None:
        cache.meta_state = meta


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
    def __init__(self, model: nn.Module, *, max_kv_size: int | None = None):
        self.model = model
        self._max_kv_size = max_kv_size
        self._body, self._head = body_and_head(model)
        self._captures: dict[int, recurrent_capture.Capture] = {}
        self.reset()

    def reset(self) -> None:
        """Empty caches, as for a new job (a round left open is dropped)."""
        self.drop_round()
        self.cache = self._new_cache()
        self.replayed_tokens = 0

    def _new_cache(self) -> list:
        return make_cache(self.model, self._max_kv_size)

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

    def prefill(self, tokens: mx.array, *, hidden: bool = False, step: int = 512, on_progress=None):
        """Feed ``tokens`` in chunks. Returns the last position's logits (V,) and, if
        asked, the hidden states of every position (S, H)."""
        total = tokens.shape[0]
        hiddens = []
        for start in range(0, total, step):
            logits, h = self(tokens[start : start + step], hidden=hidden)
            if hidden:
                hiddens.append(h)
            mx.eval(logits[-1], hiddens, [c.state for c in self.cache])
            if on_progress:
                on_progress(min(start + step, total), total)
        return logits[-1], (mx.concatenate(hiddens) if hidden else None)

    def begin_round(self, width: int) -> None:
        """Call before feeding ``width`` tokens that may be partly rejected."""
        self.drop_round()
        self._snapshots = {
            i: _snapshot(c) for i, c in enumerate(self.cache) if _may_lose_trim(c, width)
        }
        self._captures = {i: recurrent_capture.arm(self.cache[i], width)
                          for i in self._snapshots if recurrent_capture.can_capture(self.cache[i])}

    def end_round(self, fed: mx.array, kept: int) -> None:
        """Keep the first ``kept`` of the ``fed`` tokens of this round."""
        snapshots, captures = self._snapshots, self._captures
        self.drop_round()
        width = fed.shape[0]
        rejected = width - kept
        if rejected == 0:
            return
        if all(i in captures and captures[i].complete(width) for i in snapshots):
            for i, c in enumerate(self.cache):
                if i in captures:
                    captures[i].rewind(kept)
                else:
                    c.trim(rejected)
            return
        for i, c in enumerate(self.cache):
            if i in snapshots:
                _restore(c, snapshots[i])
            else:
                c.trim(width)
        self.replayed_tokens += kept
        if kept:
            self.model(fed[None, :kept], cache=self.cache)

    def drop_round(self) -> None:
        """Forget an open round without rewinding anything (and stop capturing)."""
        for capture in self._captures.values():
            capture.disarm()
        self._snapshots, self._captures = {}, {}
