"""The round loop: propose k tokens, verify them in one target pass, keep the
accepted prefix plus one target token, rewind what was rejected.

The only host sync per round is reading the accept decision (and the tokens
it emits); drafting, verification and cache repair of the previous round are
queued lazily in between. Where the host would otherwise wait for the device
(``round_ahead``), the next round is drafted and queued before this one is read,
as if every draft is kept, so the host builds its graph while the device
computes; when a draft was rejected, that round is taken back from the target
and the proposer.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import mlx.core as mx

from .cached_model import CachedModel
from .draft_length import AdaptiveDraftLength, FixedDraftLength
from .proposer import Proposer
from .round_ahead import RoundAhead
from .sampling import Sampling, probs, sample
from .stats import Stats
from .verify import verify_greedy, verify_sampled


@dataclass
class Round:
    """One round's work, queued on the device and not yet read."""

    k: int
    fed: mx.array  # [last, d1..dk]
    tokens: mx.array  # what the target emits at each fed position
    decision: mx.array  # [drafts kept, *tokens]: what the host reads, in one transfer
    hidden: mx.array | None  # the target's final hidden states there, if the proposer reads them
    ahead: bool  # started before the previous round was read


@dataclass
class Finish:
    reason: str  # "stop" (an end-of-sequence token) or "length" (max_tokens)


