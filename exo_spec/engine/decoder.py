"""The round loop: propose k tokens, verify them in one target pass, keep the
accepted prefix plus one target token, rewind what was rejected.

The only host sync per round is reading the accept decision (and the tokens
it emits); drafting, verification and cache repair of the previous round are
queued lazily in between. Where the host would otherwise wait for the device
(``pipelining``), the next round is drafted and queued before this one is read,
as if every draft is kept, so the host builds its graph while the device
computes (a pipelined round); when a draft was rejected, that round is taken
back from the target and the proposer. Where speculation does not pay, a plain
target step queues the next one before it is read, as mlx-lm's generate_step
does, for the same overlap.

With a ``lookup`` (``prompt_lookup.PromptLookup``), a round first tries drafts copied
from the sequence itself, from the token ids read so far; where it finds none the round
is the model proposer's, or with no proposer a plain step. A round of copied drafts is
never started ahead, and the proposer takes its kept tokens as it takes a plain step's.

The job's penalties (``logits_processing``) apply at every target position with
the history a plain decode has there, and to the proposer's logits with its drafts'
history; logprobs (``logprobs``) are computed from the same processed logits and
ride in the decision read, so neither adds a host sync.

With a ``prefix_cache`` (``prefix_cache.PrefixCache``, one per model placement), a job
whose prompt extends a stored sequence starts from copies of its caches and prefills
only the rest; the proposer's state comes along where the hit is at the stored
prompt's end. Each job stores its prompt's caches once its first token is read (copies
queued on the device, no host sync). Output is the same with or without a hit.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import mlx.core as mx

from ..sampling import Penalties
from . import cache_snapshot
from . import logprobs as lp
from .draft_length import AdaptiveDraftLength, FixedDraftLength
from .logits_processing import LogitsProcessing
from .pipelining import RoundPipelining
from .prefix_cache import PrefixCache
from .prompt_lookup import PromptLookup, one_hot
from .proposer import Proposer
from .sampling import Sampling, log_probs
from .stats import Stats
from .target import Target
from .verify import verify_greedy, verify_sampled


@dataclass
class Round:
    """One round's work, queued on the device and not yet read."""

    k: int
    fed: mx.array  # [last, d1..dk]
    tokens: mx.array  # what the target emits at each fed position
    decision: mx.array  # [drafts kept, *tokens, logprobs?]: what the host reads, in one transfer
    hidden: mx.array | None  # the target's final hidden states there, if the proposer reads them
    pipelined: bool  # started before the previous round was read
    copied: bool = False  # drafts from the prompt lookup, not from the proposer


@dataclass
class PlainStep:
    """One target step, queued on the device and not yet read."""

    token: mx.array  # the token it samples
    decision: mx.array  # [token, logprobs?]: what the host reads (the token alone if no logprobs)
    hidden: mx.array | None  # the target's final hidden state, if the proposer reads it
    pipelined: bool  # queued before the previous step was read
    k: ClassVar[int] = 0  # no drafts


@dataclass
class Finish:
    reason: str  # "stop" (an end-of-sequence token) or "length" (max_tokens)


def _timing_sample(current: Round | PlainStep, queued: Round | PlainStep | None,
                   seconds: float) -> float | None:
    """What the draft-length policy is told ``current`` took. A round gives its seconds.
    A plain step gives them only where it ran as decoding plainly runs: queued before
    the previous step was read, and queuing the next before it was read itself. One
    that built its own graph did two steps' host work; one that queued nothing after
    it (a round comes next) built no graph at all."""
    if isinstance(current, Round) or (current.pipelined and isinstance(queued, PlainStep)):
        return seconds
    return None


