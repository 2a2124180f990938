"""One model's ragged caches (every layer's) over the rows of a batch: rows join
prefilled alone, are fed together, rewound row by row, and leave."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from ...models.heads import body_and_head
from ..target import PREFILL_CHUNK
from .ragged_cache import RaggedKVCache, make_ragged_cache


class BatchCache:
    def __init__(self, model: nn.Module):
        make_ragged_cache(model)  # refuses a model whose layers it cannot rewind per row
        self.model = model
        self._body, self._head = body_and_head(model)
        self.layers: list[RaggedKVCache] | None = None  # None while no row is in

    @property
    def rows(self) -> int:
        return 0 if self.layers is None else self.layers[0].offset.shape[0]

    def add(self, prompts: list[list[int]]) -> mx.array:
        """Prefill new last rows with ``prompts``, together on caches of their own
        (left-padded, in chunks of PREFILL_CHUNK, each evaluated before the next is
        built), then append them; each one's last position's logits (n, V)."""
        width = max(map(len, prompts))
        cache = make_ragged_cache(self.model, [width - len(p) for p in prompts])
        tokens = mx.array([[0] * (width - len(p)) + p for p in prompts], mx.uint32)
        for start in range(0, width, PREFILL_CHUNK):
            h = self._body(tokens[:, start : start + PREFILL_CHUNK], cache=cache)
            mx.eval(h[:, -1], [c.state for c in cache])
        if self.layers is None:
            self.layers = cache
        else:
            for mine, new in zip(self.layers, cache, strict=True):
                mine.extend(new)
        return self._head(h[:, -1])

    def __call__(self, tokens: mx.array) -> mx.array:
        """Logits (B, S, V) for ``tokens`` (B, S)."""
        return self.model(tokens, cache=self.layers)

    def last_logits(self, tokens: mx.array) -> mx.array:
        """Feed ``tokens`` (B, S); logits (B, V) of the last column only."""
        h = self._body(tokens, cache=self.layers)
        return self._head(h[:, -1])

    def pad(self, counts: list[int]) -> None:
        """Row b's next ``counts[b]`` input columns are left padding."""
        for c in self.layers:
            c.pad(counts)

    def keep(self, kept: list[int], width: int) -> None:
        """Of the last ``width`` slots written, row b keeps its first ``kept[b]``."""
        for c in self.layers:
            c.keep(kept, width)

    def filter(self, rows: list[int]) -> None:
        """Keep the rows ``rows``, in that order."""
        if not rows:
            self.layers = None
            return
        for c in self.layers:
            c.filter(rows)
