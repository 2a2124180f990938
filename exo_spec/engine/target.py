"""What the round loop verifies with: a model on this machine (``CachedModel``) or
rank 0's view of a group (``group.group_target.GroupTarget``)."""

from __future__ import annotations

from typing import Protocol

import mlx.core as mx


class Target(Protocol):
    chains_rounds: bool  # a round may begin before the previous one ends
    cache: list  # this process's caches (a Gemma 4 assistant reads the target's K/V)

    def __call__(self, tokens: mx.array, hidden: bool = False
                 ) -> tuple[mx.array, mx.array | None]:
        """Logits (S, V) for ``tokens`` (S,), and the final hidden states (S, H) if asked."""

    def prefill(self, tokens: mx.array, *, hidden: bool = False
                ) -> tuple[mx.array, mx.array | None]:
        """Feed the prompt; the last position's logits (V,) and, if asked, every
        position's hidden states (S, H)."""

    def begin_round(self, width: int) -> None:
        """``width`` tokens follow that may be partly rejected."""

    def end_round(self, fed: mx.array, kept: int) -> None:
        """The oldest open round, which fed ``fed``, keeps its first ``kept`` tokens."""

    def undo_round(self) -> None:
        """Take back the newest open round whole."""
