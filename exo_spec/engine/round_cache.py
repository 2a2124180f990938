"""A model's caches and the speculative rounds open on them.

A round feeds ``[last, d1..dk]`` and then keeps only ``[last, d1..dn]``.
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

from collections.abc import Callable
from dataclasses import dataclass

import mlx.core as mx
from mlx_lm.models.cache import ArraysCache, RotatingKVCache

from . import recurrent_capture


class RoundCache:
    """``cache``: the caches of one model's layers (or of one pipeline stage's);
    ``new_cache()`` makes them empty; ``feed(x, cache)`` runs those layers on a batch
    of inputs (1, S, ...), which a replay calls."""

    def __init__(self, new_cache: Callable[[], list], feed: Callable[[mx.array, list], object]):
        self._new_cache = new_cache
        self._feed = feed
        self._rounds: list[_Round] = []
        self.reset()

    def reset(self) -> None:
        """Empty caches, as for a new job (a round left open is dropped)."""
        self.drop()
        self.cache = self._new_cache()
        self.replayed_tokens = 0

    def begin(self, width: int) -> None:
        """Call before feeding ``width`` tokens that may be partly rejected. Rounds
        already open stay open: the caller may start the next round before reading
        the accept decision of this one, assuming it keeps every token. The oldest
        round is closed first: ``end`` when it kept them all, else ``undo`` for every
        later one and then ``end``."""
        if self._rounds:
            self._rounds[-1].stop_capturing()
        snapshots = {i: _snapshot(c) for i, c in enumerate(self.cache) if _may_lose_trim(c, width)}
        captures = {i: recurrent_capture.arm(self.cache[i], width)
                    for i in snapshots if recurrent_capture.can_capture(self.cache[i])}
        self._rounds.append(_Round(width, snapshots, captures))

    def end(self, fed: mx.array, kept: int) -> None:
        """The oldest open round, which fed ``fed``, keeps the first ``kept`` of them."""
        oldest, *later = self._rounds
        if kept < oldest.width and later:
            raise RuntimeError("undo the later rounds before rejecting tokens of an earlier one")
        self._rounds = later
        self._close(oldest, fed, kept)

    def end_newest(self, fed: mx.array, kept: int) -> None:
        """The newest open round, which fed ``fed``, keeps the first ``kept`` of them
        (nothing was fed after it, so the rounds before it stay open as they are)."""
        self._close(self._rounds.pop(), fed, kept)

    def _close(self, opened: _Round, fed: mx.array, kept: int) -> None:
        self._rewind(opened, kept)
        if kept < opened.width and opened.replays:
            self.replayed_tokens += kept
            if kept:
                self._feed(fed[None, :kept], self.cache)

    def undo(self) -> None:
        """Take back the newest open round whole, as if it had never been fed."""
        self._rewind(self._rounds.pop(), 0)

    def drop(self) -> None:
        """Forget every open round without rewinding anything (and stop capturing)."""
        for opened in self._rounds:
            opened.stop_capturing()
        self._rounds = []

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


def _may_lose_trim(cache, width: int) -> bool:
    if isinstance(cache, RotatingKVCache):
        return cache.offset + width >= cache.max_size
    return not cache.is_trimmable()


def _copy(x):
    return mx.array(x) if isinstance(x, mx.array) else x


def _snapshot(cache):
    if isinstance(cache, ArraysCache):
        return list(cache.cache)
    # Some mlx-lm versions keep a RotatingKVCache's offsets in ``state`` and give it
    # no ``meta_state``.
    return tuple(_copy(x) for x in cache.state), getattr(cache, "meta_state", None)


def _restore(cache, snapshot) -> None:
    if isinstance(cache, ArraysCache):
        cache.cache = list(snapshot)
        return
    state, meta = snapshot
    cache.state = state
    if meta is not None:
        cache.meta_state = meta
