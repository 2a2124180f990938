"""The accept decision for one round, computed on the device.

Given the target's distributions at ``[last, d1..dk]`` and the k drafts, both
rules return ``(accepted, tokens)``: the number of drafts kept and, for each of
the k + 1 verified positions, the token the target emits there if the round
reaches it. Tokens ``[:accepted]`` equal the kept drafts and ``tokens[accepted]``
is the correction (or, when all drafts are kept, the bonus token). Nothing here
syncs with the host: the caller reads ``accepted`` and the tokens in one go.
"""

from __future__ import annotations

import mlx.core as mx


def _accepted_prefix(accept: mx.array) -> mx.array:
    return mx.sum(mx.cumprod(accept.astype(mx.int32)))


def verify_greedy(target_logits: mx.array, drafts: mx.array) -> tuple[mx.array, mx.array]:
    """Keep the longest prefix of drafts equal to the target's argmax."""
    tokens = mx.argmax(target_logits, axis=-1).astype(mx.uint32)
    k = drafts.shape[0]
    return _accepted_prefix(drafts == tokens[:k]), tokens


def verify_sampled(
    target_probs: mx.array, draft_probs: mx.array, drafts: mx.array,
    key: mx.array | None = None,
) -> tuple[mx.array, mx.array]:
    """Speculative sampling (Leviathan et al. 2023; Chen et al. 2023).

    Draft d_i drawn from q_i is kept with probability min(1, p_i(d_i) / q_i(d_i));
    at the first rejection the token is drawn from norm(max(p_i - q_i, 0)). The
    emitted sequence is then distributed exactly as sampling from p alone.
    ``key``: the random key its draws derive from, else MLX's global one.
    """
    k = drafts.shape[0]
    width = max(target_probs.shape[-1], draft_probs.shape[-1])
    p = _pad(target_probs, width)
    q = _pad(draft_probs, width)
    rows = mx.arange(k)
    p_d = p[rows, drafts]
    q_d = q[rows, drafts]
    u_key, correction_key, bonus_key = (None,) * 3 if key is None else mx.random.split(key, 3)
    accept = mx.random.uniform(shape=(k,), key=u_key) * q_d < p_d
    residual = mx.maximum(p[:k] - q, 0.0)
    mass = residual.sum(axis=-1, keepdims=True)
    # p == q leaves no residual; such a draft is always accepted, so any row works.
    residual = mx.where(mass > 0, residual, p[:k])
    corrections = mx.random.categorical(mx.log(residual), key=correction_key)
    bonus = mx.random.categorical(mx.log(p[k:]), key=bonus_key)
    fallback = mx.concatenate([corrections, bonus]).astype(mx.uint32)
    kept = mx.concatenate([mx.where(accept, drafts, fallback[:k]), fallback[k:]])
    return _accepted_prefix(accept), kept.astype(mx.uint32)


def _pad(probs: mx.array, width: int) -> mx.array:
    extra = width - probs.shape[-1]
    if extra == 0:
        return probs
    return mx.pad(probs, [(0, 0), (0, extra)])
