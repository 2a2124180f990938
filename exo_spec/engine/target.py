"""What the round loop verifies with: a model on this machine (``CachedModel``) or
rank 0's view of a group (``group.group_target.GroupTarget``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import mlx.core as mx

# Tokens fed per pass while reading a prompt: one pass's activations stay bounded
# however long the prompt is.
PREFILL_CHUNK = 512


class Target(Protocol):
    chains_rounds: bool  # whether a round may begin before the previous one ends

    def __call__(self, tokens: mx.array, hidden: bool = False
                 ) -> tuple[mx.array, mx.array | None]:
        """Logits (S, V) for ``tokens`` (S,), and the final hidden states (S, H) if asked."""

    def prefill(self, tokens: mx.array, *, hidden: bool = False, start: int = 0
                ) -> tuple[mx.array, mx.array | None]:
        """Feed the prompt; the last position's logits (V,) and, if asked, every fed
        position's hidden states (S, H). ``start``: the caches already hold that many
        tokens before ``tokens`` (a prefix-cache hit, see ``CachedModel.adopt``)."""

    def begin_round(self, width: int) -> None:
        """``width`` tokens follow that may be partly rejected."""

    def end_round(self, fed: mx.array, kept: int) -> None:
        """The oldest open round, which fed ``fed``, keeps its first ``kept`` tokens."""

    def undo_round(self) -> None:
        """Take back the newest open round whole (only called where ``chains_rounds``)."""


def prefill(forward: Callable[..., tuple[mx.array, mx.array | None]], cache: list,
            tokens: mx.array, *, hidden: bool = False, start: int = 0
            ) -> tuple[mx.array, mx.array | None]:
    """``Target.prefill`` for a target whose ``forward`` (its ``__call__``) feeds ``cache``:
    the prompt in chunks of PREFILL_CHUNK, each evaluated before the next is built. The
    chunks end at the positions a prefill from position 0 ends them (multiples of
    PREFILL_CHUNK), also when ``start`` tokens are in the caches already, so that a
    prefix-cache hit splits at most one of a fresh prefill's chunks in two."""
    hiddens = []
    cuts = range(PREFILL_CHUNK - start % PREFILL_CHUNK, tokens.shape[0], PREFILL_CHUNK)
    for lo, hi in zip([0, *cuts], [*cuts, tokens.shape[0]], strict=True):
        logits, h = forward(tokens[lo:hi], hidden=hidden)
        if hidden:
            hiddens.append(h)
        mx.eval(logits[-1], hiddens, [c.state for c in cache])
    return logits[-1], (mx.concatenate(hiddens) if hidden else None)
