"""The trained target's own greedy continuations, for the drafter to learn from.

A small target decoding greedily soon settles into a few habits (its favourite
lines, its loops). A drafter that has only seen the text knows none of them; one
that has also seen the target's greedy output (sequence-level distillation:
Kim and Rush, 2016) drafts them. Continuations start from windows of the
training text, are decoded in one batch with a KV cache, and cost a small
fraction of training.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx_lm.models.cache import make_prompt_cache


def greedy_continuations(model: nn.Module, tokens: np.ndarray, *, count: int, prompt_len: int,
                         new_tokens: int, seed: int, separator: int) -> np.ndarray:
    """``count`` windows of ``prompt_len`` training tokens, each followed by the target's
    ``new_tokens`` greedy tokens and ``separator``, as one token stream."""
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, len(tokens) - prompt_len + 1, size=count)
    prompts = mx.array(tokens[starts[:, None] + np.arange(prompt_len)])
    model.eval()
    cache = make_prompt_cache(model)
    logits = model(prompts, cache=cache)[:, -1]
    generated = []
    for _ in range(new_tokens):
        token = logits.argmax(-1)
        generated.append(token)
        logits = model(token[:, None], cache=cache)[:, -1]
        mx.async_eval(logits)
    rows = mx.concatenate([prompts, mx.stack(generated, axis=1),
                           mx.full((count, 1), separator, dtype=prompts.dtype)], axis=1)
    return np.array(rows, dtype=np.int32).reshape(-1)


def mixture(text: np.ndarray, samples: np.ndarray, share: float) -> np.ndarray:
    """``text`` with ``samples`` repeated until they make about ``share`` of the tokens
    (training windows are drawn uniformly from the result)."""
    repeats = max(1, round(share / (1 - share) * len(text) / len(samples)))
    return np.concatenate([text, np.tile(samples, repeats)])
