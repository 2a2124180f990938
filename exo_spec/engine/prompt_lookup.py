"""Prompt lookup: drafts copied from the sequence itself, no weights.

The newest n tokens (n from ``max_n`` down to ``min_n``) are looked up among the
earlier n-grams of the prompt and output; the tokens that followed their latest
earlier occurrence are the draft. Code edits, retrieval answers and long documents
repeat long spans of their prompt, so such drafts are often kept, and they cost a few
dictionary lookups on the host.

The lookup reads the host-side token ids the round loop has anyway once it read a
round's accept decision, so it adds no host sync. Its drafts are deterministic: as
a proposal distribution each is one-hot (``one_hot``), which the speculative
sampling rule handles as it is: a draft x is kept with probability p(x), and a
rejection draws from p with x removed.

Beside a model proposer (a drafter, MTP heads) a round takes the lookup's draft
when its match is at least ``combined_min_n`` tokens long, else the model's
(``PromptLookup.draft``); its draft is always as long as the round asks, since a
copy that reaches the newest token goes on copying its own output (a repeating
span repeats on).
"""

from __future__ import annotations

import mlx.core as mx

MAX_N = 3  # the longest suffix looked up
MIN_N = 1  # the shortest
# Beside a model proposer, the shortest match whose copy replaces the model's draft:
# after a shorter one, often of common tokens with many followers, the model guesses
# better (measured: docs/GENERATE.md, "Prompt lookup").
COMBINED_MIN_N = 3


class PromptLookup:
    """The n-grams of one job's sequence (prompt and output) and where each last
    occurred; ``extend`` it with every token the target keeps."""

    mode = "lookup"

    def __init__(self, max_n: int = MAX_N, min_n: int = MIN_N,
                 combined_min_n: int = COMBINED_MIN_N):
        if not 1 <= min_n <= max_n:
            raise ValueError(f"need 1 <= min_n <= max_n, got {min_n}, {max_n}")
        self.max_n, self.min_n = max_n, min_n
        self.combined_min_n = max(combined_min_n, min_n)
        self.ids: list[int] = []
        # n-gram -> the position right after its latest occurrence, among occurrences
        # that some token already follows (so never the newest suffix itself).
        self._after: dict[tuple[int, ...], int] = {}

    def extend(self, tokens: list[int]) -> None:
        ids, after = self.ids, self._after
        for token in tokens:
            end = len(ids)
            for n in range(self.min_n, min(self.max_n, end) + 1):
                after[tuple(ids[end - n:end])] = end
            ids.append(token)

    def match(self) -> tuple[int, int]:
        """(n, start): the longest suffix of n tokens seen before, and where the tokens
        after its latest earlier occurrence start; (0, 0) when none is."""
        ids = self.ids
        for n in range(min(self.max_n, len(ids)), self.min_n - 1, -1):
            start = self._after.get(tuple(ids[-n:]))
            if start is not None:
                return n, start
        return 0, 0

    def draft(self, k: int, beside_model: bool = False) -> list[int]:
        """Up to k tokens copied after the match, [] for none: no match, or beside a
        model proposer one shorter than ``combined_min_n``. The copy runs past the
        newest token into its own output, so it is k long whenever there is one."""
        n, start = self.match()
        if n == 0 or (beside_model and n < self.combined_min_n):
            return []
        ids, out = self.ids, []
        end = len(ids)
        for i in range(start, start + k):
            out.append(ids[i] if i < end else out[i - end])
        return out


def one_hot(drafts: mx.array, width: int) -> mx.array:
    """The proposal distributions (k, width) of deterministic drafts (k,)."""
    return (drafts[:, None] == mx.arange(width, dtype=drafts.dtype)[None]).astype(mx.float32)
