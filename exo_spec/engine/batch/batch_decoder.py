"""Continuous batching with speculation: several sequences decode together, each with
its own sampling, seed and draft length, in rounds of one batched verify pass.

A round (``BatchDecoder.step``):

 1. each sequence picks its k (its own fixed or adaptive policy); k_max = max k
 2. the drafter drafts k_max tokens for every row; a row ignores drafts past its k
 3. the target verifies [last, d1..d_kmax] for every row in one pass (B, k_max + 1)
 4. each row's accept decision on the device (``verify``), all rows in one array,
    read by the round's one host sync
 5. every row keeps its accepted prefix plus the correction or bonus token: the
    caches keep a different count per row (``ragged_cache``), the drafter's too

Where every row picks k = 0 the round is a plain batched target step. Sequences
join between rounds (``add``; those waiting are prefilled together, in one go,
before the next round) and leave once they end (an end-of-sequence token or
max_tokens). A sequence's
draws are keyed by its own seed and step count (``keys``), and what it draws has
shapes of its own k only: at a fixed k a seeded sequence emits the same tokens
whoever shares its batch.

Supported: a separate drafter model (or none: plain batched decoding), targets and
drafters whose layers are all full-attention ``KVCache``; other layers are refused.
The adaptive policy is told acceptance only, no timings: a round's time is the
whole batch's, so k follows each sequence's acceptance and the policy's cost prior.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn

from ...sampling import check_seed
from ..decoder import Finish
from ..draft_length import AdaptiveDraftLength, FixedDraftLength
from ..sampling import Sampling, draw, probs
from ..stats import Stats
from ..verify import verify_greedy, verify_sampled
from .batch_cache import BatchCache
from .batch_drafter import BatchDrafter
from .keys import fresh_seed, step_keys


@dataclass(frozen=True)
class BatchRequest:
    prompt: list[int]
    max_tokens: int
    sampling: Sampling = Sampling()
    seed: int | None = None  # None: one drawn from MLX's global key as the sequence joins
    num_draft: int | None = None  # a fixed k, or None for the adaptive policy

    def __post_init__(self):
        if not self.prompt:
            raise ValueError("the prompt is empty")
        if self.max_tokens <= 0:
            raise ValueError(f"max_tokens must be > 0, got {self.max_tokens}")
        check_seed(self.seed)
        if self.num_draft is not None and self.num_draft < 1:
            raise ValueError(f"num_draft must be >= 1 (or None: adaptive), got {self.num_draft}")


@dataclass
class Emitted:
    """What one sequence emitted in one step; ``finish`` once it has ended."""

    sequence: int  # the id ``BatchDecoder.add`` returned
    tokens: list[int]
    finish: Finish | None = None
    stats: Stats | None = None  # the sequence's, once it has ended


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

    @property
    def remaining(self) -> int:
        return self.request.max_tokens - self.stats.generation_tokens


class BatchDecoder:
    def __init__(self, target: nn.Module, drafter: nn.Module | None = None, *,
                 eos_token_ids: set[int] | frozenset[int] = frozenset(),
                 cost_prior: float = 0.3):
        """``cost_prior``: the adaptive policy's cost of a draft in plain steps (see
        ``draft_length``; ``decoder_factory`` uses the drafter's size over the target's)."""
        if drafter is not None and not isinstance(getattr(drafter, "layers", None), list):
            raise TypeError("batched decoding drafts with a separate drafter model only "
                            f"(an mlx-lm causal LM), not a {type(drafter).__name__}")
        self.target = BatchCache(target)
        self.drafter = BatchDrafter(drafter) if drafter is not None else None
        self.eos = set(eos_token_ids)
        self.cost_prior = cost_prior
        self._rows: list[_Sequence] = []  # in the caches' row order
        self._waiting: list[_Sequence] = []
        self._next_id = 0

    def add(self, request: BatchRequest) -> int:
        """Queue a sequence; it joins at the next ``step``. Its id."""
        if request.num_draft is not None and self.drafter is None:
            raise ValueError("num_draft needs a drafter")
        policy = AdaptiveDraftLength(cost_prior=self.cost_prior) if request.num_draft is None \
            else FixedDraftLength(request.num_draft)
        seq = _Sequence(
            self._next_id, request,
            fresh_seed() if request.seed is None else request.seed, policy,
            Stats(mode=self.drafter.mode if self.drafter else "none",
                  num_draft=request.num_draft, prompt_tokens=len(request.prompt)))
        self._next_id += 1
        self._waiting.append(seq)
        return seq.id

    @property
    def done(self) -> bool:
        return not self._rows and not self._waiting

    def generate(self) -> Iterator[list[Emitted]]:
        """``step`` until every sequence added (also while iterating) has ended."""
        while not self.done:
            yield self.step()

    def step(self) -> list[Emitted]:
        """Let waiting sequences join (each emits its first token), then run one round
        for the batch; what every sequence emitted, ended sequences having left."""
        out = self._join(self._waiting) if self._waiting else []
        self._waiting = []
        self._leave()  # those whose first token ended them
        if self._rows:
            out += self._round()
        self._leave()
        return out

    def _join(self, joining: list[_Sequence]) -> list[Emitted]:
        """Prefill ``joining`` together and append them to the batch; their first tokens."""
        prompts = [s.request.prompt for s in joining]
        logits = self.target.add(prompts)
        keys = step_keys([s.seed for s in joining], [0] * len(joining), 1)
        firsts = mx.concatenate([draw(logits[b : b + 1], s.request.sampling, keys[b, 0])[0]
                                 for b, s in enumerate(joining)])
        firsts = firsts.tolist()  # what the prompt passes emit: the join's one host sync
        if self.drafter is not None:
            self.drafter.add(prompts, firsts)
        self._rows += joining
        out = []
        for seq, first in zip(joining, firsts, strict=True):
            seq.steps = 1
            out.append(self._emit(seq, [first]))
        return out

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
        samplings = [s.request.sampling for s in rows]
        fed = mx.array([[s.last] for s in rows], mx.uint32)
        dists: list[mx.array | None] = [None] * len(rows)
        if k_max:
            drafts, dists = self.drafter.propose(ks, samplings, keys)
            fed = mx.concatenate([fed, drafts], axis=1)
        logits = self.target(fed)
        parts = []
        for b, (k, sampling) in enumerate(zip(ks, samplings, strict=True)):
            if k == 0:  # a plain step for this row: the target's own token
                accepted, tokens = mx.array(0), draw(logits[b, :1], sampling, keys[b, 0])[0]
            elif sampling.greedy:
                accepted, tokens = verify_greedy(logits[b, : k + 1], drafts[b, :k])
            else:
                accepted, tokens = verify_sampled(probs(logits[b, : k + 1], sampling),
                                                  dists[b], drafts[b, :k], keys[b, 0])
            parts += [accepted.astype(mx.uint32)[None], tokens]
        decision = mx.concatenate(parts).tolist()  # the round's one host sync
        accepted, emitted, at = [], [], 0
        for k in ks:
            n = decision[at]
            accepted.append(n)
            emitted.append(decision[at + 1 : at + 2 + n])
            at += k + 2
        self.target.keep([n + 1 for n in accepted], k_max + 1)
        if self.drafter is not None:
            self.drafter.commit(accepted if k_max else None, emitted)
        out = []
        for seq, k, n, tokens in zip(rows, ks, accepted, emitted, strict=True):
            seq.steps += 1
            seq.stats.rounds += 1
            seq.stats.drafted += k
            seq.stats.accepted += n
            seq.draft_length.observe(k, n, None)
            out.append(self._emit(seq, tokens))
        return out

    def _emit(self, seq: _Sequence, tokens: list[int]) -> Emitted:
        """As ``SpecDecoder`` emits: up to an end-of-sequence token (not emitted) or
        max_tokens."""
        seq.last = tokens[-1]
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
        return Emitted(seq.id, kept, seq.finish, seq.stats if seq.finish else None)
