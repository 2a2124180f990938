"""What the round loop asks of a proposer.

Positions: the sequence is s_0..s_T, where s_T is the newest token, known but
not yet fed to the target; h_j is the target's final hidden state after feeding
s_j (the input of its lm_head, which predicts s_{j+1}).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import mlx.core as mx

from .sampling import Sampling, draw

# While the round loop decodes plainly (speculation not paying), a proposer
# catches up on at most twice this many of the newest tokens when it drafts again.
# Older ones never reach its context: its drafts may get worse, never the
# output, and a useless proposer stops costing work in proportion to its idle time.
MAX_CATCH_UP = 32


def bounded(backlog: list[mx.array]) -> list[mx.array]:
    """``backlog`` (pieces in order) cut to its newest MAX_CATCH_UP rows once it grows
    past twice that, so the cut is paid once every MAX_CATCH_UP steps."""
    if len(backlog) <= 2 * MAX_CATCH_UP:
        return backlog
    return [mx.concatenate(backlog)[-MAX_CATCH_UP:]]


# What the decoder applies to a proposer's logits (1, V) for its next draft, given the
# drafts before it (the job's penalties, over the history those drafts extend).
Process = Callable[[mx.array, list[mx.array]], mx.array]


def draft(k: int, sampling: Sampling, next_logits: Callable[[mx.array | None], mx.array],
          process: Process | None = None) -> tuple[mx.array, mx.array | None]:
    """k tokens drawn one after another, each from ``next_logits(the draft before it)``
    (None for the first), processed by ``process`` if given: tokens (k,) and, unless
    greedy, their distributions (k, V)."""
    drafts, dists, previous = [], [], None
    for _ in range(k):
        logits = next_logits(previous)
        if process is not None:
            logits = process(logits, drafts)
        previous, dist = draw(logits, sampling)
        drafts.append(previous)
        dists.append(dist)
    return mx.concatenate(drafts), (None if sampling.greedy else mx.concatenate(dists))


class Proposer(Protocol):
    mode: str  # what stats report: "draft", "mtp", "assistant"
    needs_hidden: bool  # whether commit() and prefill() need the target's hidden states

    def prefill(self, tokens: mx.array, hidden: mx.array | None) -> None:
        """After the prompt pass: tokens = s_0..s_T (the prompt and the first sampled
        token), hidden = h_0..h_{T-1}. After ``restore`` of the state at s_0..s_{L-1},
        only what follows: tokens = s_L..s_T, hidden = h_L..h_{T-1}. Where the target
        prefilled only s_L.. (a prefix-cache hit without the proposer's state), a
        proposer that needs_hidden gets the same (it starts from nothing: its drafts
        may be worse, never the output); one that does not gets the whole prompt."""

    def state(self) -> dict:
        """Right after ``prefill``: the proposer's state over the prompt alone,
        s_0..s_{T-1} (not the first sampled token), as caches, arrays and plain values
        that ``prefix_cache.PrefixCache`` copies; the proposer may go on changing its
        own."""

    def restore(self, state: dict) -> None:
        """Before ``prefill``, on a fresh proposer: go on from a copy of ``state()`` taken
        after a prompt s_0..s_{L-1}, which this job's prompt extends."""

    def propose(self, k: int, sampling: Sampling, process: Process | None = None
                ) -> tuple[mx.array, mx.array | None]:
        """Draft s_{T+1}..s_{T+k}: tokens (k,) uint32 and, unless greedy, the
        distributions (k, V) they were drawn from, each draft's logits passed through
        ``process`` (``draft``). Lazy: no host sync."""

    def propose_pipelined(self, tokens: mx.array, hidden: mx.array | None, k: int,
                          sampling: Sampling, process: Process | None = None
                          ) -> tuple[mx.array, mx.array | None]:
        """Draft the round after the latest proposal as if the target kept all of it:
        ``tokens`` are those drafts and the target's token after them, ``hidden`` the
        states of the positions fed to verify them (as commit() would get them). The
        next commit() settles the latest proposal; if it kept fewer drafts, what this
        did is taken back first. Lazy: no host sync."""

    def commit(self, accepted: int, tokens: mx.array, hidden: mx.array | None) -> None:
        """The target moved on by len(tokens) positions: ``tokens`` are the new
        s_{T+1}..s_{T'} and ``hidden`` the states of the fed positions s_T..s_{T'-1}.
        ``accepted`` drafts of the oldest unsettled propose() were kept (0 after a
        plain step, which proposed nothing)."""

    def withdraw(self) -> None:
        """Take back the latest proposal whole: it will not be verified (the job ended
        while a round started ahead was open)."""
