"""A drafter model proposing for every row of a batch at once, as ``DraftModel`` does
for one sequence: the committed tokens it has not fed (one, or two after a round that
kept every draft, more after plain steps) left-padded to a common width, then one
column per draft; the last draft is never fed."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from ..proposer import MAX_CATCH_UP
from ..sampling import Sampling, draw
from .batch_cache import BatchCache


class BatchDrafter:
    mode = "draft"

    def __init__(self, model: nn.Module):
        self.lm = BatchCache(model)
        self.unfed: list[list[int]] = []  # per row, committed tokens not in its cache yet
        self._width = 0  # slots the open proposal wrote per row
        self._catch_up = 0  # of those, the unfed columns it started with

    def add(self, prompts: list[list[int]], firsts: list[int]) -> None:
        """New last rows: their prompts, then ``firsts``, the target's first tokens."""
        self.lm.add(prompts)
        self.unfed += [[t] for t in firsts]

    def filter(self, rows: list[int]) -> None:
        self.lm.filter(rows)
        self.unfed = [self.unfed[i] for i in rows]

    def propose(self, ks: list[int], samplings: list[Sampling], keys: mx.array
                ) -> tuple[mx.array, list[mx.array | None]]:
        """max(ks) drafts for every row: tokens (B, max k) uint32, and per row the
        distributions (k_b, V) of its own first ks[b] drafts unless it samples greedily.
        Row b draws its j-th draft with ``keys[b, j]``; drafts past its own k are the
        argmax (it ignores them). Lazy."""
        k_max = max(ks)
        self._catch_up = max(map(len, self.unfed))
        pads = [self._catch_up - len(u) for u in self.unfed]
        self.lm.pad(pads)
        fed = mx.array([[0] * p + u for p, u in zip(pads, self.unfed, strict=True)], mx.uint32)
        drafts, dists = [], [[] for _ in ks]
        for j in range(1, k_max + 1):
            logits = self.lm.last_logits(fed)
            column = []
            for b, (k, sampling) in enumerate(zip(ks, samplings, strict=True)):
                if j > k:
                    column.append(mx.argmax(logits[b : b + 1], axis=-1).astype(mx.uint32))
                    continue
                token, dist = draw(logits[b : b + 1], sampling, keys[b, j])
                column.append(token)
                dists[b].append(dist)
            drafts.append(mx.concatenate(column))
            fed = drafts[-1][:, None]
        self._width = self._catch_up + k_max - 1
        return mx.stack(drafts, axis=1), [
            None if s.greedy else (mx.concatenate(d) if d else None)
            for s, d in zip(samplings, dists, strict=True)]

    def commit(self, accepted: list[int] | None, emitted: list[list[int]]) -> None:
        """Rows moved on by ``emitted`` (their kept drafts, then the target's token),
        after the open proposal (``accepted`` drafts of each kept) or after a plain step
        (``accepted`` None: nothing was proposed)."""
        if accepted is None:
            # While the batch decodes plainly the backlog is cut as DraftModel cuts it:
            # older tokens never reach the drafter's context (worse drafts, never output).
            self.unfed = [(u + e)[-MAX_CATCH_UP:] if len(u) + len(e) > 2 * MAX_CATCH_UP
                          else u + e for u, e in zip(self.unfed, emitted, strict=True)]
            return
        drafted = self._width - self._catch_up + 1
        fed_drafts = [min(n, drafted - 1) for n in accepted]
        self.lm.keep([self._catch_up + n for n in fed_drafts], self._width)
        self.unfed = [e[n:] for e, n in zip(emitted, fed_drafts, strict=True)]
