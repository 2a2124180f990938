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

from dataclasses import dataclass

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
    chains_rounds = True  # a round may begin before the previous one ends

    def __init__(self, model: nn.Module, *, max_kv_size: int | None = None):
        self.model = model
        self._max_kv_size = max_kv_size
        self._body, self._head = body_and_head(model)
        self._rounds: list[_Round] = []
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
        """Call before feeding ``width`` tokens that may be partly rejected. Rounds
        already open stay open: the caller may start the next round before reading
        the accept decision of this one, assuming it keeps every token. The oldest
        round is closed first: ``end_round`` when it kept them all, else
        ``undo_round`` for every later one and then ``end_round``."""
        if self._rounds:
            self._rounds[-1].stop_capturing()
        snapshots = {i: _snapshot(c) for i, c in enumerate(self.cache) if _may_lose_trim(c, width)}
        captures = {i: recurrent_capture.arm(self.cache[i], width)
                    for i in snapshots if recurrent_capture.can_capture(self.cache[i])}
        self._rounds.append(_Round(width, snapshots, captures))

    def end_round(self, fed: mx.array, kept: int) -> None:
        """The oldest open round, which fed ``fed``, keeps the first ``kept`` of them."""
        oldest, *later = self._rounds
        if kept < oldest.width and later:
            raise RuntimeError("undo the later rounds before rejecting tokens of an earlier one")
        self._rounds = later
        self._rewind(oldest, kept)
        if kept < oldest.width and oldest.replays:
            self.replayed_tokens += kept
            if kept:
                self.model(fed[None, :kept], cache=self.cache)

    def undo_round(self) -> None:
        """Take back the newest open round whole, as if it had never been fed."""
        self._rewind(self._rounds.pop(), 0)

    def _rewind(self, opened: _Round, kept: int) -> None:
        """Set the caches to ``kept`` tokens into ``opened``, or, when it ``replays``,
        to its start."""
        opened.stop_capturing()
        if kept == opened.width:
            return
        replays = opened.replays
        for i, c in enumerate(self.cache):
            if replays and i in opened.snapshots:
                _restore(c, opened.snapshots[i])
            elif i in opened.captures:
                opened.captures[i].rewind(kept)
            else:
                c.trim(opened.width if replays else opened.width - kept)

    def drop_round(self) -> None:
        """Forget every open round without rewinding anything (and stop capturing)."""
        for opened in self._rounds:
            opened.stop_capturing()
        self._rounds = []


@dataclass
class _Round:
    width: int
    snapshots: dict  # cache index -> its state before the round (caches a trim may not undo)
    captures: dict  # cache index -> recurrent_capture.Capture, for those that can be captured

    @property
    def replays(self) -> bool:
        """Whether rewinding needs the snapshots and a replay: some cache that a trim
        may not undo was not captured token by token."""
        return not all(i in self.captures and self.captures[i].complete(self.width)
                       for i in self.snapshots)

    def stop_capturing(self) -> None:
        for capture in self.captures.values():
            capture.disarm()
