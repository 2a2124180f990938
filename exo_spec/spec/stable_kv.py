"""Shape-stable attention for verify-width passes on MLX's CUDA backend.

On CUDA, ``mx.fast.scaled_dot_product_attention`` sends every half-precision
call with more than one query row to cuDNN, and caches one cuDNN graph per
exact (query shape, key shape, strides, mask shape). mlx-lm's ``KVCache``
hands attention the keys sliced to the current length, so a pass of width > 1
over a cache that grows by a token or two every round has a key length never
seen before: every verify round builds a new cuDNN graph (tens of ms), while
a width-1 step takes MLX's own vector kernel, which has no per-shape state
(benchmarks/cuda_verify_width.py measures it; docs/BENCHMARKS.md has the numbers).

``StableKVCache`` keeps mlx-lm's storage and growth but, for passes of width
2..MAX_WIDTH, returns the whole preallocated buffer (its length moves in steps
of 256) with an additive mask that hides the unused tail and keeps attention
causal. The key shape then changes once per 256 tokens, not once per round.
Width-1 steps and long prefill chunks are left exactly as mlx-lm runs them.

Only used where it pays: the CUDA backend and half-precision keys (float32
never reaches cuDNN). ``EXO_SPEC_STABLE_KV=1`` forces it on (tests run it on
the CPU to check it computes the same thing), ``=0`` forces it off.
"""

from __future__ import annotations

import os

import mlx.core as mx
from mlx_lm.models.cache import KVCache, create_attention_mask

MAX_WIDTH = 16  # widths above this are prefill chunks: few shapes, keep "causal"
_HALF = (mx.float16, mx.bfloat16)


def wanted() -> bool:
    """Whether caches made now should be shape-stable."""
    forced = os.environ.get("EXO_SPEC_STABLE_KV")
    if forced is not None:
        return forced not in ("", "0")
    cuda = getattr(mx, "cuda", None)
    return bool(cuda and cuda.is_available() and mx.default_device() == mx.gpu)


class StableKVCache(KVCache):
    forced = False  # also for float32 keys (tests)

    def _padded(self, width: int) -> bool:
        """Decided from the state before the update, so every layer's cache (they grow
        in lockstep) and the one the mask is made from agree."""
        return (
            1 < width <= MAX_WIDTH
            and self.keys is not None
            and (self.forced or self.keys.dtype in _HALF)
        )

    def _length_after(self, width: int) -> int:
        """The buffer length once ``width`` more tokens are stored (KVCache's growth)."""
        prev, size = self.offset, self.keys.shape[2]
        if prev + width <= size:
            return size
        steps = (self.step + width - 1) // self.step
        return (prev if prev % self.step else size) + steps * self.step

    def update_and_fetch(self, keys, values):
        padded = self._padded(keys.shape[2])
        k, v = super().update_and_fetch(keys, values)
        if padded:
            return self.keys, self.values
        return k, v

    def make_mask(self, N: int, return_array: bool = False, window_size=None):
        if not self._padded(N):
            return create_attention_mask(N, offset=self.offset, return_array=return_array,
                                         window_size=window_size)
        rows = mx.arange(self.offset, self.offset + N)[:, None]
        cols = mx.arange(self._length_after(N))[None]
        keep = rows >= cols
        if window_size is not None:
            keep = keep & (rows < cols + window_size)
        return mx.where(keep, 0.0, -mx.inf).astype(self.keys.dtype)


def stable(caches: list, force: bool | None = None) -> list:
    """``caches`` with every plain KVCache (still empty) replaced by a StableKVCache
    when ``wanted()`` (or ``force``)."""
    if not (wanted() if force is None else force):
        return caches
    forced = os.environ.get("EXO_SPEC_STABLE_KV") not in (None, "", "0")

    def swap(c):
        if type(c) is not KVCache:
            return c
        s = StableKVCache()
        s.forced = forced or bool(force)
        return s

    return [swap(c) for c in caches]
