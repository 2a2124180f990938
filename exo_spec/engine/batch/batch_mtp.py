"""The checkpoint's MTP head proposing for every row of a batch at once, as ``Mtp``
does for one sequence (see ``engine/mtp.py``): the head at position j reads
(h_j, s_{j+1}), the target's hidden state there and the token after it.

Each row queues the pairs it committed and has not fed (one per kept token of a
round; after a prompt, (h_{T-1}, s_T) with its first token); a proposal feeds them
left-padded to a common width on the head's own ``RaggedKVCache``, then chains:
draft j+1 from the head's output for (its chained hidden state, draft j), per row.
The chained slots are dropped again at commit, where the true pairs come in.
"""

from __future__ import annotations

import mlx.core as mx

from ..mtp import Mtp
from ..proposer import MAX_CATCH_UP
from ..sampling import Sampling
from .batch_cache import PromptFeed
from .batch_drafter import DraftColumns, RowProcess
from .ragged_cache import RaggedKVCache


class BatchMtp:
    mode = "mtp"
    needs_hidden = True

    def __init__(self, proposer: Mtp):
        """Batches the head, embedding and head projection of a single-sequence ``Mtp``."""
        self.mtp = proposer.mtp
        self.embed = proposer.embed
        self.target_head = proposer.target_head
        self.layers: list[RaggedKVCache] | None = None  # the head's cache; None: no rows
        # Per row, the committed pairs not fed: tokens s_{j+1}, hidden states h_j (n, H).
        self.unfed: list[list[int]] = []
        self.unfed_hidden: list[list[mx.array]] = []
        self._catch_up = 0  # the open proposal's fed columns ...
        self._width = 0  # ... and all it wrote per row (with the chained drafts)

    def _new_layers(self, left_padding: list[int]) -> list[RaggedKVCache]:
        return [RaggedKVCache(left_padding) for _ in self.mtp.layers]

    def _feed(self, tokens: mx.array, hidden: mx.array, layers: list) -> mx.array:
        return self.mtp(self.embed(tokens), hidden, layers)

    def read(self, prompts: list[list[int]]) -> PromptFeed:
        width = max(map(len, prompts))
        return PromptFeed(self._new_layers([width - len(p) for p in prompts]), prompts)

    def prefill(self, feed: PromptFeed, columns: int, hidden: mx.array) -> None:
        """The pairs of the target's next ``columns`` prompt columns, whose hidden states
        are ``hidden`` (rows, columns, H); the prompt's last column pairs with the first
        token, which ``join`` queues."""
        start = feed.fed
        end = min(start + columns, feed.width - 1)
        if end > start:
            h = self._feed(feed.tokens[:, start + 1 : end + 1], hidden[:, : end - start],
                           feed.layers)
            mx.eval(h, [c.state for c in feed.layers])
        feed.fed = min(start + columns, feed.width)

    def join(self, feed: PromptFeed, firsts: list[int], hidden: mx.array) -> None:
        """New last rows; ``hidden`` (rows, H): the target's at each prompt's last token."""
        if self.layers is None:
            self.layers = feed.layers
        else:
            for mine, new in zip(self.layers, feed.layers, strict=True):
                mine.extend(new)
        self.unfed += [[t] for t in firsts]
        self.unfed_hidden += [[hidden[b : b + 1]] for b in range(len(firsts))]

    def filter(self, rows: list[int]) -> None:
        if not rows:
            self.layers = None
        else:
            for c in self.layers:
                c.filter(rows)
        self.unfed = [self.unfed[i] for i in rows]
        self.unfed_hidden = [self.unfed_hidden[i] for i in rows]

    def propose(self, ks: list[int], samplings: list[Sampling], keys: mx.array,
                processes: list[RowProcess]) -> tuple[mx.array, list[mx.array | None]]:
        """max(ks) drafts for every row (``DraftColumns``). Lazy."""
        self._catch_up = max(map(len, self.unfed))
        pads = [self._catch_up - len(u) for u in self.unfed]
        for c in self.layers:
            c.pad(pads)
        tokens = mx.array([[0] * p + u for p, u in zip(pads, self.unfed, strict=True)],
                          mx.uint32)
        hidden = mx.stack([mx.pad(mx.concatenate(h), [(p, 0), (0, 0)])
                           for p, h in zip(pads, self.unfed_hidden, strict=True)])
        h = self._feed(tokens, hidden, self.layers)[:, -1:]
        columns = DraftColumns(ks, samplings, keys, processes)
        k_max = max(ks)
        for j in range(1, k_max + 1):
            draft = columns.draw(self.mtp.logits(h, self.target_head)[:, 0])
            if j < k_max:  # chain on the head's own output
                h = self._feed(draft[:, None], h, self.layers)
        self._width = self._catch_up + k_max - 1
        return columns.result()

    def commit(self, accepted: list[int] | None, emitted: list[list[int]],
               hidden: mx.array) -> None:
        """Rows moved on by ``emitted`` (kept drafts, then the target's token), whose fed
        positions' hidden states are ``hidden`` (B, W, H); after the open proposal, or
        (``accepted`` None) a plain step that proposed nothing."""
        pairs = [hidden[b, : len(e)] for b, e in enumerate(emitted)]
        if accepted is not None:
            for c in self.layers:  # the catch-up stays, the chained drafts go
                c.keep([self._catch_up] * len(emitted), self._width)
            self.unfed = [list(e) for e in emitted]
            self.unfed_hidden = [[h] for h in pairs]
            return
        # While the batch decodes plainly the backlog is cut as ``Mtp`` cuts it.
        for b, (e, h) in enumerate(zip(emitted, pairs, strict=True)):
            self.unfed[b] = self.unfed[b] + e
            self.unfed_hidden[b].append(h)
            if len(self.unfed[b]) > 2 * MAX_CATCH_UP:
                self.unfed[b] = self.unfed[b][-MAX_CATCH_UP:]
                self.unfed_hidden[b] = [mx.concatenate(self.unfed_hidden[b])[-MAX_CATCH_UP:]]
