"""The gated delta rule in chunks, for training Qwen3.5's GatedDeltaNet layers.

mlx-lm trains GatedDeltaNet with its reference recurrence, one step per token:
a Python loop of T small steps (each kept for the backward pass), which costs
far more in launches and graph nodes than in arithmetic: seconds per step for a
100M target on a GPU. The same function computed chunk by
chunk (Yang, Kautz, Hatamizadeh, "Gated Delta Networks", 2024, the chunkwise
form) loops over T / CHUNK chunks plus CHUNK substitution steps instead, with
the rest done as batched matrix products. Inference keeps mlx-lm's own code.

mlx-lm's recurrence, per head, with state S (Dv x Dk)::

    S_t = g_t S_{t-1} + b_t (v_t - g_t S_{t-1} k_t) k_t^T        y_t = S_t q_t

Within a chunk starting from S_0, with G_t the product of the gates up to t,
S_t = G_t S_0 + sum_{j<=t} (G_t / G_j) u_j k_j^T, where the rows u_j solve
(I + A) U = diag(b) V - diag(b G) K S_0^T, A_tj = b_t (G_t / G_j) k_t.k_j for j < t.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models import qwen3_5

CHUNK = 16


def chunked_gated_delta(q: mx.array, k: mx.array, v: mx.array, log_g: mx.array,
                        beta: mx.array, chunk: int = CHUNK) -> tuple[mx.array, mx.array]:
    """mlx-lm's ``gated_delta_ops`` from a zero state, without a mask, with scalar gates
    given as their logarithm. q, k: (B, T, Hk, Dk); v: (B, T, Hv, Dv); log_g, beta:
    (B, T, Hv). Returns y (B, T, Hv, Dv) in q's dtype and the final state (B, Hv, Dv, Dk)."""
    B, T, Hk, Dk = q.shape
    Hv, Dv = v.shape[-2:]
    dtype = q.dtype
    if Hv // Hk > 1:
        q, k = (mx.repeat(x, Hv // Hk, -2) for x in (q, k))
    pad = -T % chunk
    n = (T + pad) // chunk

    # (B, Hv, n, chunk, ...) in float32; padded steps have b = 0 and g = 1: no-ops.
    def blocks(x):
        x = mx.pad(x.astype(mx.float32), [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
        x = x.reshape(B, n, chunk, *x.shape[2:])
        return x.transpose(0, 3, 1, 2, 4) if x.ndim == 5 else x.transpose(0, 3, 1, 2)

    q, k, v, log_g, beta = (blocks(x) for x in (q, k, v, log_g, beta))
    cum = mx.cumsum(log_g, axis=-1)  # log G_t within the chunk
    causal = mx.tril(mx.ones((chunk, chunk), dtype=mx.bool_))
    diff = cum[..., :, None] - cum[..., None, :]
    decay = mx.where(causal, mx.exp(mx.where(causal, diff, 0.0)), 0.0)  # G_t / G_j, j <= t

    strict = decay * (1 - mx.eye(chunk))
    a = beta[..., None] * (k @ k.swapaxes(-1, -2)) * strict
    inverse = _unit_lower_inverse(a)
    gates = mx.exp(cum)[..., None]
    w = inverse @ (beta[..., None] * gates * k)
    u_free = inverse @ (beta[..., None] * v)
    scores = (q @ k.swapaxes(-1, -2)) * decay
    q_gated = gates * q
    k_to_end = mx.exp(cum[..., -1:] - cum)[..., None] * k
    chunk_gate = mx.exp(cum[..., -1])[..., None, None]

    state = mx.zeros((B, Hv, Dv, Dk), dtype=mx.float32)
    ys = []
    for i in range(n):
        s_t = state.swapaxes(-1, -2)
        u = u_free[:, :, i] - w[:, :, i] @ s_t
        ys.append(q_gated[:, :, i] @ s_t + scores[:, :, i] @ u)
        state = chunk_gate[:, :, i] * state + u.swapaxes(-1, -2) @ k_to_end[:, :, i]
    y = mx.stack(ys, axis=2).reshape(B, Hv, n * chunk, Dv)[:, :, :T]
    return y.transpose(0, 2, 1, 3).astype(dtype), state


def _unit_lower_inverse(a: mx.array) -> mx.array:
    """(I + a)^-1 for strictly lower-triangular a (..., C, C), by forward substitution:
    row i of the inverse is e_i - a_i @ (rows above it)."""
    size = a.shape[-1]
    rows = mx.broadcast_to(mx.eye(size), a.shape)
    for i in range(1, size):
        row = rows[..., i : i + 1, :] - a[..., i : i + 1, :] @ rows
        rows = mx.concatenate([rows[..., :i, :], row, rows[..., i + 1 :, :]], axis=-2)
    return rows


@contextmanager
def chunked_training() -> Iterator[None]:
    """While active, mlx-lm's Qwen3.5 layers in training mode (no cache, no mask) run
    the chunked rule; everything else goes to mlx-lm's own ``gated_delta_update``."""
    original = qwen3_5.gated_delta_update

    def update(q, k, v, a, b, A_log, dt_bias, state=None, mask=None, *, use_kernel=True,
               **kwargs):
        if use_kernel or state is not None or mask is not None or kwargs:
            return original(q, k, v, a, b, A_log, dt_bias, state, mask,
                            use_kernel=use_kernel, **kwargs)
        log_g = -mx.exp(A_log.astype(mx.float32)) * nn.softplus(a + dt_bias)
        return chunked_gated_delta(q, k, v, log_g, mx.sigmoid(b))

    qwen3_5.gated_delta_update = update
    try:
        yield
    finally:
        qwen3_5.gated_delta_update = original
