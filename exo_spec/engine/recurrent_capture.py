"""Rewind GatedDeltaNet caches to any position of a round without feeding it again.

Why: a GatedDeltaNet layer (mlx-lm's qwen3_5 / qwen3_next hybrids) keeps an
``ArraysCache`` of [conv state, recurrent state] that cannot be trimmed. Without
this module a round with rejected drafts is repaired by restoring a snapshot and
feeding the kept tokens through the whole model again: a second forward per
rejected round, which on a GPU costs as much as the verify itself.

How: while a cache is *armed* (``arm(cache, width)`` .. ``Capture.disarm()``), every
forward through an mlx-lm GatedDeltaNet layer that owns that cache records

* the recurrent state after every fed token: the ``gated_delta_update`` that the
  layer's module calls is swapped for one that runs mlx-lm's own
  ``gated_delta_update`` once per time step (S <= k+1 calls), threading the state
  and keeping each step's; it returns what the original returns (all outputs,
  final state). One-token steps are also what plain decoding computes;
* the new conv-input rows: the layer hands its whole conv input (conv state ++ new
  rows) to ``self.conv1d``; ``nn.Conv1d.__call__`` records it while that layer's
  call is current.

The layer call is matched to its cache by swapping the layer class's ``__call__``
for a wrapper that marks the layer and its armed cache as current around the
original call. ``Capture.rewind(kept)`` then sets the conv state and recurrent
state after ``kept`` tokens directly (``rewind_rows``: a batch's row b after its own
``kept[b]``, by one gather); no mlx-lm layer code is copied. A cache that
no captured layer recorded every token of (an SSM cache of another model type) is
not ``complete`` and the caller falls back to a replay.

The patches exist only while some cache is armed (several models may have rounds
open at once, e.g. a drafter around the target's verify) and are removed when the
last one is disarmed. Nothing here evaluates or reads back an array.
"""

from __future__ import annotations

import sys
import threading

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.cache import ArraysCache

# (module, GatedDeltaNet class name) pairs whose layers are captured.
_LAYERS = (("mlx_lm.models.qwen3_5", "GatedDeltaNet"),
           ("mlx_lm.models.qwen3_next", "Qwen3NextGatedDeltaNet"))

_lock = threading.Lock()
_armed: dict[int, Capture] = {}  # id(cache) -> its capture
_undo: list = []  # how to remove the installed patches
_current = threading.local()  # .value: (capture, layer, tokens fed) in an armed layer's call


def records(module: nn.Module) -> bool:
    """Whether ``module`` is a GatedDeltaNet layer whose calls an armed cache records."""
    cls = type(module)
    return (cls.__module__, cls.__name__) in _LAYERS


def can_capture(cache) -> bool:
    """A cache this module can rewind: a two-array ``ArraysCache`` not in batched
    right-padded mode (``lengths`` changes how the conv state is kept)."""
    return isinstance(cache, ArraysCache) and len(cache.cache) == 2 and cache.lengths is None


