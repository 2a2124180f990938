"""A model on this machine with its own caches, rewound after speculation
(``round_cache``). The target and a separate drafter use it the same way; either may
start a job from restored caches (``adopt``, see ``prefix_cache``).

With a ``pass_width``, every decoding pass runs at that many rows: a plain step or a
round of fewer tokens is padded with copies of its last token, and the padding is
taken back from the caches at once (a plain step) or with the round's rejected
drafts. On GPUs a row's logits can depend on how many rows its pass has (kernels
tile and reduce by width), so a round's verify rows may differ from the plain steps
at the same positions and near-ties flip; with one width for every pass, a greedy
decode is the same bit for bit at every draft length and with speculation off. The
padding rows come after the real ones, so the causal mask keeps them out of every
real row. A prompt's prefill is not padded: it is the same with speculation or not."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.cache import KVCache, RotatingKVCache, make_prompt_cache

from ..models.heads import body_and_head
from .layer_taps import tapped
from .round_cache import RoundCache
from .target import prefill


def make_cache(model: nn.Module, max_kv_size: int | None = None) -> list:
    """mlx-lm's cache for ``model`` (any object whose ``layers`` make their own).
    mlx-lm ignores max_kv_size for models that make their own caches; we bound every
    full-attention layer, keeping the first tokens as mlx-lm does."""
    cache = make_prompt_cache(model)
    if max_kv_size:
        cache = [RotatingKVCache(max_kv_size, keep=4) if type(c) is KVCache else c
                 for c in cache]
    return cache


class CachedModel:
    chains_rounds = True

    def __init__(self, model: nn.Module, *, max_kv_size: int | None = None,
                 pass_width: int | None = None, taps: list[int] | None = None):
        """``taps``: the hidden states asked for are these layers' outputs, concatenated
        (``layer_taps.tapped``), instead of the final ones."""
        self.model = model
        self.pass_width = pass_width
        self.taps = taps
        self._body, self._head = body_and_head(model)
        self.rounds = RoundCache(lambda: make_cache(model, max_kv_size),
                                 lambda x, cache: model(x, cache=cache))
        self._unfed_round: int | None = None  # the width of a round begun, not yet fed

    @property
    def cache(self) -> list:
        return self.rounds.cache

    def __call__(self, tokens: mx.array, hidden: bool = False):
        """Logits (S, V) for ``tokens`` (S,), and the final hidden states (S, H) (with
        ``taps``, the tapped ones) if asked, else None."""
        real = tokens.shape[0]
        in_round, self._unfed_round = self._unfed_round == real, None
        if self.pass_width is None or (real >= self.pass_width and not in_round):
            return self._forward(tokens, hidden)
        width = max(self.pass_width, real)
        if not in_round:
            self.rounds.begin(width)
        padded = mx.concatenate([tokens, mx.repeat(tokens[-1:], width - real)])
        logits, h = self._forward(padded, hidden)
        if not in_round:
            self.rounds.end_newest(padded, real)
        return logits[:real], None if h is None else h[:real]

    def _forward(self, tokens: mx.array, hidden: bool = False):
        if not hidden:
            return self.model(tokens[None], cache=self.cache)[0], None
        if self.taps:
            h, states = tapped(self._body, self.taps, tokens[None], self.cache)
            return self._head(h)[0], states[0]
        h = self._body(tokens[None], cache=self.cache)
        return self._head(h)[0], h[0]

    def last_logits(self, tokens: mx.array) -> mx.array:
        """Feed ``tokens`` (S,); logits (1, V) of the last position only, so catching
        up on many tokens does not pay for S rows of the lm_head."""
        h = self._body(tokens[None], cache=self.cache)
        return self._head(h[:, -1:])[0]

    def prefill(self, tokens: mx.array, *, hidden: bool = False, start: int = 0):
        return prefill(self._forward, self.cache, tokens, hidden=hidden, start=start)

    def adopt(self, caches: list) -> None:
        """Go on from ``caches`` (a prefix-cache hit's, of this model's layout) instead of
        the caches it holds; a round left open is dropped, not closed."""
        self.rounds.drop()
        self.rounds.cache = caches

    def begin_round(self, width: int) -> None:
        self._unfed_round = width
        self.rounds.begin(width if self.pass_width is None else max(self.pass_width, width))

    def end_round(self, fed: mx.array, kept: int) -> None:
        self.rounds.end(fed, kept)

    def undo_round(self) -> None:
        self.rounds.undo()
