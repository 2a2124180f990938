"""Deep, independent copies of mlx-lm caches, to keep a sequence's state past its job.

``clone(cache)`` returns a cache of the same class holding fresh copies of every
array, so nothing done to either one afterwards reaches the other. mlx-lm's caches
change only by rebinding attributes or by ``__setitem__`` on the Python array
objects they hold (``KVCache.update_and_fetch`` writes into its buffer so), which is
why sharing the array objects would not do, even though MLX never writes into a
buffer that another array still reads.

- **Copies** are ``mx.array(a)``: on MLX (>= 0.32) a lazy copy into a new buffer,
  computed on the device with the rest of the graph, with no host sync (``mx.contiguous``
  and ``astype`` hand back the same buffer when they can; a numpy round trip would
  sync). ``tests/test_prefix_cache.py`` checks that copies own their memory.
- **KV caches** (``KVCache``, ``QuantizedKVCache``, ``ChunkedKVCache``, a
  ``RotatingKVCache`` that has dropped no token yet) are copied cut to their live part:
  mlx-lm preallocates 256 positions at a time, and the copy keeps no slack. Where
  ``can_cut`` they may also be cut to any shorter length (``clone(cache, length=m)``),
  which is exactly the cache of the first ``m`` tokens: keys and values of a position
  never depend on later ones. deepseek_v3's MLA caches are plain ``KVCache``s (the
  latent as keys, the rope part as values).
- **A RotatingKVCache that has dropped tokens** is copied whole (its buffer is bounded
  by the window) with its write position: a faithful copy, but only at its own end.
- **Everything else** (``ArraysCache``: GatedDeltaNet conv and recurrent state, Mamba
  state; ``CacheList``, recursively; any other ``_BaseCache``) gets every array in its
  attributes copied and every other attribute kept: its state is only valid at the
  exact position where it was taken.

Aliases are kept: a cache object (or array) that appears twice in what is cloned in
one call is cloned once and appears twice in the result.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
from mlx_lm.models.cache import (
    CacheList,
    ChunkedKVCache,
    KVCache,
    QuantizedKVCache,
    RotatingKVCache,
    _BaseCache,
)

_POSITIONED = (KVCache, QuantizedKVCache, RotatingKVCache, ChunkedKVCache)


def length(cache) -> int | None:
    """Tokens ``cache`` has seen (its ``offset``); None for state that keeps no position
    (an ``ArraysCache``). A ``CacheList`` answers for its first positioned member."""
    if isinstance(cache, CacheList):
        lengths = [n for n in map(length, cache.caches) if n is not None]
        return lengths[0] if lengths else None
    if isinstance(cache, _POSITIONED):
        return cache.offset
    return None


def can_cut(cache) -> bool:
    """Whether ``clone(cache, length=m)`` may cut ``cache`` to any ``m`` up to its
    length: its buffer holds every token it saw, in order."""
    if isinstance(cache, CacheList):
        return all(can_cut(c) for c in cache.caches)
    if isinstance(cache, RotatingKVCache):
        return cache._idx == cache.offset  # never wrapped (nor rewound after wrapping)
    if isinstance(cache, ChunkedKVCache):
        return cache.start_position == 0
    return isinstance(cache, (KVCache, QuantizedKVCache))


def sink_window(cache) -> int | None:
    """The window of a ``RotatingKVCache`` that keeps its first tokens (``keep`` > 0, as
    ``cached_model.make_cache(model, max_kv_size)`` builds), the smallest one in a
    ``CacheList``; None otherwise. Past that many tokens such a cache's contents depend
    on how the tokens were fed (mlx-lm masks a multi-token feed as if the kept tokens
    sat just before the window), so a sequence that long, resumed from a copy, is not
    the same as the sequence fed from scratch in other chunks. A cache with ``keep`` 0
    is an exact sliding window, however it was fed."""
    if isinstance(cache, CacheList):
        windows = [w for w in map(sink_window, cache.caches) if w is not None]
        return min(windows, default=None)
    if isinstance(cache, RotatingKVCache) and cache.keep > 0:
        return cache.max_size
    return None


def layout(caches: list) -> tuple:
    """What a list of caches is made of, for telling whether restored caches fit a model
    built with other settings (a ``max_kv_size``, a quantized cache): each cache's type,
    and a rotating cache's window and kept tokens, a quantized one's bits."""
    def one(c):
        if isinstance(c, CacheList):
            return ("CacheList", tuple(map(one, c.caches)))
        if isinstance(c, RotatingKVCache):
            return ("RotatingKVCache", c.max_size, c.keep)
        if isinstance(c, QuantizedKVCache):
            return ("QuantizedKVCache", c.bits, c.group_size)
        return (type(c).__name__,)

    return tuple(map(one, caches))


def clone(cache, length: int | None = None, memo: dict | None = None):
    """A fresh, independent copy of one mlx-lm cache; with ``length``, cut to its first
    ``length`` tokens (only where ``can_cut``). ``memo``: id -> clone, shared across
    the calls that copy one list so aliases stay aliases."""
    memo = {} if memo is None else memo
    if length is None and id(cache) in memo:
        return memo[id(cache)]
    if length is not None and not can_cut(cache):
        raise ValueError(f"a {type(cache).__name__} in this state cannot be cut to a prefix")
    fields = vars(cache)
    if isinstance(cache, CacheList):
        overrides = {"caches": tuple(clone(c, length, memo) for c in cache.caches)}
    else:
        overrides = _live(cache, length)
    new = object.__new__(type(cache))
    new.__dict__.update({k: overrides[k] if k in overrides else _clone_value(v, memo)
                         for k, v in fields.items()})
    if length is None:
        memo[id(cache)] = new
    return new


def clone_tree(obj: Any, memo: dict | None = None) -> Any:
    """``obj`` with every cache and array in it (through lists, tuples and dicts)
    cloned; anything else is kept as is."""
    return _clone_value(obj, {} if memo is None else memo)


def arrays(obj: Any) -> list[mx.array]:
    """Every array in ``obj``: caches (their attributes), lists, tuples, dicts."""
    found: dict[int, mx.array] = {}
    seen: set[int] = set()

    def walk(x):
        if isinstance(x, mx.array):
            found[id(x)] = x
        elif id(x) in seen:
            return
        elif isinstance(x, _BaseCache):
            seen.add(id(x))
            walk(list(vars(x).values()))
        elif isinstance(x, (list, tuple)):
            for y in x:
                walk(y)
        elif isinstance(x, dict):
            walk(list(x.values()))

    walk(obj)
    return list(found.values())


def nbytes(obj: Any) -> int:
    """Bytes of the arrays in ``obj`` (each counted once)."""
    return sum(a.nbytes for a in arrays(obj))


def _live(cache, length: int | None) -> dict:
    """Copies of a positioned cache's live keys and values (cut to ``length`` if given),
    and the positions that go with them; {} for other caches."""
    if not isinstance(cache, _POSITIONED) or cache.keys is None:
        if length:
            raise ValueError(f"an empty {type(cache).__name__} has no {length} tokens")
        return {}
    if isinstance(cache, RotatingKVCache) and not can_cut(cache):
        return {}  # wrapped: the whole buffer, in its order (bounded by the window)
    end = cache.offset if length is None else length
    start = cache.start_position if isinstance(cache, ChunkedKVCache) else 0
    if not 0 <= end <= cache.offset:
        raise ValueError(f"cannot cut a cache of {cache.offset} tokens to {end}")

    def cut(x):
        if isinstance(x, (list, tuple)):  # QuantizedKVCache: (packed, scales, biases)
            return type(x)(cut(y) for y in x)
        return _copy(x[..., : end - start, :])

    out = {"keys": cut(cache.keys), "values": cut(cache.values), "offset": end}
    if isinstance(cache, RotatingKVCache):
        out["_idx"] = end
    return out


def _copy(x: mx.array) -> mx.array:
    """A lazy copy of ``x`` into a new buffer of its own, on the device."""
    return mx.array(x)


def _clone_value(v: Any, memo: dict) -> Any:
    if isinstance(v, mx.array):
        if id(v) not in memo:
            memo[id(v)] = _copy(v)
        return memo[id(v)]
    if isinstance(v, _BaseCache):
        return clone(v, None, memo)
    if isinstance(v, list):
        return [_clone_value(x, memo) for x in v]
    if isinstance(v, tuple):
        items = [_clone_value(x, memo) for x in v]
        return type(v)(*items) if hasattr(v, "_fields") else tuple(items)
    if isinstance(v, dict):
        return {k: _clone_value(x, memo) for k, x in v.items()}
    return v
