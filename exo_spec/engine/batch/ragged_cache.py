"""mlx-lm's ``BatchKVCache`` with per-sequence holes, so that a batched verify pass
can keep a different number of tokens in every row.

A verify pass of width W writes W slots in every row; row b keeps its first a_b.
Its other W - a_b slots become holes: a per-row mask (``holes``, on the device)
hides them from attention, and the row's ``offset`` (its RoPE position, an array
per row in ``BatchKVCache``) drops by W - a_b, so mlx-lm's unmodified model code
attends to kept tokens only, at their true positions. The slots every row
rejected are cut off the end at once; the rest cost memory and attention width
until ``compact`` moves each row's holes to its left, where they become left
padding, and cuts the padding all rows share.

The same mask lets one pass feed rows of different lengths: ``pad`` marks a row's
first slots of the next write as holes (its input left-padded there).

Where a row's slots are tokens or not is known on the host (``invalid``), from
the counts the decoder passes in: nothing here reads the device.
"""

from __future__ import annotations

import mlx.core as mx
from mlx_lm.models.cache import BatchKVCache, KVCache

# compact() pays once the padding every row shares is at least this many slots and
# this share of the cache's width: it gathers the whole cache once.
COMPACT_MIN_SLOTS = 32
COMPACT_SHARE = 0.25


class RaggedKVCache(BatchKVCache):
    def __init__(self, left_padding: list[int]):
        super().__init__(left_padding)
        # Per row, the slots below _idx that hold no token: left padding and holes.
        self.invalid = list(left_padding)
        # (B, n) with n >= _idx: True where a slot is a hole. Slots at and past _idx are
        # False, except those ``pad`` marked for the next write.
        self.holes: mx.array | None = None

    def _hole_columns(self, n: int) -> mx.array:
        """``holes`` as exactly n columns (False past what is stored)."""
        rows = self.offset.shape[0]
        holes = self.holes if self.holes is not None else mx.zeros((rows, 0), mx.bool_)
        if holes.shape[1] >= n:
            return holes[:, :n]
        return mx.pad(holes, [(0, 0), (0, n - holes.shape[1])])

    def make_mask(self, N: int, return_array: bool = False, **kwargs):
        mask = super().make_mask(N, **kwargs)
        if self.holes is None:
            return mask
        return mask & ~self._hole_columns(self._idx + N)[:, None, None, :]

    def pad(self, counts: list[int]) -> None:
        """The next write's first ``counts[b]`` slots of row b are padding, not tokens:
        its input is left-padded by that many."""
        width = max(counts, default=0)
        if width == 0:
            return
        marked = mx.arange(width)[None] < mx.array(counts)[:, None]
        holes = self._hole_columns(self._idx + width)
        self.holes = mx.concatenate([holes[:, : self._idx], marked], axis=1)
        # RoPE reads the offset before a write: a row's first token goes where it belongs.
        self.offset = self.offset - mx.array(counts)
        self.invalid = [n + c for n, c in zip(self.invalid, counts, strict=True)]

    def keep(self, kept: list[int], width: int) -> None:
        """Of the last ``width`` slots written, row b keeps its first ``kept[b]``; those
        dropped must have been written as tokens (padding comes first in a write)."""
        dropped = [width - k for k in kept]
        start = self._idx - width
        drop = mx.arange(width)[None] >= mx.array(kept)[:, None]
        holes = self._hole_columns(self._idx)
        self.holes = mx.concatenate([holes[:, :start], holes[:, start:] | drop], axis=1)
        self.offset = self.offset - mx.array(dropped)
        # What every row dropped is cut off the end.
        shared = min(dropped)
        self._idx -= shared
        self.holes = self.holes[:, : self._idx]
        self.invalid = [n + d - shared for n, d in zip(self.invalid, dropped, strict=True)]
        self.maybe_compact()

    def is_trimmable(self) -> bool:
        return False  # the end of a row may be holes: rewind with keep()

    def trim(self, n: int) -> int:
        raise TypeError("a RaggedKVCache is rewound with keep(), per row")

    def maybe_compact(self) -> None:
        shared = min(self.invalid, default=0)
        if shared >= max(COMPACT_MIN_SLOTS, COMPACT_SHARE * self._idx):
            self.compact()

    def compact(self) -> None:
        """Move every row's holes to its left, where they become left padding (one
        gather), and cut off the padding all rows share."""
        if self.keys is None:
            return
        width = self._idx
        slots = mx.arange(width)
        tokens = ~self._hole_columns(width) & (slots[None] >= self.left_padding[:, None])
        # A stable partition: the slots holding no token first, then the tokens, each in order.
        order = mx.argsort(mx.where(tokens, slots + width, slots), axis=1)
        shared = min(self.invalid)
        order = order[:, shared:, None]
        self.keys = mx.take_along_axis(self.keys[..., :width, :], order[:, None], axis=2)
        self.values = mx.take_along_axis(self.values[..., :width, :], order[:, None], axis=2)
        self._idx = width - shared
        self.invalid = [n - shared for n in self.invalid]
        self.left_padding = mx.array(self.invalid)
        self.holes = None

    def filter(self, batch_indices: list[int]) -> None:
        """Keep the rows ``batch_indices`` (host ints), in that order."""
        rows = mx.array(batch_indices)
        if self.keys is not None:
            self.keys = self.keys[rows]
            self.values = self.values[rows]
        if self.holes is not None:
            self.holes = self.holes[rows]
        self.offset = self.offset[rows]
        self.left_padding = self.left_padding[rows]
        self.invalid = [self.invalid[i] for i in batch_indices]
        self.maybe_compact()

    def extend(self, other: RaggedKVCache) -> None:
        """Append ``other``'s rows; the shorter side is left-padded to the longer."""
        width = max(self._idx, other._idx)
        parts = [_shifted(c._hole_columns(c._idx), width - c._idx) for c in (self, other)]
        invalid = [n + width - c._idx for c in (self, other) for n in c.invalid]
        super().extend(other)
        self.holes = mx.concatenate(parts)
        self.invalid = invalid

    def extract(self, idx: int) -> KVCache:
        """Row ``idx`` as mlx-lm's single-sequence cache: its tokens only."""
        width = self._idx
        tokens = ~self._hole_columns(width)[idx] & (mx.arange(width) >= self.left_padding[idx])
        slots = mx.array([i for i, t in enumerate(tokens.tolist()) if t], mx.int32)
        cache = KVCache()
        cache.keys = mx.contiguous(self.keys[idx : idx + 1, :, slots])
        cache.values = mx.contiguous(self.values[idx : idx + 1, :, slots])
        cache.offset = cache.keys.shape[2]
        return cache


def _shifted(holes: mx.array, by: int) -> mx.array:
    return mx.pad(holes, [(0, 0), (by, 0)]) if by else holes
