"""Proposer: a DFlash block drafter (see exo_spec.models.dflash for the model).

The target is a ``CachedModel`` with ``taps`` set to the drafter's target layers, so
the hidden states the round loop hands a proposer are those layers' outputs,
concatenated: row j is the target's state after feeding s_j.

The drafter keeps a KV cache of its context only: every layer's keys and values of
the committed rows, at their positions. Committed rows are queued and fed at the next
propose(), so a plain target step costs the drafter nothing until it drafts; the
prompt's are fed in prefill(). A proposal runs the block ``[s_T, MASK x (block - 1)]``
at positions T.. against that cache in one pass; the block's own keys never enter the
cache, so nothing is ever rewound except a pipelined proposal's assumed commit.

Each draft is drawn from its own position's distribution, which does not depend on
the drafts before it; the probability-ratio rule only needs q_i to be the distribution
d_i was drawn from given what came before, so sampling stays exact. A round of k
drafts reads the first k of the block's outputs: the block is always run whole, since
the drafter was trained on whole blocks (its attention has no causal mask).

Positions are counted from the first row this proposer saw: attention depends only on
differences of positions, and a catch-up cut (``proposer.bounded``) keeps the rows it
keeps at their own positions.
"""

from __future__ import annotations

from typing import NamedTuple

import mlx.core as mx
from mlx_lm.models.cache import KVCache

from ..models.dflash import Model
from ..models.heads import body_and_head, embedding
from .proposer import Process, bounded, draft
from .sampling import Sampling
from .target import PREFILL_CHUNK


class DFlash:
    mode = "dflash"
    needs_hidden = True

    def __init__(self, drafter: Model, target_model):
        self.drafter = drafter
        self.embed = embedding(target_model)
        self.head = body_and_head(target_model)[1]
        self.max_drafts = drafter.args.block_size - 1
        self._masks = mx.full((self.max_drafts,), drafter.args.mask_token_id, dtype=mx.uint32)
        self.cache = [KVCache() for _ in drafter.layers]
        self._queued: list[mx.array] = []  # committed rows not yet in the cache
        self._seen = 0  # rows committed so far: the position of s_T
        self._anchor: mx.array | None = None  # s_T
        self._before: _Before | None = None  # what propose_pipelined() may take back

    def prefill(self, tokens: mx.array, hidden: mx.array | None) -> None:
        for start in range(0, hidden.shape[0], PREFILL_CHUNK):
            rows = hidden[start : start + PREFILL_CHUNK]
            self._seen += rows.shape[0]
            self._feed(rows)
            mx.eval([c.state for c in self.cache])
        self._anchor = tokens[-1:]

    def state(self) -> dict:
        return {"cache": self.cache, "seen": self._seen}  # rows h_0..h_{T-1}: the prompt's

    def restore(self, state: dict) -> None:
        self.cache, self._seen = list(state["cache"]), state["seen"]

    def propose(self, k: int, sampling: Sampling, process: Process | None = None
                ) -> tuple[mx.array, mx.array | None]:
        if k > self.max_drafts:
            raise ValueError(f"a DFlash block of {self.max_drafts + 1} tokens drafts at "
                             f"most {self.max_drafts}, not {k}")
        if self._queued:
            self._feed(mx.concatenate(self._queued))
            self._queued = []
        block = self.embed(mx.concatenate([self._anchor, self._masks]))[None]
        context = [c.keys_and_values() for c in self.cache]
        out = self.drafter(block, context, self._seen)[0]
        rows = iter(self.head(out[1 : k + 1])[:, None])  # (1, V) per draft position
        return draft(k, sampling, lambda _previous: next(rows), process)

    def propose_pipelined(self, tokens: mx.array, hidden: mx.array | None, k: int,
                          sampling: Sampling, process: Process | None = None
                          ) -> tuple[mx.array, mx.array | None]:
        before = _Before(self.cache[0].offset, list(self._queued), self._seen, self._anchor,
                         tokens.shape[0] - 1)
        self.commit(before.accepted, tokens, hidden)
        self._before = before
        return self.propose(k, sampling, process)

    def commit(self, accepted: int, tokens: mx.array, hidden: mx.array | None) -> None:
        before, self._before = self._before, None
        if before:
            if accepted == before.accepted:  # propose_pipelined() committed exactly this
                return
            self._take_back(before)
        self._queued = bounded([*self._queued, hidden])
        self._seen += hidden.shape[0]
        self._anchor = tokens[-1:]

    def withdraw(self) -> None:
        before, self._before = self._before, None
        if before:
            self._take_back(before)

    def _feed(self, rows: mx.array) -> None:
        """Put ``rows``, the newest committed rows (counted in ``_seen``), in the cache."""
        context = self.drafter.context(rows[None], self._seen - rows.shape[0])
        for cache, (keys, values) in zip(self.cache, context, strict=True):
            cache.update_and_fetch(keys, values)

    def _take_back(self, before: _Before) -> None:
        for cache in self.cache:
            cache.trim(cache.offset - before.offset)
        self._queued, self._seen, self._anchor = before.queued, before.seen, before.anchor


class _Before(NamedTuple):
    """The drafter's state before propose_pipelined() committed ``accepted`` drafts."""

    offset: int
    queued: list[mx.array]
    seen: int
    anchor: mx.array | None
    accepted: int
