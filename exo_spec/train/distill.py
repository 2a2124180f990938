"""The trained target's own greedy continuations, for the drafter to learn from.

A small target decoding greedily soon settles into a few habits (its favourite
lines, its loops). A drafter that has only seen the text knows none of them; one
that has also seen the target's greedy output (sequence-level distillation:
Kim and Rush, 2016) drafts them. Continuations start from windows of the
training text, are decoded in batches with a KV cache, and cost a small
fraction of training.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx_lm.models.cache import make_prompt_cache

# Continuations decoded at once. CUDA limits a grid's y and z sizes to 65,535, and
# batch x window x heads past it makes MLX's CUDA backend fail at the first decode
# step ("cudaGraphAddKernelNode ... invalid argument"); 16 keeps the bench target
# under it.
BATCH_SIZE = 16


def greedy_continuations(model: nn.Module, tokens: np.ndarray, *, count: int, prompt_len: int,
                         new_tokens: int, seed: int, separator: int,
                         batch_size: int = BATCH_SIZE) -> np.ndarray:
    """``count`` windows of ``prompt_len`` training tokens, each followed by the target's
    ``new_tokens`` greedy tokens and ``separator``, as one token stream."""
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, len(tokens) - prompt_len + 1, size=count)
    windows = tokens[starts[:, None] + np.arange(prompt_len)]
    model.eval()
    rows = [_continue(model, mx.array(windows[i : i + batch_size]), new_tokens, separator)
            for i in range(0, count, batch_size)]
    return np.concatenate(rows).reshape(-1)


def _continue(model: nn.Module, prompts: mx.array, new_tokens: int, separator: int) -> np.ndarray:
    cache = make_prompt_cache(model)
    logits = model(prompts, cache=cache)[:, -1]
    generated = []
    for _ in range(new_tokens):
        token = logits.argmax(-1)
        generated.append(token)
        logits = model(token[:, None], cache=cache)[:, -1]
        mx.async_eval(logits)
    rows = mx.concatenate([prompts, mx.stack(generated, axis=1),
                           mx.full((prompts.shape[0], 1), separator, dtype=prompts.dtype)],
                          axis=1)
    return np.array(rows, dtype=np.int32)


def mixture(text: np.ndarray, samples: np.ndarray, share: float) -> np.ndarray:
    """``text`` with ``samples`` repeated until they make about ``share`` of the tokens
    (training windows are drawn uniformly from the result)."""
    repeats = max(1, round(share / (1 - share) * len(text) / len(samples)))
    return np.concatenate([text, np.tile(samples, repeats)])
