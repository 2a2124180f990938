"""A drafter model proposing for every row of a batch at once, as ``DraftModel`` does
for one sequence: the committed tokens it has not fed (one, or two after a round that
kept every draft, more after plain steps) left-padded to a common width, then one
column per draft; the last draft is never fed."""

from __future__ import annotations

from collections.abc import Callable

import mlx.core as mx
import mlx.nn as nn

from ..proposer import MAX_CATCH_UP
from ..sampling import Sampling, draw
from .batch_cache import BatchCache, PromptFeed

# What a row's draft logits (1, V) go through before its draw, given its drafts so far:
# the row's penalties over its history and those drafts (None: none).
RowProcess = Callable[[mx.array, list[mx.array]], mx.array] | None


class DraftColumns:
    """Draws the drafts of a batch column by column: row b draws its j-th draft with
    ``keys[b, j]`` after its own processing; drafts past its own k are the argmax (it
    ignores them)."""

    def __init__(self, ks: list[int], samplings: list[Sampling], keys: mx.array,
                 processes: list[RowProcess]):
        self.ks, self.samplings, self.keys, self.processes = ks, samplings, keys, processes
        self.columns: list[mx.array] = []
        self._dists: list[list[mx.array]] = [[] for _ in ks]
        self._rows: list[list[mx.array]] = [[] for _ in ks]  # each row's drafts so far

    def draw(self, logits: mx.array) -> mx.array:
        """The next column (B,) uint32 from the proposer's ``logits`` (B, V)."""
        j = len(self.columns) + 1
        column = []
        for b, (k, sampling, process) in enumerate(
                zip(self.ks, self.samplings, self.processes, strict=True)):
            row = logits[b : b + 1]
            if j > k:
                column.append(mx.argmax(row, axis=-1).astype(mx.uint32))
                continue
            if process is not None:
                row = process(row, self._rows[b])
            token, dist = draw(row, sampling, self.keys[b, j])
            column.append(token)
            self._rows[b].append(token)
            if dist is not None:
                self._dists[b].append(dist)
        self.columns.append(mx.concatenate(column))
        return self.columns[-1]

    def result(self) -> tuple[mx.array, list[mx.array | None]]:
        """Tokens (B, max k) uint32, and per row the distributions (k_b, V) of its own
        first k_b drafts unless it samples greedily."""
        return mx.stack(self.columns, axis=1), [mx.concatenate(d) if d else None
                                                for d in self._dists]


class BatchDrafter:
    mode = "draft"
    needs_hidden = False

    def __init__(self, model: nn.Module):
        self.lm = BatchCache(model, recurrent=False)
        self.unfed: list[list[int]] = []  # per row, committed tokens not in its cache yet
        self._width = 0  # slots the open proposal wrote per row
        self._catch_up = 0  # of those, the unfed columns it started with

    def read(self, prompts: list[list[int]]) -> PromptFeed:
        return self.lm.read(prompts)

    def prefill(self, feed: PromptFeed, columns: int, hidden: mx.array | None) -> None:
        self.lm.prefill(feed, columns)

    def join(self, feed: PromptFeed, firsts: list[int], hidden: mx.array | None) -> None:
        """New last rows: their prompts fed, then ``firsts``, the target's first tokens."""
        self.lm.join(feed)
        self.unfed += [[t] for t in firsts]

    def filter(self, rows: list[int]) -> None:
        self.lm.filter(rows)
        self.unfed = [self.unfed[i] for i in rows]

    def propose(self, ks: list[int], samplings: list[Sampling], keys: mx.array,
                processes: list[RowProcess]) -> tuple[mx.array, list[mx.array | None]]:
        """max(ks) drafts for every row (``DraftColumns``). Lazy."""
        k_max = max(ks)
        self._catch_up = max(map(len, self.unfed))
        pads = [self._catch_up - len(u) for u in self.unfed]
        self.lm.pad(pads)
        fed = mx.array([[0] * p + u for p, u in zip(pads, self.unfed, strict=True)], mx.uint32)
        columns = DraftColumns(ks, samplings, keys, processes)
        for _ in range(k_max):
            fed = columns.draw(self.lm.last_logits(fed))[:, None]
        self._width = self._catch_up + k_max - 1
        return columns.result()

    def commit(self, accepted: list[int] | None, emitted: list[list[int]],
               hidden: mx.array | None) -> None:
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
