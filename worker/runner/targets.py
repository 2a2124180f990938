"""What a runner decodes with: one machine's models, or rank 0 of a group."""

from __future__ import annotations

from typing import Protocol

from mlx_lm.tokenizer_utils import TokenizerWrapper

from ...engine import Sampling, SpecDecoder
from ...group.rank import Rank
from ...job_series import JobSeries
from ...model_set import ModelSet
from ...models.load import text_config
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


def _context_length(config: dict) -> int:
    return int(text_config(config).get("max_position_embeddings", 0))


class Local(JobSeries):
    """One machine: weights loaded once, a fresh decoder (and caches) per job."""

    def __init__(self, models: ModelSet):
        self.models = models
        self.tokenizer = models.target.tokenizer
        self.token_bytes = TokenBytes(self.tokenizer)
        self.context_length = _context_length(models.target.config)
        self.mode = models.mode

    def decoder(self, sampling: Sampling, num_draft: int | None, *,
                penalties: Penalties = NO_PENALTIES, logprobs: int | None = None) -> SpecDecoder:
        return self.new_decoder(self.models, sampling=sampling, num_draft=num_draft,
                                penalties=penalties, logprobs=logprobs)

    def extra_stats(self, decoder: SpecDecoder) -> dict:
        return {"ranks": 1}


class GroupLeader(JobSeries):
    """Rank 0 of a group: every job starts by resetting the whole group."""

    def __init__(self, rank: Rank):
        self.rank = rank
        self.target = rank.lead()
        self.tokenizer = rank.target.tokenizer
        self.token_bytes = TokenBytes(self.tokenizer)
        self.context_length = _context_length(rank.target.config)
        self.mode = rank.models.mode

    def decoder(self, sampling: Sampling, num_draft: int | None, *,
                penalties: Penalties = NO_PENALTIES, logprobs: int | None = None) -> SpecDecoder:
        self.target.reset()
        return self.new_decoder(self.rank.models, sampling=sampling, num_draft=num_draft,
                                penalties=penalties, logprobs=logprobs, target=self.target)

    def extra_stats(self, decoder: SpecDecoder) -> dict:
        return {"ranks": self.rank.group.size(), "parallel": self.rank.parallel,
                **self.target.traffic_per_round(decoder.stats.rounds)}


