"""Decoders for one job after another on the same models, each going on with the
adaptive draft-length policy of the jobs before: its round costs are this machine's
and its kernels stay built (``AdaptiveDraftLength.start_job``). A worker's placement
decodes this way, and so do ``generate``'s timed job after its warm-up and a bench row.
With a ``PrefixCache`` the series also keeps the caches of its recent prompts, so that
a job whose prompt extends one (a conversation's next turn) prefills only the rest."""

from __future__ import annotations

from .decoder_factory import make_decoder
from .engine import AdaptiveDraftLength, SpecDecoder
from .engine.prefix_cache import PrefixCache
from .group.prefix_cache import GroupPrefixCache
from .model_set import ModelSet


class JobSeries:
    policy: AdaptiveDraftLength | None = None
    prefix_cache: PrefixCache | GroupPrefixCache | None = None  # one model, one cache layout

    def __init__(self, prefix_cache: PrefixCache | GroupPrefixCache | None = None):
        self.prefix_cache = prefix_cache

    def new_decoder(self, models: ModelSet, **kwargs) -> SpecDecoder:
        """``make_decoder(models, **kwargs)``, with the policy of the jobs before (and the
        series' prefix cache: a ``PrefixCache`` with this machine's target, a
        ``GroupPrefixCache`` with the group's target that ``kwargs`` name)."""
        if self.prefix_cache is not None and \
                isinstance(self.prefix_cache, PrefixCache) == (kwargs.get("target") is None):
            kwargs.setdefault("prefix_cache", self.prefix_cache)
        decoder = make_decoder(models, draft_length=self.policy, **kwargs)
        if decoder.draft_length.adaptive:
            self.policy = decoder.draft_length
        return decoder
