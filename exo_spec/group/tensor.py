"""Tensor-parallel placement: every rank holds a slice of every layer, through
mlx-lm's own ``Model.shard(group)``, where the model has one."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.utils import _get_classes

from ..models.load import text_config
from ..models.quantize import QUANTIZE_GROUP


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


def check_quantizable(config: dict, ranks: int) -> None:
    """Refuse ``--quantize`` where a rank's slice of a quantized layer would not hold
    whole groups of 64 (a layer split along its input)."""
    text = text_config(config)
    hidden, heads = text.get("hidden_size", 0), text.get("num_attention_heads", 1)
    widths = {"hidden_size": hidden, "intermediate_size": text.get("intermediate_size"),
              "attention width": heads * text.get("head_dim", hidden // heads)}
    for name, width in widths.items():
        if width and width % QUANTIZE_GROUP == 0 and (width // ranks) % QUANTIZE_GROUP:
            raise ValueError(f"--quantize with --parallel tensor: {name} {width} over "
                             f"{ranks} ranks leaves slices that are not a multiple of "
                             f"{QUANTIZE_GROUP}")


def shard(model: nn.Module, group: mx.distributed.Group) -> None:
    """Keep this rank's slices of the lazily loaded ``model``, then read them."""
    model.shard(group)
    mx.eval(model.parameters())
