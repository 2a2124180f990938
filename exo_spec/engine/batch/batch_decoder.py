"""Continuous batching with speculation: several sequences decode together, each with
its own sampling, seed and draft length, in rounds of one batched verify pass.

A step (``BatchDecoder.step``): one chunk of the waiting sequences' prompts, then a
round for the running batch:

 1. each sequence picks its k (its own fixed or adaptive policy); k_max = max k
 2. the proposer drafts k_max tokens for every row; a row ignores drafts past its k
 3. the target verifies [last, d1..d_kmax] for every row in one pass (B, k_max + 1)
 4. each row's accept decision on the device (``verify``), after its own penalties
    (its drafts before each verify row as history), all rows in one array, read by
    the round's one host sync (logprobs ride in it)
 5. every row keeps its accepted prefix plus the correction or bonus token: the
    caches keep a different count per row (``ragged_cache``, ``ragged_arrays``), the
    proposer's too

Where every row picks k = 0 the round is a plain batched target step. Waiting
sequences are read together, left-padded, at most ``prefill_chunk`` columns per
step, so the running rows go on emitting every step; they join once read (each
emitting its first token) and leave once they end (an end-of-sequence token,
max_tokens, or ``cancel``). A sequence's draws are keyed by its own seed and step
count (``keys``), and what it draws has shapes of its own k only: at a fixed k a
seeded sequence emits the same tokens whoever shares its batch.

Supported: a separate drafter model whose layers are all full-attention ``KVCache``,
the checkpoint's MTP head (``Mtp``), or none (plain batched decoding); targets whose
layers are full-attention ``KVCache`` or GatedDeltaNet ``ArraysCache``. Other layers
and proposers are refused. The adaptive policy is told acceptance only, no timings:
a round's time is the whole batch's, so k follows each sequence's acceptance and the
policy's cost prior.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn

from ...models.heads import embedding
from ...sampling import Penalties, check_seed
from .. import logprobs as lp
from ..decoder import Finish
from ..draft_length import AdaptiveDraftLength, FixedDraftLength
from ..logits_processing import LogitsProcessing
from ..mtp import Mtp
from ..sampling import Sampling, draw, log_probs
from ..stats import Stats
from ..target import PREFILL_CHUNK
from ..verify import verify_greedy, verify_sampled
from .batch_cache import BatchCache, PromptFeed
from .batch_drafter import BatchDrafter, RowProcess
from .batch_mtp import BatchMtp
from .keys import fresh_seed, step_keys


@dataclass(frozen=True)
class BatchRequest:
    prompt: list[int]
    max_tokens: int
    sampling: Sampling = Sampling()
    seed: int | None = None  # None: one drawn from MLX's global key as the sequence joins
    num_draft: int | None = None  # a fixed k, or None for the adaptive policy
    penalties: Penalties = Penalties()  # as mlx-lm's make_logits_processors applies them
    logprobs: int | None = None  # report each token's logprob and this many alternatives

    def __post_init__(self):
        if not self.prompt:
            raise ValueError("the prompt is empty")
        if self.max_tokens <= 0:
            raise ValueError(f"max_tokens must be > 0, got {self.max_tokens}")
        check_seed(self.seed)
        lp.check_top(self.logprobs)
        if self.num_draft is not None and self.num_draft < 1:
            raise ValueError(f"num_draft must be >= 1 (or None: adaptive), got {self.num_draft}")


@dataclass
class Emitted:
    """What one sequence emitted in one step; ``finish`` once it has ended."""

    sequence: int  # the id ``BatchDecoder.add`` returned
    tokens: list[int]
    finish: Finish | None = None
    stats: Stats | None = None  # the sequence's, once it has ended
    logprobs: list[lp.TokenLogprob] | None = None  # one per token, if the request asked


@dataclass
class _Sequence:
    id: int
    request: BatchRequest
    seed: int
    draft_length: FixedDraftLength | AdaptiveDraftLength
    stats: Stats
    last: int = 0  # the newest token, not yet fed to the target
    steps: int = 0  # target passes so far (the prompt's first), for its random keys
    finish: Finish | None = None
    processing: LogitsProcessing | None = None  # its penalties, if any are active
    # The prompt and the tokens emitted, cut to what the penalties read, on the device.
    history: mx.array | None = None

    @property
    def remaining(self) -> int:
        return self.request.max_tokens - self.stats.generation_tokens

    def extend_history(self, tokens: list[int]) -> None:
        if self.processing is not None:
            self.history = self.processing.extend(self.history, mx.array(tokens, mx.uint32))

    def process(self, logits: mx.array, drafts: mx.array | None = None) -> mx.array:
        """Its penalties on ``logits`` (R, V), whose row j was fed after its history and
        then ``drafts[:j]``."""
        if self.processing is None:
            return logits
        tokens = self.history if drafts is None or self.history is None \
            else mx.concatenate([self.history, drafts])
        return self.processing(logits, tokens)

    def draft_process(self) -> RowProcess:
        """What its drafts' logits go through: its penalties over its history and the
        drafts before each, as its verify rows will see them."""
        return None if self.processing is None else self.processing.for_drafts(self.history)

    def log_probs(self, logits: mx.array) -> mx.array:
        """Of the distribution it draws from at processed ``logits``; at temperature 0
        the log-softmax."""
        if self.request.sampling.greedy:
            logits = logits.astype(mx.float32)
            return logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        return log_probs(logits, self.request.sampling)


@dataclass
class _Reading:
    """Waiting sequences whose prompts are being read, a chunk per step."""

    sequences: list[_Sequence]
    target: PromptFeed
    proposer: PromptFeed | None
    last_hidden: mx.array | None = None  # the target's at the newest column fed


class BatchDecoder:
    def __init__(self, target: nn.Module, drafter: nn.Module | Mtp | None = None, *,
                 eos_token_ids: set[int] | frozenset[int] = frozenset(),
                 cost_prior: float = 0.3, prefill_chunk: int = PREFILL_CHUNK):
        """``drafter``: a separate drafter model (an mlx-lm causal LM) or the target's
        ``Mtp`` proposer; ``cost_prior``: the adaptive policy's cost of a draft in plain
        steps (see ``draft_length``; ``decoder_factory`` uses the drafter's size over the
        target's); ``prefill_chunk``: prompt columns read per step while rows are
        running (their longest stall is one chunk's pass plus a round)."""
        if prefill_chunk < 1:
            raise ValueError(f"prefill_chunk must be >= 1, got {prefill_chunk}")
        if isinstance(drafter, Mtp):
            proposer = BatchMtp(drafter)
        elif drafter is None or isinstance(getattr(drafter, "layers", None), list):
            proposer = drafter and BatchDrafter(drafter)
        else:
            raise TypeError("batched decoding drafts with a separate drafter model (an "
                            "mlx-lm causal LM) or the target's MTP head only, not a "
                            f"{type(drafter).__name__}")
        self.target = BatchCache(target)
        self.drafter: BatchDrafter | BatchMtp | None = proposer
        self.eos = set(eos_token_ids)
        self.cost_prior = cost_prior
        self.prefill_chunk = prefill_chunk
        self.vocab = self.target.head(embedding(target)(mx.array([[0]]))).shape[-1]
        self._rows: list[_Sequence] = []  # in the caches' row order
        self._waiting: list[_Sequence] = []
        self._reading: _Reading | None = None
        self._next_id = 0

    def add(self, request: BatchRequest) -> int:
        """Queue a sequence; it joins at the next ``step``. Its id."""
        if request.num_draft is not None and self.drafter is None:
            raise ValueError("num_draft needs a drafter")
        processing = None
        if request.penalties.active:
            processing = LogitsProcessing(request.penalties)
            processing.bind(self.vocab)  # a logit bias id outside the vocabulary: ValueError
        policy = AdaptiveDraftLength(cost_prior=self.cost_prior) if request.num_draft is None \
            else FixedDraftLength(request.num_draft)
        seq = _Sequence(
            self._next_id, request,
            fresh_seed() if request.seed is None else request.seed, policy,
            Stats(mode=self.drafter.mode if self.drafter else "none",
                  num_draft=request.num_draft, prompt_tokens=len(request.prompt)),
            processing=processing)
        if processing is not None:
            seq.history = processing.tail(mx.array(request.prompt, mx.uint32))
        self._next_id += 1
        self._waiting.append(seq)
        return seq.id

    @property
    def done(self) -> bool:
        return not self._rows and not self._waiting and self._reading is None

    def cancel(self, sequence: int) -> Stats:
        """End a sequence now, from outside (a cancelled job, a stop string its text
        completed): it leaves the batch before the next round. Its stats so far."""
        if waiting := [s for s in self._waiting if s.id == sequence]:
            self._waiting.remove(waiting[0])
            return waiting[0].stats
        reading = self._reading.sequences if self._reading else []
        (seq,) = [s for s in self._rows + reading if s.id == sequence]
        seq.finish = Finish("cancelled")  # one being read leaves as it joins, emitting nothing
        if reading and all(s.finish for s in reading):
            self._reading = None  # no one is left to read for
        self._leave()
        return seq.stats

    def generate(self) -> Iterator[list[Emitted]]:
        """``step`` until every sequence added (also while iterating) has ended."""
        while not self.done:
            yield self.step()

    def step(self) -> list[Emitted]:
        """Read a chunk of the waiting sequences' prompts (all of them where no row is
        running), joining those read (each emits its first token), then run one round
        for the batch; what every sequence emitted, ended sequences having left."""
        out = self._read_in()
        self._leave()  # those whose first token ended them
        if self._rows:
            out += self._round()
        self._leave()
        return out

    def _read_in(self) -> list[Emitted]:
        if self._reading is None and self._waiting:
            prompts = [s.request.prompt for s in self._waiting]
            self._reading = _Reading(self._waiting, self.target.read(prompts),
                                     self.drafter.read(prompts) if self.drafter else None)
            self._waiting = []
        reading = self._reading
        while reading is not None:  # one chunk, or every chunk where no row waits on it
            h = self.target.prefill(reading.target, self.prefill_chunk)
            if self.drafter is not None:
                self.drafter.prefill(reading.proposer, self.prefill_chunk,
                                     h if self.drafter.needs_hidden else None)
            reading.last_hidden = h[:, -1]
            if reading.target.done:
                self._reading = None
                return self._join(reading)
            if self._rows:
                return []  # the running rows' round comes first
        return []

    def _join(self, reading: _Reading) -> list[Emitted]:
        """Append the sequences read to the batch; their first tokens."""
        joining = reading.sequences
        logits = self.target.head(reading.last_hidden)
        keys = step_keys([s.seed for s in joining], [0] * len(joining), 1)
        parts = [part for b, s in enumerate(joining)
                 for part in self._decide(s, logits[b : b + 1], None, None, keys[b, 0])]
        decision = mx.concatenate(parts).tolist()  # the join's one host sync
        self.target.join(reading.target)
        self._rows += joining
        read, at = [], 0
        for seq in joining:
            _, tokens, logprobs, at = self._read(seq, 0, decision, at)
            read.append((tokens, logprobs))
        if self.drafter is not None:
            self.drafter.join(reading.proposer, [tokens[0] for tokens, _ in read],
                              reading.last_hidden)
        out = []
        for seq, (tokens, logprobs) in zip(joining, read, strict=True):
            seq.steps = 1
            if seq.finish is None:  # not cancelled while it was read
                out.append(self._emit(seq, tokens, logprobs))
        return out

    def _decide(self, seq: _Sequence, logits: mx.array, drafts: mx.array | None,
                draft_dists: mx.array | None, key: mx.array) -> list[mx.array]:
        """Row ``seq``'s part of a decision, from the target's ``logits`` (k + 1, V) at
        [last, drafts]: [drafts kept, k + 1 tokens, their logprob fields if asked]."""
        logits = seq.process(logits, drafts)
        sampling = seq.request.sampling
        dist = None
        if drafts is None:  # a plain step for this row: the target's own token
            accepted, tokens = mx.array(0), draw(logits, sampling, key)[0]
        elif sampling.greedy:
            accepted, tokens = verify_greedy(logits, drafts)
        else:
            dist = seq.log_probs(logits)
            accepted, tokens = verify_sampled(mx.exp(dist), draft_dists, drafts, key)
        parts = [accepted.astype(mx.uint32)[None], tokens]
        if seq.request.logprobs is not None:
            dist = seq.log_probs(logits) if dist is None else dist
            parts.append(lp.fields(dist, tokens, seq.request.logprobs))
        return parts

    def _read(self, seq: _Sequence, k: int, decision: list[int], at: int
              ) -> tuple[int, list[int], list[lp.TokenLogprob] | None, int]:
        """Row ``seq``'s part of a read decision, from ``at``: (drafts kept, tokens
        emitted, their logprobs if asked, where the next row's part starts)."""
        n = decision[at]
        tokens = decision[at + 1 : at + 2 + n]
        at += k + 2
        logprobs = None
        if seq.request.logprobs is not None:
            size = (k + 1) * (1 + 2 * min(seq.request.logprobs, self.vocab))
            logprobs = lp.read(decision[at : at + size], k + 1, tokens)
            at += size
        return n, tokens, logprobs, at

    def _leave(self) -> None:
        keep = [i for i, s in enumerate(self._rows) if not s.finish]
        if len(keep) == len(self._rows):
            return
        self.target.filter(keep)
        if self.drafter is not None:
            self.drafter.filter(keep)
        self._rows = [self._rows[i] for i in keep]

    def _round(self) -> list[Emitted]:
        rows = self._rows
        ks = [min(s.draft_length.next(), s.remaining - 1) if self.drafter else 0 for s in rows]
        k_max = max(ks)
        keys = step_keys([s.seed for s in rows], [s.steps for s in rows], k_max + 1)
        fed = mx.array([[s.last] for s in rows], mx.uint32)
        drafts, dists = None, [None] * len(rows)
        if k_max:
            drafts, dists = self.drafter.propose(
                ks, [s.request.sampling for s in rows], keys, [s.draft_process() for s in rows])
            fed = mx.concatenate([fed, drafts], axis=1)
        hidden = self.target.hidden(fed)
        logits = self.target.head(hidden)
        parts = [part for b, (seq, k) in enumerate(zip(rows, ks, strict=True))
                 for part in self._decide(seq, logits[b, : k + 1],
                                          drafts[b, :k] if k else None, dists[b], keys[b, 0])]
        decision = mx.concatenate(parts).tolist()  # the round's one host sync
        read, at = [], 0
        for seq, k in zip(rows, ks, strict=True):
            n, tokens, logprobs, at = self._read(seq, k, decision, at)
            read.append((n, tokens, logprobs))
        accepted = [n for n, _, _ in read]
        self.target.keep([n + 1 for n in accepted], k_max + 1)
        if self.drafter is not None:
            self.drafter.commit(accepted if k_max else None, [t for _, t, _ in read], hidden)
        out = []
        for seq, k, (n, tokens, logprobs) in zip(rows, ks, read, strict=True):
            seq.steps += 1
            seq.stats.rounds += 1
            seq.stats.drafted += k
            seq.stats.accepted += n
            seq.draft_length.observe(k, n, None)
            out.append(self._emit(seq, tokens, logprobs))
        return out

    def _emit(self, seq: _Sequence, tokens: list[int],
              logprobs: list[lp.TokenLogprob] | None) -> Emitted:
        """As ``SpecDecoder`` emits: up to an end-of-sequence token (not emitted) or
        max_tokens."""
        seq.last = tokens[-1]
        seq.extend_history(tokens)
        kept = []
        for t in tokens:
            if t in self.eos:
                seq.finish = Finish("stop")
                break
            kept.append(t)
            if seq.stats.generation_tokens + len(kept) == seq.request.max_tokens:
                seq.finish = Finish("length")
                break
        seq.stats.generation_tokens += len(kept)
        return Emitted(seq.id, kept, seq.finish, seq.stats if seq.finish else None,
                       None if logprobs is None else logprobs[: len(kept)])