class SpecDecoder:
    def __init__(
        self,
        target: CachedModel,
        proposer: Proposer | None = None,
        *,
        sampling: Sampling = Sampling(),
        draft_length: FixedDraftLength | AdaptiveDraftLength | None = None,
        eos_token_ids: set[int] | frozenset[int] = frozenset(),
        round_ahead: RoundAhead | None = None,
    ):
        self.target = target
        self.proposer = proposer
        self.sampling = sampling
        self.draft_length = draft_length or AdaptiveDraftLength()
        self.round_ahead = round_ahead or RoundAhead()
        self.eos = set(eos_token_ids)
        self.stats = Stats(
            mode=proposer.mode if proposer else "none",
            num_draft=None if proposer is None or self.draft_length.adaptive
            else self.draft_length.k,
        )
        self.finish: Finish | None = None
        self.rounds_ahead = 0  # rounds started before the previous one was read ...
        self.rounds_taken_back = 0  # ... and of those, the ones a rejection took back
        self._hidden = bool(proposer and proposer.needs_hidden)

    def generate(self, prompt: list[int], max_tokens: int) -> Iterator[list[int]]:
        """Yield the emitted tokens round by round; ``self.finish`` says why it ended."""
        if max_tokens <= 0:
            raise ValueError(f"max_tokens must be > 0, got {max_tokens}")
        if not prompt:
            raise ValueError("the prompt is empty")
        stats = self.stats
        stats.prompt_tokens = len(prompt)
        start = time.perf_counter()
        tokens = mx.array(prompt, dtype=mx.uint32)
        logits, hidden = self.target.prefill(tokens, hidden=self._hidden)
        first = sample(logits[None], self.sampling)
        if self.proposer:
            # The proposer reads the prompt before the first token, as mlx-lm's
            # speculative_generate_step does: all prompt work counts as prompt time.
            self.proposer.prefill(mx.concatenate([tokens, first]), hidden)
        emitted = first.tolist()
        stats.ttft_s = time.perf_counter() - start
        last = first
        out = self._emit(emitted, max_tokens)
        if out:
            yield out
        decode_start = time.perf_counter()
        ahead = None  # a plain step queued before the previous one was read
        planned = None  # the draft length chosen while the previous plain step was read
        queued: Round | None = None  # a round started before the previous one was read
        try:
            while not self.finish:
                t0 = time.perf_counter()
                remaining = max_tokens - stats.generation_tokens
                k = 0
                if queued:
                    current, queued = queued, None
                    k = current.k
                elif self.proposer and ahead is None:
                    k = min(planned or self.draft_length.next(), remaining - 1)
                    if k > 0:
                        current = self._start_round(last, k)
                planned = None
                if k > 0:
                    accepted, emitted, last, queued = self._speculate(current, remaining)
                    seconds = time.perf_counter() - t0
                else:
                    was_ahead = ahead is not None
                    token, hidden = ahead or self._queue_plain(last)
                    ahead = None
                    # Queue the next plain step before reading this one, as mlx-lm's
                    # generate_step does, so building its graph overlaps this compute.
                    # The choice is made once: a round chosen here is the next round.
                    if remaining > 1:
                        planned = self.draft_length.next() if self.proposer else 0
                        if planned == 0:
                            ahead = self._queue_plain(token)
                    accepted, emitted, last = 0, token.tolist(), token
                    if self.proposer:
                        self.proposer.commit(0, token, hidden)
                    # Only a step queued ahead that queued the next one times a plain
                    # step: one that built its own graph took two, the one before a
                    # round took none.
                    seconds = time.perf_counter() - t0 if was_ahead and ahead is not None else None
                stats.rounds += 1
                self.draft_length.observe(k, accepted, seconds)
                out = self._emit(emitted, max_tokens)
                if out:
                    yield out
                stats.decode_s = time.perf_counter() - decode_start
        finally:
            if queued:  # the job ended (EOS, or the consumer left) with a round started
                self.target.undo_round()
                self.proposer.withdraw()

    def _queue_plain(self, last: mx.array) -> tuple[mx.array, mx.array | None]:
        logits, hidden = self.target(last, hidden=self._hidden)
        token = sample(logits[-1:], self.sampling)
        mx.async_eval(token)
        return token, hidden

    def _speculate(self, current: Round,
                   remaining: int) -> tuple[int, list[int], mx.array, Round | None]:
        """Read ``current`` and return (accepted, emitted, last token, the next round if
        one was started ahead and stands)."""
        k = current.k
        k_next = min(self.draft_length.ahead(), remaining - (k + 1) - 1)
        queued = None
        if k_next > 0 and self.target.chains_rounds and self.round_ahead.wanted():
            queued = self._start_round(current.tokens[-1:], k_next, after=current)
            self.rounds_ahead += 1
        accepted, emitted, last = self._end_round(current, queued)
        if queued and accepted < k:
            queued = None
            self.rounds_taken_back += 1
        return accepted, emitted, last, queued

    def _start_round(self, last: mx.array, k: int, after: Round | None = None) -> Round:
        """Draft k tokens after ``last`` and queue their verification; ``after``: the
        round still unread, assumed to keep every draft."""
        start = time.perf_counter()
        if after is None:
            drafts, draft_probs = self.proposer.propose(k, self.sampling)
        else:
            drafts, draft_probs = self.proposer.propose_ahead(
                after.tokens, after.hidden, k, self.sampling)
        fed = mx.concatenate([last, drafts])
        self.target.begin_round(k + 1)
        logits, hidden = self.target(fed, hidden=self._hidden)
        if self.sampling.greedy:
            accepted, tokens = verify_greedy(logits, drafts)
        else:
            accepted, tokens = verify_sampled(probs(logits, self.sampling), draft_probs, drafts)
        decision = mx.concatenate([accepted.astype(mx.uint32)[None], tokens])
        mx.async_eval(decision)
        self.round_ahead.observe_build(time.perf_counter() - start)
        return Round(k, fed, tokens, decision, hidden, ahead=after is not None)

    def _end_round(self, current: Round, queued: Round | None) -> tuple[int, list[int], mx.array]:
        """Read the accept decision of ``current`` (the round's one host sync) and move
        every cache to it; a ``queued`` round, started on the assumption that every
        draft is kept, is taken back if one was not."""
        start = time.perf_counter()
        n, *emitted = current.decision.tolist()
        wait = time.perf_counter() - start
        emitted = emitted[: n + 1]
        self.round_ahead.observe_read(
            n == current.k, None if current.ahead or queued else wait)
        if queued and n < current.k:
            self.target.undo_round()
        self.target.end_round(current.fed, n + 1)
        kept = current.tokens[: n + 1]
        hidden = current.hidden
        self.proposer.commit(n, kept, None if hidden is None else hidden[: n + 1])
        self.stats.drafted += current.k
        self.stats.accepted += n
        return n, emitted, kept[-1:]

    def _emit(self, tokens: list[int], max_tokens: int) -> list[int]:
        out = []
        for t in tokens:
            if t in self.eos:
                self.finish = Finish("stop")
                break
            out.append(t)
            if self.stats.generation_tokens + len(out) == max_tokens:
                self.finish = Finish("length")
                break
        self.stats.generation_tokens += len(out)
        return out
