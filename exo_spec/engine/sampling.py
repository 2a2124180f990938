"""The distribution a job's ``Sampling`` settings define over the vocabulary.

Filters follow mlx-lm's ``make_sampler`` order (top-p, then min-p, then top-k),
each applied to the log-probabilities at temperature 1, then the temperature.
The speculative verifier needs the distributions themselves, not just a sample,
so both the target's and the drafter's are computed here the same way.
"""

from __future__ import annotations

import math

import mlx.core as mx

from ..sampling import Sampling


def log_probs(logits: mx.array, sampling: Sampling) -> mx.array:
    """Log-probabilities (rows, V) of the distribution tokens are sampled from."""
    logits = logits.astype(mx.float32)
    lp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    if sampling.top_p < 1:
        lp = _top_p(lp, sampling.top_p)
    if sampling.min_p > 0:
        lp = _min_p(lp, sampling.min_p)
    if 0 < sampling.top_k < lp.shape[-1]:
        lp = _top_k(lp, sampling.top_k)
    lp = lp / sampling.temp
    return lp - mx.logsumexp(lp, axis=-1, keepdims=True)


def probs(logits: mx.array, sampling: Sampling) -> mx.array:
    return mx.exp(log_probs(logits, sampling))


def _top_p(lp: mx.array, top_p: float) -> mx.array:
    order = mx.argsort(-lp, axis=-1)
    sorted_p = mx.exp(mx.take_along_axis(lp, order, axis=-1))
    before = mx.cumsum(sorted_p, axis=-1) - sorted_p
    keep_sorted = before < top_p  # the smallest prefix whose mass reaches top_p
    keep = mx.put_along_axis(mx.zeros_like(keep_sorted), order, keep_sorted, axis=-1)
    return mx.where(keep, lp, -mx.inf)


def _min_p(lp: mx.array, min_p: float) -> mx.array:
    threshold = mx.max(lp, axis=-1, keepdims=True) + math.log(min_p)
    return mx.where(lp >= threshold, lp, -mx.inf)


def _top_k(lp: mx.array, top_k: int) -> mx.array:
    kth = mx.sort(lp, axis=-1)[..., -top_k][..., None]
    return mx.where(lp >= kth, lp, -mx.inf)


def draw(logits: mx.array, sampling: Sampling, key: mx.array | None = None
         ) -> tuple[mx.array, mx.array | None]:
    """One token per row (argmax when greedy) and, unless greedy, the distribution it
    was drawn from, which the verifier needs from a proposer. ``key``: the random key
    to draw with, else MLX's global one."""
    if sampling.greedy:
        return mx.argmax(logits, axis=-1).astype(mx.uint32), None
    lp = log_probs(logits, sampling)
    return mx.random.categorical(lp, key=key).astype(mx.uint32), mx.exp(lp)


def sample(logits: mx.array, sampling: Sampling) -> mx.array:
    """One token per row; the distribution stays unevaluated."""
    return draw(logits, sampling)[0]
