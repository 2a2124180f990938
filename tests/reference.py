"""mlx-lm's own non-speculative decode: the reference every parity test compares to."""

from __future__ import annotations

import mlx.core as mx
from mlx_lm.generate import generate_step


def greedy_reference(model, prompt: list[int], max_tokens: int, **kwargs) -> list[int]:
    steps = generate_step(mx.array(prompt), model, max_tokens=max_tokens, **kwargs)
    return [token for token, _ in steps]
