"""Proposer: a separate, smaller model sharing the target's tokenizer."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from . import cache_snapshot
from .cached_model import CachedModel
from .proposer import Process, bounded, draft
from .sampling import Sampling


class DraftModel:
    mode = "draft"
    needs_hidden = False

    def __init__(self, model: nn.Module, max_kv_size: int | None = None):
        self.lm = CachedModel(model, max_kv_size=max_kv_size)
        self._unfed: list[mx.array] = []  # committed tokens not yet in the cache
        # Per unsettled propose(), oldest first: what it fed, and how many of those rows
        # were committed tokens (the rest are its drafts).
        self._open: list[tuple[mx.array, int]] = []
        self._restored = 0  # tokens in the caches ``restore`` gave it

    def prefill(self, tokens: mx.array, hidden: mx.array | None) -> None:
        if tokens.shape[0] > 1:
            self.lm.prefill(tokens[:-1], start=self._restored)
        self._unfed = [tokens[-1:]]

    def state(self) -> dict:
        return {"cache": self.lm.cache}  # it holds the prompt: the first token is unfed

    def restore(self, state: dict) -> None:
        self.lm.adopt(state["cache"])
        self._restored = next(
            (n for n in map(cache_snapshot.length, state["cache"]) if n is not None), 0)

    def propose(self, k: int, sampling: Sampling, process: Process | None = None
                ) -> tuple[mx.array, mx.array | None]:
        unfed = mx.concatenate(self._unfed)
        # The last draft is never fed: its logits are not needed.
        self.lm.begin_round(unfed.shape[0] + k - 1)

        def next_logits(previous: mx.array | None) -> mx.array:
            return self.lm.last_logits(unfed if previous is None else previous)

        drafts, dists = draft(k, sampling, next_logits, process)
        self._open.append((mx.concatenate([unfed, drafts[:-1]]), unfed.shape[0]))
        return drafts, dists

    def propose_pipelined(self, tokens: mx.array, hidden: mx.array | None, k: int,
                          sampling: Sampling, process: Process | None = None
                          ) -> tuple[mx.array, mx.array | None]:
        fed, unfed = self._open[-1]
        self._unfed = [tokens[fed.shape[0] - unfed :]]  # the last draft and the target's token
        return self.propose(k, sampling, process)

    def commit(self, accepted: int, tokens: mx.array, hidden: mx.array | None) -> None:
        if not self._open:  # a plain target step: nothing was drafted
            self._unfed.append(tokens)
            self._unfed = bounded(self._unfed)
            return
        fed, unfed = self._open.pop(0)
        drafted = fed.shape[0] - unfed + 1
        if self._open:  # a propose_pipelined() is open on top of this one
            if accepted == drafted:  # as propose_pipelined() assumed
                self.lm.end_round(fed, fed.shape[0])
                return
            self._open.pop()
            self.lm.undo_round()
        kept_drafts = min(accepted, drafted - 1)
        self.lm.end_round(fed, unfed + kept_drafts)
        self._unfed = [tokens[kept_drafts:]]

    def withdraw(self) -> None:
        fed, unfed = self._open.pop()
        self.lm.undo_round()
        self._unfed = [fed[:unfed]]
