"""Proposer: a separate, smaller model sharing the target's tokenizer."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from .cached_model import CachedModel
from .proposer import bounded
from .sampling import Sampling, draw


class DraftModel:
    mode = "draft"
    needs_hidden = False

    def __init__(self, model: nn.Module, max_kv_size: int | None = None):
        self.lm = CachedModel(model, max_kv_size=max_kv_size)
        self._unfed: list[mx.array] = []  # committed tokens not yet in the cache
        self._fed: mx.array | None = None  # what the latest propose() fed ...
        self._fed_unfed = 0  # ... of which this many were committed tokens

    def prefill(self, tokens: mx.array, hidden: mx.array | None) -> None:
        if tokens.shape[0] > 1:
            self.lm.prefill(tokens[:-1])
        self._unfed = [tokens[-1:]]

    def propose(self, k: int, sampling: Sampling) -> tuple[mx.array, mx.array | None]:
        unfed = mx.concatenate(self._unfed)
        # The last draft is never fed: its logits are not needed.
        self.lm.begin_round(unfed.shape[0] + k - 1)
        x, drafts, dists = unfed, [], []
        for _ in range(k):
            logits = self.lm.last_logits(x)
            x, q = draw(logits, sampling)
            drafts.append(x)
            dists.append(q)
        drafts = mx.concatenate(drafts)
        self._fed = mx.concatenate([unfed, drafts[:-1]])
        self._fed_unfed = unfed.shape[0]
        return drafts, (None if sampling.greedy else mx.concatenate(dists))

    def commit(self, accepted: int, tokens: mx.array, hidden: mx.array | None) -> None:
        if self._fed is None:  # a plain target step: nothing was drafted
            self._unfed.append(tokens)
            self._unfed = bounded(self._unfed)
            return
        unfed = self._fed_unfed
        kept_drafts = min(accepted, self._fed.shape[0] - unfed)
        self.lm.end_round(self._fed, unfed + kept_drafts)
        self._unfed = [tokens[kept_drafts:]]
        self._fed = None

