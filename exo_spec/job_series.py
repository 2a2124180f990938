"""Decoders for one job after another on the same models, each going on with the
adaptive draft-length policy of the jobs before: its round costs are this machine's
and its kernels stay built (``AdaptiveDraftLength.start_job``). A worker's placement
decodes this way, and so do ``generate``'s timed job after its warm-up and a bench row."""

from __future__ import annotations

from .decoder_factory import make_decoder
from .engine import AdaptiveDraftLength, SpecDecoder
from .model_set import ModelSet


class JobSeries:
    policy: AdaptiveDraftLength | None = None

    def new_decoder(self, models: ModelSet, **kwargs) -> SpecDecoder:
        """``make_decoder(models, **kwargs)``, with the policy of the jobs before."""
        decoder = make_decoder(models, draft_length=self.policy, **kwargs)
        if decoder.draft_length.adaptive:
            self.policy = decoder.draft_length
        return decoder
