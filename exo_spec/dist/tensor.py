"""Tensor-parallel placement: every rank holds a slice of every layer, through
mlx-lm's own ``Model.shard(group)``, where the model has one."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.utils import _get_classes

from ..models.load import text_config


def check_shardable(config: dict, ranks: int) -> None:
    """Refuse, in one line, a model mlx-lm cannot shard over ``ranks``."""
    model_class, _ = _get_classes(config)
    if not hasattr(model_class, "shard"):
        raise ValueError(f"--parallel tensor: mlx-lm cannot shard model_type "
                         f"{config['model_type']}; use --parallel pipeline")
    text = text_config(config)
    for key in ("num_attention_heads", "num_key_value_heads"):
        if text.get(key, ranks) % ranks:
            raise ValueError(f"--parallel tensor: {key} {text[key]} does not divide "
                             f"over {ranks} ranks")


def shard(model: nn.Module, group: mx.distributed.Group) -> None:
    """Keep this rank's slices of the lazily loaded ``model``, then read them."""
    model.shard(group)
    mx.eval(model.parameters())
