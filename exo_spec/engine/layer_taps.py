"""The outputs of chosen layers of an mlx-lm model, captured as it runs.

For the span of one forward the body's ``layers`` list holds stand-ins for the tapped
layers that run the layer and keep its output, so any body that iterates its
``layers`` (every mlx-lm text model; qwen3_5's ``pipeline_layers`` slices the same
list) is tapped without a copy of its code. Attribute reads the body makes of a
layer (``is_linear``, ``use_sliding``) go through to the layer.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn


class _Tap:
    def __init__(self, layer: nn.Module, index: int, outputs: dict[int, mx.array]):
        self._layer, self._index, self._outputs = layer, index, outputs

    def __call__(self, *args, **kwargs):
        out = self._layer(*args, **kwargs)
        self._outputs[self._index] = out[0] if isinstance(out, tuple) else out
        return out

    def __getattr__(self, name: str):
        return getattr(self._layer, name)


def tapped(body: nn.Module, layer_ids: list[int], inputs: mx.array, cache: list
           ) -> tuple[mx.array, mx.array]:
    """Run ``body`` on ``inputs`` (1, S) with ``cache``: its final-normed states (1, S, H)
    and the outputs of ``layer_ids`` concatenated in that order (1, S, len * H). The last
    layer's output is taken after the final norm, as transformers' ``hidden_states``
    give it (what DFlash drafters were trained on)."""
    layers = body.layers
    last = len(layers) - 1
    outputs: dict[int, mx.array] = {}
    body.layers = [_Tap(layer, i, outputs) if i in layer_ids and i != last else layer
                   for i, layer in enumerate(layers)]
    try:
        h = body(inputs, cache=cache)
    finally:
        body.layers = layers
    return h, mx.concatenate([h if i == last else outputs[i] for i in layer_ids], axis=-1)
