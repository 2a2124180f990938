"""Log-probabilities of the emitted tokens, under the target's distribution at each
position: after penalties, temperature and the sampling filters (the distribution
the token was drawn from); at temperature 0 the processed logits' log-softmax at
temperature 1, as OpenAI reports greedy logprobs.

They are computed on the device with the accept decision and read in the same
transfer: ``fields`` packs them into the decision's uint32 array (the float32
values bit for bit), ``read`` unpacks them on the host.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

MAX_TOP_LOGPROBS = 20  # OpenAI's bound on top_logprobs


@dataclass
class TokenLogprob:
    token_id: int
    logprob: float
    top: list[tuple[int, float]]  # the likeliest tokens there, likeliest first

    def to_dict(self) -> dict:
        return {"token_id": self.token_id, "logprob": self.logprob,
                "top": [[t, lp] for t, lp in self.top]}


def check_top(n: int | None) -> None:
    if n is not None and not (isinstance(n, int) and 0 <= n <= MAX_TOP_LOGPROBS):
        raise ValueError(f"logprobs must be an integer in 0..{MAX_TOP_LOGPROBS}, got {n}")


def fields(log_probs: mx.array, tokens: mx.array, n: int) -> mx.array:
    """For each row of ``log_probs`` (R, V), the log-probability of its token in
    ``tokens`` (R,) and the ``n`` likeliest tokens with theirs, as uint32
    (R * (1 + 2n),): the R values, then R * n ids, then R * n values."""
    rows = log_probs.shape[0]
    chosen = log_probs[mx.arange(rows), tokens]
    parts = [mx.view(chosen, mx.uint32)]
    n = min(n, log_probs.shape[-1])
    if n:
        ids = mx.argpartition(-log_probs, kth=n - 1, axis=-1)[:, :n]
        values = mx.take_along_axis(log_probs, ids, axis=-1)
        order = mx.argsort(-values, axis=-1)
        ids = mx.take_along_axis(ids, order, axis=-1)
        values = mx.take_along_axis(values, order, axis=-1)
        parts += [ids.astype(mx.uint32).reshape(-1), mx.view(values, mx.uint32).reshape(-1)]
    return mx.concatenate(parts)


def read(values: list[int], rows: int, tokens: list[int]) -> list[TokenLogprob]:
    """Unpack ``fields`` of ``rows`` rows (read as ``values``), of which the first
    ``len(tokens)`` emitted ``tokens``. Alternatives the distribution excludes (the
    sampling filters give them -inf) are left out."""
    bits = np.array(values, dtype=np.uint32)
    n = (bits.shape[0] - rows) // (2 * rows)
    chosen = bits[:rows].view(np.float32)
    ids = bits[rows : rows + rows * n].reshape(rows, n)
    top = bits[rows + rows * n :].view(np.float32).reshape(rows, n)
    return [
        TokenLogprob(token, float(chosen[r]), [(int(i), float(v))
                                               for i, v in zip(ids[r], top[r], strict=True)
                                               if math.isfinite(v)])
        for r, token in enumerate(tokens)
    ]
