"""Proposer: the checkpoint's own MTP head (see exo_spec.models.mtp for the wiring).

The MTP layer at position j reads (h_j, s_{j+1}) and predicts s_{j+2}; its
attention keeps its own KV cache over those positions. Committed pairs are
queued and fed in one pass at the next propose(), so a plain target step costs
the MTP nothing until it is asked to draft. The prompt's pairs are fed in
prefill(), with the rest of the prompt work. For k > 1 the head chains on its
own output hidden state; those speculative positions are trimmed at commit.

Its state over a prompt s_0..s_{T-1} (``state``, for a prefix cache) is the cache over
the pairs j < T-1 (the last pair, (h_{T-1}, s_T), holds the first sampled token) and
h_{T-1}, which the next job's first pair reads (``restore``).
"""

from __future__ import annotations

from typing import NamedTuple

import mlx.core as mx

from ..models.heads import body_and_head, embedding
from ..models.mtp import make_mtp_cache
from . import cache_snapshot
from .proposer import Process, bounded, draft
from .sampling import Sampling
from .target import PREFILL_CHUNK


class Mtp:
    mode = "mtp"
    needs_hidden = True

    def __init__(self, mtp, target_model):
        self.mtp = mtp
        self.embed = embedding(target_model)
        self.target_head = body_and_head(target_model)[1]
        self.cache = make_mtp_cache()
        self._hidden: list[mx.array] = []  # queued h_j ...
        self._next: list[mx.array] = []  # ... and the s_{j+1} that go with them
        self._last: mx.array | None = None  # the head's output for the newest fed pair
        self._chained = 0
        self._before_pipelined: _Before | None = None  # what propose_pipelined() may take back
        self._carry: mx.array | None = None  # restore(): the h_{L-1} that pairs with s_L
        self._prompt_end: mx.array | None = None  # prefill(): h_{T-1}, the prompt's last

    def prefill(self, tokens: mx.array, hidden: mx.array | None) -> None:
        if self._carry is None:  # pairs (h_j, s_{j+1}) from j = 0
            following = tokens[1:]
        else:  # restored after s_0..s_{L-1}: from (h_{L-1}, s_L)
            following, hidden = tokens, mx.concatenate([self._carry, hidden])
            self._carry = None
        self._prompt_end = hidden[-1:]
        for start in range(0, following.shape[0], PREFILL_CHUNK):
            chunk = slice(start, start + PREFILL_CHUNK)
            self._last = self._feed(following[chunk], hidden[chunk])[-1:]
            mx.eval(self._last, self.cache[0].state)

    def state(self) -> dict:
        cache = self.cache[0]
        return {"cache": [cache_snapshot.clone(cache, cache.offset - 1)],
                "hidden": self._prompt_end}

    def restore(self, state: dict) -> None:
        self.cache, self._carry = list(state["cache"]), state["hidden"]

    def propose(self, k: int, sampling: Sampling, process: Process | None = None
                ) -> tuple[mx.array, mx.array | None]:
        if self._next:
            h = self._feed(mx.concatenate(self._next), mx.concatenate(self._hidden))[-1:]
            self._hidden, self._next = [], []
        else:
            h = self._last

        def next_logits(previous: mx.array | None) -> mx.array:
            nonlocal h
            if previous is not None:  # chain on the head's own output
                h = self._feed(previous, h)
            return self.mtp.logits(h, self.target_head)

        self._chained = k - 1
        return draft(k, sampling, next_logits, process)

    def propose_pipelined(self, tokens: mx.array, hidden: mx.array | None, k: int,
                          sampling: Sampling, process: Process | None = None
                          ) -> tuple[mx.array, mx.array | None]:
        assumed = tokens.shape[0] - 1
        before = _Before(self.cache[0].offset, list(self._hidden), list(self._next),
                         self._last, self._chained, assumed)
        self.commit(assumed, tokens, hidden)
        self._before_pipelined = before
        return self.propose(k, sampling, process)

    def commit(self, accepted: int, tokens: mx.array, hidden: mx.array | None) -> None:
        before, self._before_pipelined = self._before_pipelined, None
        if before:
            if accepted == before.accepted:  # propose_pipelined() committed exactly this
                return
            self._hidden, self._next = before.hidden, before.next
            self._last, self._chained = before.last, before.chained
            self.cache[0].trim(self.cache[0].offset - before.offset)
        if self._chained:
            self.cache[0].trim(self._chained)
            self._chained = 0
        self._hidden.append(hidden)
        self._next.append(tokens)
        self._hidden, self._next = bounded(self._hidden), bounded(self._next)

    def withdraw(self) -> None:
        self.cache[0].trim(self._chained)
        self._chained = 0

    def _feed(self, tokens: mx.array, hidden: mx.array) -> mx.array:
        return self.mtp(self.embed(tokens)[None], hidden[None], self.cache)[0]


class _Before(NamedTuple):
    """The head's state before propose_pipelined() committed ``accepted`` drafts."""

    offset: int
    hidden: list[mx.array]
    next: list[mx.array]
    last: mx.array | None
    chained: int
    accepted: int
