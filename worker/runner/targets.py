"""What a runner decodes with: one machine's models, or rank 0 of a group."""

from __future__ import annotations

from typing import Protocol

from mlx_lm.tokenizer_utils import TokenizerWrapper

from ...engine import Sampling, SpecDecoder
from ...engine.prefix_cache import PrefixCache
from ...group.prefix_cache import GroupPrefixCache
from ...group.rank import Rank
from ...job_series import JobSeries
from ...model_set import ModelSet
from ...models.load import context_length
from ...sampling import NO_PENALTIES, Penalties
from .token_bytes import TokenBytes


class Target(Protocol):
    """What ``job.run_job`` needs."""

    tokenizer: TokenizerWrapper
    token_bytes: TokenBytes  # a token's own bytes, for logprobs
    context_length: int  # 0 when unknown

    def decoder(self, sampling: Sampling, num_draft: int | None, *,
                penalties: Penalties = NO_PENALTIES, logprobs: int | None = None) -> SpecDecoder:
        """A decoder with empty caches, ready for one job; ``logprobs``: with each
        emitted token, its logprob and this many alternatives (None: none)."""

    def extra_stats(self, decoder: SpecDecoder) -> dict:
        """Stats beyond the decoder's own (ranks, traffic), asked once it is done."""


class Local(JobSeries):
    """One machine: weights loaded once, a fresh decoder per job, whose caches start
    from ``prefix_cache``'s longest entry for its prompt, if any (one per placement)."""

    def __init__(self, models: ModelSet, prefix_cache: PrefixCache | None = None):
        super().__init__(prefix_cache)
        self.models = models
        self.tokenizer = models.target.tokenizer
        self.token_bytes = TokenBytes(self.tokenizer)
        self.context_length = context_length(models.target.config)
        self.mode = models.mode

    def decoder(self, sampling: Sampling, num_draft: int | None, *,
                penalties: Penalties = NO_PENALTIES, logprobs: int | None = None) -> SpecDecoder:
        return self.new_decoder(self.models, sampling=sampling, num_draft=num_draft,
                                penalties=penalties, logprobs=logprobs)

    def extra_stats(self, decoder: SpecDecoder) -> dict:
        return {"ranks": 1}


class GroupLeader(JobSeries):
    """Rank 0 of a group: every job starts by resetting the whole group. With
    ``prefix_cache_bytes`` the group keeps the caches of its recent prompts: every rank
    its own stage's, rank 0 deciding (``group.prefix_cache``; rank 0's share is what
    the bound counts)."""

    def __init__(self, rank: Rank, prefix_cache_bytes: int = 0):
        self.rank = rank
        self.target = rank.lead()
        super().__init__(GroupPrefixCache(PrefixCache(prefix_cache_bytes), self.target)
                         if prefix_cache_bytes else None)
        self.tokenizer = rank.target.tokenizer
        self.token_bytes = TokenBytes(self.tokenizer)
        self.context_length = context_length(rank.target.config)
        self.mode = rank.models.mode

    def decoder(self, sampling: Sampling, num_draft: int | None, *,
                penalties: Penalties = NO_PENALTIES, logprobs: int | None = None) -> SpecDecoder:
        self.target.reset()
        return self.new_decoder(self.rank.models, sampling=sampling, num_draft=num_draft,
                                penalties=penalties, logprobs=logprobs, target=self.target)

    def extra_stats(self, decoder: SpecDecoder) -> dict:
        return {"ranks": self.rank.group.size(), "parallel": self.rank.parallel,
                **self.target.traffic_per_round(decoder.stats.rounds)}


