"""One model's ragged caches (every layer's) over the rows of a batch: rows are read
in (their prompts fed, a chunk at a time, on caches of their own), join, are fed
together, rewound row by row, and leave."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.cache import ArraysCache, KVCache

from ...models.heads import body_and_head
from .. import recurrent_capture
from .ragged_arrays import RaggedArraysCache
from .ragged_cache import RaggedKVCache


class PromptFeed:
    """Prompts left-padded to one width, read into caches of their own a chunk at a
    time (``BatchCache.prefill``) until every column is fed and they join."""

    def __init__(self, layers: list, prompts: list[list[int]]):
        self.width = max(map(len, prompts))
        self.padding = [self.width - len(p) for p in prompts]
        self.layers = layers
        self.tokens = mx.array([[0] * pad + p for pad, p in zip(self.padding, prompts,
                                                                 strict=True)], mx.uint32)
        self.fed = 0  # columns fed so far

    @property
    def done(self) -> bool:
        return self.fed == self.width


class BatchCache:
    def __init__(self, model: nn.Module, *, recurrent: bool = True):
        """``recurrent``: whether GatedDeltaNet layers are accepted. Their rows rewind
        after a pass, but only a row's first write may be left-padded
        (``ragged_arrays``), so a model fed padded writes mid-sequence (a drafter's
        catch-up) must have none."""
        self.model = model
        self._recurrent = recurrent
        self._new_layers([0])  # refuses a model whose layers it cannot rewind per row
        self._body, self.head = body_and_head(model)
        self.layers: list[RaggedKVCache | RaggedArraysCache] | None = None  # None: no rows
        self.rows = 0

    def _new_layers(self, left_padding: list[int]) -> list:
        layers = self.model.layers
        caches = self.model.make_cache() if hasattr(self.model, "make_cache") \
            else [KVCache() for _ in layers]
        out, refused = [], set()
        for layer, cache in zip(layers, caches, strict=True):
            if type(cache) is KVCache:
                out.append(RaggedKVCache(left_padding))
            elif self._recurrent and isinstance(cache, ArraysCache) and len(cache.cache) == 2 \
                    and any(recurrent_capture.records(m) for m in layer.modules()):
                out.append(RaggedArraysCache(left_padding))
            else:
                refused.add(type(cache).__name__)
        if refused:
            allowed = "targets of full-attention KVCache and GatedDeltaNet layers only" \
                if self._recurrent else "drafters of full-attention KVCache layers only (a " \
                "drafter's writes are left-padded mid-sequence, which a recurrent layer " \
                "cannot skip)"
            raise ValueError(f"batched decoding supports {allowed}; this model's layers "
                             f"also use {', '.join(sorted(refused))}")
        return out

    def read(self, prompts: list[list[int]]) -> PromptFeed:
        """Start reading ``prompts`` as new rows, on caches of their own."""
        width = max(map(len, prompts))
        return PromptFeed(self._new_layers([width - len(p) for p in prompts]), prompts)

    def prefill(self, feed: PromptFeed, columns: int) -> mx.array:
        """Feed ``feed``'s next ``columns`` columns, evaluated before it returns (a long
        prompt's activations stay bounded); their final hidden states (rows, n, H)."""
        chunk = feed.tokens[:, feed.fed : feed.fed + columns]
        h = self._body(chunk, cache=feed.layers)
        mx.eval(h, [c.state for c in feed.layers])
        feed.fed += chunk.shape[1]
        return h

    def join(self, feed: PromptFeed) -> None:
        """Append ``feed``'s rows, every column fed, as the last rows."""
        if self.layers is None:
            self.layers = feed.layers
        else:
            for mine, new in zip(self.layers, feed.layers, strict=True):
                mine.extend(new)
        self.rows += len(feed.padding)

    def hidden(self, tokens: mx.array) -> mx.array:
        """Feed ``tokens`` (B, S), a pass ``keep`` may take back in part; the final hidden
        states (B, S, H)."""
        recurrent = [c for c in self.layers if isinstance(c, RaggedArraysCache)] \
            if tokens.shape[1] > 1 else []
        for c in recurrent:
            c.open(tokens.shape[1])
        try:
            return self._body(tokens, cache=self.layers)
        finally:
            for c in recurrent:
                c.close()

    def __call__(self, tokens: mx.array) -> mx.array:
        """Logits (B, S, V) for ``tokens`` (B, S)."""
        return self.head(self.hidden(tokens))

    def last_logits(self, tokens: mx.array) -> mx.array:
        """Feed ``tokens`` (B, S); logits (B, V) of the last column only."""
        return self.head(self.hidden(tokens)[:, -1])

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
        self.rows = len(rows)
        if not rows:
            self.layers = None
            return
        for c in self.layers:
            c.filter(rows)