class Capture:
    """What one armed cache saw during a round of ``width`` tokens."""

    def __init__(self, cache: ArraysCache, width: int):
        self.cache = cache
        self.width = width
        self._start = list(cache.cache)  # conv state, recurrent state (either may be None)
        self._conv: list[mx.array] = []  # first conv input whole, then only new rows
        self._conv_rows = 0
        self._keep = 0  # conv rows a state holds (conv_kernel_size - 1)
        self._states: list[mx.array] = []  # recurrent state after each token
        self._overflow = False  # more tokens than announced: give up, free memory

    def complete(self, fed: int) -> bool:
        """Whether each of the ``fed`` tokens of the round was recorded, once, by a
        captured layer (a cache of some other layer type records nothing)."""
        return not self._overflow and len(self._states) == self._conv_rows == fed

    def rewind(self, kept: int) -> None:
        """Set the cache to its state after the first ``kept`` tokens of the round."""
        fed = len(self._states)
        if kept == fed:
            return
        if kept == 0:
            self.cache.cache = list(self._start)
        else:
            rows = mx.concatenate(self._conv, axis=1)
            self.cache[0] = mx.contiguous(rows[:, kept : kept + self._keep])
            self.cache[1] = self._states[kept - 1]
        self.cache.advance(kept - fed)  # undo the layer's advance() for the dropped tokens

    def rewind_rows(self, kept: list[int]) -> None:
        """Of a batched cache (B rows), set row b to its state after its first
        ``kept[b]`` tokens of the round, on the device: the conv window by one gather
        at per-row offsets, the recurrent state by taking row b of the state after its
        own count (B slices: no stack of every token's state). Does not ``advance``:
        a batched cache keeps its padding itself (``batch.ragged_arrays``)."""
        fed = len(self._states)
        if all(n == fed for n in kept):
            return
        rows = mx.concatenate(self._conv, axis=1)  # (B, conv rows kept + fed, C)
        positions = mx.array(kept)[:, None, None] + mx.arange(self._keep)[None, :, None]
        self.cache[0] = mx.take_along_axis(rows, positions, axis=1)
        start = self._start[1] if self._start[1] is not None else mx.zeros_like(self._states[0])
        after = [start, *self._states]  # the state after 0, 1, .. fed tokens
        self.cache[1] = mx.concatenate([after[n][b : b + 1] for b, n in enumerate(kept)])

    def disarm(self) -> None:
        with _lock:
            if _armed.get(id(self.cache)) is self:
                del _armed[id(self.cache)]
                if not _armed:
                    _uninstall()

    def _record_conv(self, conv_input: mx.array, new_rows: int) -> None:
        if self._overflow_on(self._conv_rows + new_rows):
            return
        if not self._conv:
            self._keep = conv_input.shape[1] - new_rows
            self._conv.append(conv_input)
        else:
            self._conv.append(conv_input[:, -new_rows:])
        self._conv_rows += new_rows

    def _record_state(self, state: mx.array) -> None:
        if not self._overflow_on(len(self._states) + 1):
            self._states.append(state)

    def _overflow_on(self, count: int) -> bool:
        if count > self.width:
            self._overflow = True
            self._conv, self._states = [], []
        return self._overflow


def arm(cache: ArraysCache, width: int) -> Capture:
    """Start recording what the model does to ``cache`` over the next ``width`` tokens."""
    capture = Capture(cache, width)
    with _lock:
        if not _armed:
            _install()
        _armed[id(cache)] = capture
    return capture


def _install() -> None:
    _patch(nn.Conv1d, "__call__", _conv_call(nn.Conv1d.__call__))
    for module_name, class_name in _LAYERS:
        module = sys.modules.get(module_name)  # not imported: no such model exists
        if module is None:
            continue
        layer = getattr(module, class_name)
        _patch(layer, "__call__", _layer_call(layer.__call__))
        _patch(module, "gated_delta_update", _stepwise(module.gated_delta_update))


def _uninstall() -> None:
    while _undo:
        _undo.pop()()


def _patch(owner, name: str, value) -> None:
    had = name in vars(owner)
    old = vars(owner).get(name)
    setattr(owner, name, value)
    _undo.append(lambda: setattr(owner, name, old) if had else delattr(owner, name))


def _layer_call(original):
    def call(self, inputs, mask=None, cache=None):
        capture = _armed.get(id(cache)) if cache is not None else None
        if capture is None or capture.cache is not cache:
            return original(self, inputs, mask, cache)
        outer = getattr(_current, "value", None)
        _current.value = (capture, self, inputs.shape[1])
        try:
            return original(self, inputs, mask, cache)
        finally:
            _current.value = outer

    return call


def _conv_call(original):
    def call(self, x):
        current = getattr(_current, "value", None)
        if current is not None and current[1].conv1d is self:
            capture, _, new_rows = current
            capture._record_conv(x, new_rows)
        return original(self, x)

    return call


def _stepwise(original):
    def update(q, k, v, a, b, A_log, dt_bias, state=None, mask=None, **kwargs):
        current = getattr(_current, "value", None)
        if current is None:
            return original(q, k, v, a, b, A_log, dt_bias, state, mask, **kwargs)
        capture = current[0]
        ys = []
        for t in range(q.shape[1]):
            step = slice(t, t + 1)
            y, state = original(q[:, step], k[:, step], v[:, step], a[:, step], b[:, step],
                                A_log, dt_bias, state,
                                None if mask is None else mask[:, step], **kwargs)
            ys.append(y)
            capture._record_state(state)
        return mx.concatenate(ys, axis=1), state

    return update
