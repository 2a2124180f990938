"""Training a DFlash block drafter (exo_spec.models.dflash) for a trained target.

Each training window of L + 1 tokens goes through the frozen target once; its tapped
layers' outputs at positions 0..L-1 are the context. The window is cut into blocks at
anchors a = 1, 1 + B, 1 + 2B, ... (B the block size): a block is ``[s_a, MASK x (B-1)]``
at positions a.., sees the context rows j < a and the whole block, as at inference
(where s_a is the newest token and h_0..h_{a-1} are committed), and learns
s_{a+1}..s_{a+B-1} by cross-entropy through the target's LM head. A window's blocks run
as one batch, a row each, over the context's keys computed once.

The data should be the target's own greedy continuations (``distill``): at temperature
0 each draft is checked against exactly that.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ..engine.layer_taps import tapped
from ..models import dflash
from ..models.heads import body_and_head, embedding
from .architectures import init_weights
from .sizes import Schedule
from .trainer import TrainResult, train


class BlockDraftTraining(nn.Module):
    """The drafter to train beside the target it reads, which is frozen."""

    def __init__(self, drafter: dflash.Model, target: nn.Module):
        super().__init__()
        self.drafter = drafter
        self.target = target
        target.freeze()


def block_loss(model: BlockDraftTraining, tokens: mx.array) -> tuple[mx.array]:
    """Mean cross-entropy of every block's drafts in the windows ``tokens`` (N, L + 1)."""
    drafter = model.drafter
    args = drafter.args
    size = args.block_size
    body, head = body_and_head(model.target)
    inputs = tokens[:, :-1]
    n, length = inputs.shape
    if length < size:
        raise ValueError(f"windows of {length} tokens hold no block of {size}")
    _, features = tapped(body, args.target_layer_ids, inputs, None)
    context = drafter.context(mx.stop_gradient(features), 0)  # per layer (N, kv, L, D)
    anchors = mx.arange(1, length - size + 2, size)
    m = anchors.shape[0]
    rows = n * m

    def per_block(x: mx.array) -> mx.array:  # (N, ...) shared by a window's m blocks
        return mx.broadcast_to(x[:, None], (n, m, *x.shape[1:])).reshape(rows, *x.shape[1:])

    context = [(per_block(k), per_block(v)) for k, v in context]
    masks = mx.full((n, m, size - 1), args.mask_token_id, dtype=tokens.dtype)
    block = mx.concatenate([tokens[:, anchors][..., None], masks], axis=-1)
    labels = tokens[:, anchors[:, None] + mx.arange(1, size)].reshape(rows, size - 1)
    sees = mx.arange(length)[None] < anchors[:, None]  # (m, L): context rows before a
    visible = mx.concatenate([mx.broadcast_to(sees[:, None, None], (m, 1, size, length)),
                              mx.ones((m, 1, size, size), dtype=mx.bool_)], axis=-1)
    visible = mx.broadcast_to(visible[None], (n, *visible.shape)).reshape(
        rows, 1, size, length + size)
    offsets = mx.broadcast_to(anchors[None], (n, m)).reshape(rows)
    embeds = embedding(model.target)(block.reshape(rows, size))
    out = drafter(embeds, context, offsets, visible)
    logits = head(out[:, 1:])
    return (nn.losses.cross_entropy(logits, labels, reduction="mean"),)


def train_dflash(target: nn.Module, target_config: dict, tokens: np.ndarray,
                 schedule: Schedule, *, block_size: int, target_layer_ids: list[int],
                 mask_token_id: int, num_hidden_layers: int = 1, seed: int = 0,
                 compute_dtype: mx.Dtype = mx.float32, max_steps: int | None = None,
                 time_budget_s: float | None = None,
                 log: Callable[[str], None] = lambda line: print(line, file=sys.stderr,
                                                                  flush=True),
                 ) -> tuple[dflash.Model, dict, TrainResult]:
    """A drafter trained on ``tokens`` for ``target`` (whose config is
    ``target_config``; the target is left frozen), its published-layout config, and
    how training went."""
    config = dflash.config_for(target_config, block_size=block_size,
                               target_layer_ids=target_layer_ids, mask_token_id=mask_token_id,
                               num_hidden_layers=num_hidden_layers)
    drafter = dflash.Model(dflash.ModelArgs.from_dict(config))
    init_weights(drafter, seed, num_hidden_layers)
    result = train(BlockDraftTraining(drafter, target), block_loss, tokens, schedule,
                   name="DFlash drafter", seed=seed, compute_dtype=compute_dtype,
                   max_steps=max_steps, time_budget_s=time_budget_s, log=log)
    return drafter, config, result