class SpecDecoder:
    def __init__(
        self,
        target: Target,
        proposer: Proposer | None = None,
        *,
        sampling: Sampling = Sampling(),
        draft_length: FixedDraftLength | AdaptiveDraftLength | None = None,
        eos_token_ids: set[int] | frozenset[int] = frozenset(),
        pipelining: RoundPipelining | None = None,
        penalties: Penalties | None = None,
        logprobs: int | None = None,
        prefix_cache: PrefixCache | None = None,
        lookup: PromptLookup | None = None,
    ):
        """``lookup``: a fresh prompt lookup to draft with first (beside ``proposer``, or
        alone); ``penalties``: applied to the logits as mlx-lm's ``make_logits_processors``
        does; ``logprobs``: None, or report each emitted token's log-probability and
        that many alternatives (0..20) in ``self.logprobs``; ``prefix_cache``: where to
        look the prompt up and store it, shared by the decoders of one model and cache
        layout (the target must have ``cache`` and ``adopt``, as ``CachedModel`` has)."""
        lp.check_top(logprobs)
        self.target = target
        self.prefix_cache = prefix_cache
        self.proposer = proposer
        self.lookup = lookup
        self._drafting = bool(proposer or lookup)
        self.sampling = sampling
        self.draft_length = draft_length or AdaptiveDraftLength()
        self.pipelining = pipelining or RoundPipelining()
        self.eos = set(eos_token_ids)
        self.stats = Stats(
            mode="+".join(p.mode for p in (lookup, proposer) if p) or "none",
            num_draft=None if not self._drafting or self.draft_length.adaptive
            else self.draft_length.k,
        )
        self.finish: Finish | None = None
        self.rounds_pipelined = 0  # rounds started before the previous one was read ...
        self.rounds_taken_back = 0  # ... and of those, the ones a rejection took back
        self.rounds_copied = 0  # rounds whose drafts the prompt lookup copied
        self._hidden = bool(proposer and proposer.needs_hidden)
        self.penalties = penalties = penalties or Penalties()
        self._processing = LogitsProcessing(penalties) if penalties.active else None
        # Prompt and emitted tokens through the newest one whose successor is queued,
        # cut to what the penalties read (``LogitsProcessing.tail``): on the device.
        self._history: mx.array | None = None
        self.top_logprobs = logprobs
        self.logprobs: list[lp.TokenLogprob] = []  # one per emitted token, in order

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
        cached, restored = self._restore(prompt)
        stats.cached_prompt_tokens = cached
        logits, hidden = self.target.prefill(tokens[cached:], hidden=self._hidden,
                                             start=cached)
        if self._processing:
            self._processing.bind(logits.shape[-1])
            self._history = self._processing.tail(tokens)  # the whole prompt, cached or not
        first, decision = self._sample(logits[None])
        if self.proposer:
            # The proposer reads the prompt before the first token, as mlx-lm's
            # speculative_generate_step does: all prompt work counts as prompt time.
            # Hidden states exist only for the prefilled positions (``Proposer.prefill``).
            fed = cached if restored or self._hidden else 0
            self.proposer.prefill(mx.concatenate([tokens[fed:], first]), hidden)
        emitted, logprobs = self._read_step(decision)
        if self.lookup:
            self.lookup.extend([*prompt, *emitted])
        self._extend_history(first)
        stats.ttft_s = time.perf_counter() - start
        self._store(prompt)
        last = first
        out = self._emit(emitted, max_tokens, logprobs)
        if out:
            yield out
        decode_start = time.perf_counter()
        queued: Round | PlainStep | None = None  # the next step, queued before this one was read
        next_k = None  # the draft length chosen while the last plain step was read
        try:
            while not self.finish:
                started = time.perf_counter()
                remaining = max_tokens - stats.generation_tokens
                current = queued or self._queue_step(last, next_k, remaining)
                queued = None
                if isinstance(current, Round):
                    accepted, emitted, logprobs, last, queued = self._speculative_round(
                        current, remaining)
                    next_k = None
                else:
                    emitted, logprobs, last, queued, next_k = self._plain_step(
                        current, remaining)
                    accepted = 0
                seconds = _timing_sample(current, queued, time.perf_counter() - started)
                stats.rounds += 1
                self.draft_length.observe(current.k, accepted, seconds)
                out = self._emit(emitted, max_tokens, logprobs)
                if out:
                    yield out
                stats.decode_s = time.perf_counter() - decode_start
        finally:
            # The job ended (EOS, or the consumer left) with a round started before the read.
            if isinstance(queued, Round):
                self.target.undo_round()
                self.proposer.withdraw()

    def _restore(self, prompt: list[int]) -> tuple[int, bool]:
        """Start from the prefix cache's longest entry for ``prompt``: (the prompt tokens
        the target's caches now hold, whether the proposer's state came along)."""
        if self.prefix_cache is None:
            return 0, False
        # Only caches like the target's own (not those of another max_kv_size, say).
        hit = self.prefix_cache.lookup(prompt, cache_snapshot.layout(self.target.cache))
        if hit is None:
            return 0, False
        self.target.adopt(hit.caches)
        extra = hit.extra  # only where the hit ends at a stored prompt's end
        if self.proposer is None or extra is None or extra.get("mode") != self.proposer.mode:
            return hit.length, False
        self.proposer.restore(extra["proposer"])
        return hit.length, True

    def _store(self, prompt: list[int]) -> None:
        """Keep the caches as they are at the prompt's end (the first token is not fed
        yet), with the proposer's state there."""
        if self.prefix_cache is None:
            return
        extra = {"mode": self.proposer.mode, "proposer": self.proposer.state()} \
            if self.proposer else None
        self.prefix_cache.store(prompt, self.target.cache, extra)

    def _queue_step(self, last: mx.array, next_k: int | None,
                    remaining: int) -> Round | PlainStep:
        """Queue the step after ``last`` where the last read queued none: a round of
        ``next_k`` drafts if the plain step before chose that length, else of the length
        the policy chooses now; a plain step where that is none."""
        k = min(next_k or self.draft_length.next(), remaining - 1) if self._drafting else 0
        round_ = self._start_round(last, k) if k > 0 else None
        return round_ or self._queue_plain(last, pipelined=False)

    def _plain_step(self, current: PlainStep, remaining: int
                    ) -> tuple[list[int], list[lp.TokenLogprob] | None, mx.array,
                               PlainStep | None, int | None]:
        """Read ``current`` and return (emitted, their logprobs if asked, last token, the
        next plain step if one was queued, the draft length chosen for the next round).
        What follows is chosen before the read, once: a plain step is queued then, as
        mlx-lm's generate_step does, so that building its graph overlaps this one's
        compute; a round chosen then is the next round, so that asking again cannot
        flip the choice."""
        self._extend_history(current.token)  # a plain step's token is never taken back
        next_plain, next_k = None, None
        if remaining > 1:
            next_k = self.draft_length.next() if self._drafting else 0
            if next_k == 0:
                next_plain = self._queue_plain(current.token, pipelined=True)
        emitted, logprobs = self._read_step(current.decision)
        if self.lookup:
            self.lookup.extend(emitted)
        if self.proposer:
            self.proposer.commit(0, current.token, current.hidden)
        return emitted, logprobs, current.token, next_plain, next_k

    def _speculative_round(self, current: Round, remaining: int
                           ) -> tuple[int, list[int], list[lp.TokenLogprob] | None, mx.array,
                                      Round | None]:
        """Read ``current`` and return (accepted, emitted, their logprobs if asked, last
        token, the next round if one was started before the read and stands). The next
        round is started then where ``pipelining`` says it pays, assuming ``current``
        keeps every draft; only after a round of the proposer's own drafts, and with its
        drafts (the lookup needs the tokens read)."""
        k = current.k
        next_k = min(self.draft_length.next_pipelined(), remaining - (k + 1) - 1)
        pipelined_round = None
        if next_k > 0 and self.proposer and not current.copied \
                and self.target.chains_rounds and self.pipelining.wanted():
            pipelined_round = self._start_round(current.tokens[-1:], next_k, after=current)
            self.rounds_pipelined += 1
        accepted, emitted, logprobs, last = self._end_round(current, pipelined_round)
        if pipelined_round and accepted < k:
            pipelined_round = None
            self.rounds_taken_back += 1
        return accepted, emitted, logprobs, last, pipelined_round

    def _queue_plain(self, last: mx.array, pipelined: bool) -> PlainStep:
        """Queue the target step after ``last`` (the newest token of the history)."""
        logits, hidden = self.target(last, hidden=self._hidden)
        token, decision = self._sample(logits[-1:])
        mx.async_eval(token, decision)
        return PlainStep(token, decision, hidden, pipelined)

    def _extend_history(self, tokens: mx.array) -> None:
        if self._processing:
            self._history = self._processing.extend(self._history, tokens)

    def _process(self, logits: mx.array, history: mx.array | None,
                 drafts: mx.array | None = None) -> mx.array:
        """The job's penalties on ``logits`` (R, V), whose row j was fed after ``history``
        and then ``drafts[:j]``; the logits as they are without penalties."""
        if self._processing is None:
            return logits
        tokens = history if drafts is None or history is None \
            else mx.concatenate([history, drafts])
        return self._processing(logits, tokens)

    def _log_probs(self, logits: mx.array) -> mx.array:
        """The target's log-probabilities (R, V) at processed ``logits``: of the
        distribution tokens are drawn from; at temperature 0 the log-softmax."""
        if self.sampling.greedy:
            logits = logits.astype(mx.float32)
            return logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        return log_probs(logits, self.sampling)

    def _sample(self, logits: mx.array) -> tuple[mx.array, mx.array]:
        """One token after ``self._history`` from the target's ``logits`` (1, V), and the
        array the host reads for it (the token, then its logprobs if asked)."""
        logits = self._process(logits, self._history)
        if self.sampling.greedy:
            token = mx.argmax(logits, axis=-1).astype(mx.uint32)
            if self.top_logprobs is None:
                return token, token
            dist = self._log_probs(logits)
        else:
            dist = self._log_probs(logits)
            token = mx.random.categorical(dist).astype(mx.uint32)
            if self.top_logprobs is None:
                return token, token
        return token, mx.concatenate([token, lp.fields(dist, token, self.top_logprobs)])

    def _read_step(self, decision: mx.array) -> tuple[list[int], list[lp.TokenLogprob] | None]:
        """Read one sampled token's ``decision`` (a host sync): the token, and its
        logprobs if asked."""
        token, *rest = decision.tolist()
        if self.top_logprobs is None:
            return [token], None
        return [token], lp.read(rest, 1, [token])

    def _start_round(self, last: mx.array, k: int, after: Round | None = None
                     ) -> Round | None:
        """Draft k tokens after ``last`` and queue their verification; ``after``: the
        round still unread, assumed to keep every draft. The lookup's copy if it has
        one (never for a round started ahead), else the proposer's drafts; None where
        neither drafts: a plain step is the cheaper pass."""
        start = time.perf_counter()
        copied = self.lookup.draft(k, beside_model=self.proposer is not None) \
            if self.lookup and after is None else []
        if not copied and self.proposer is None:
            return None
        # The history ends with ``last``: the round before, if still unread, kept all.
        history = self._history if after is None or self._processing is None \
            else self._processing.extend(self._history, after.tokens)
        process = None if self._processing is None else self._processing.for_drafts(history)
        if copied:
            k = len(copied)
            drafts, draft_probs = mx.array(copied, dtype=mx.uint32), None
        elif after is None:
            drafts, draft_probs = self.proposer.propose(k, self.sampling, process)
        else:
            drafts, draft_probs = self.proposer.propose_pipelined(
                after.tokens, after.hidden, k, self.sampling, process)
        fed = mx.concatenate([last, drafts])
        self.target.begin_round(k + 1)
        logits, hidden = self.target(fed, hidden=self._hidden)
        logits = self._process(logits, history, drafts)
        dist = None
        if self.sampling.greedy:
            accepted, tokens = verify_greedy(logits, drafts)
        else:
            dist = self._log_probs(logits)
            if copied:  # a deterministic proposal: one-hot q
                draft_probs = one_hot(drafts, dist.shape[-1])
            accepted, tokens = verify_sampled(mx.exp(dist), draft_probs, drafts)
        parts = [accepted.astype(mx.uint32)[None], tokens]
        if self.top_logprobs is not None:
            dist = self._log_probs(logits) if dist is None else dist
            parts.append(lp.fields(dist, tokens, self.top_logprobs))
        decision = mx.concatenate(parts)
        mx.async_eval(decision)
        self.pipelining.observe_build(time.perf_counter() - start)
        self.rounds_copied += bool(copied)
        return Round(k, fed, tokens, decision, hidden, pipelined=after is not None,
                     copied=bool(copied))

    def _end_round(self, current: Round, pipelined_round: Round | None
                   ) -> tuple[int, list[int], list[lp.TokenLogprob] | None, mx.array]:
        """Read the accept decision of ``current`` (the round's one host sync) and move
        every cache to it; ``pipelined_round``, started on the assumption that every
        draft is kept, is taken back if one was not."""
        start = time.perf_counter()
        n, *values = current.decision.tolist()
        wait = time.perf_counter() - start
        rows = current.k + 1
        emitted = values[: n + 1]
        logprobs = None if self.top_logprobs is None else lp.read(values[rows:], rows, emitted)
        # The wait measures the device only for a round read right after its launch.
        self.pipelining.observe_read(
            n == current.k, None if current.pipelined or pipelined_round else wait)
        if pipelined_round and n < current.k:
            self.target.undo_round()
        self.target.end_round(current.fed, n + 1)
        kept = current.tokens[: n + 1]
        self._extend_history(kept)
        if self.lookup:
            self.lookup.extend(emitted)
        if self.proposer:  # copied drafts reach it as a plain step's tokens do
            hidden = current.hidden
            self.proposer.commit(0 if current.copied else n, kept,
                                 None if hidden is None else hidden[: n + 1])
        self.stats.drafted += current.k
        self.stats.accepted += n
        return n, emitted, logprobs, kept[-1:]

    def _emit(self, tokens: list[int], max_tokens: int,
              logprobs: list[lp.TokenLogprob] | None = None) -> list[int]:
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
        if logprobs:
            self.logprobs.extend(logprobs[: len(out)])
        return out
