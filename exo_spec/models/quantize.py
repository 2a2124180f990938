"""Quantizing a float model as it loads, as ``mlx_lm.convert -q`` writes
mlx-community checkpoints. Imports MLX only, so the CLI can name the choices."""

from __future__ import annotations

import mlx.nn as nn

QUANTIZE_BITS = (4, 8)
QUANTIZE_GROUP = 64


def quantize(model: nn.Module, bits: int | None) -> nn.Module:
    """``model`` with its float linear and embedding layers quantized in place to
    ``bits`` (group size 64, as mlx-community checkpoints are), those whose input
    width the group size divides; layers already quantized stay as they are. A
    model's own ``quant_predicate`` (mlx-lm's: MoE routers kept at 8 bits) has the
    last word, as in ``mlx_lm.convert``."""
    if not bits:
        return model
    own = getattr(model, "quant_predicate", None)

    def predicate(path: str, module: nn.Module) -> bool | dict:
        if not hasattr(module, "to_quantized") or module.weight.shape[-1] % QUANTIZE_GROUP:
            return False
        return own(path, module) if own else True

    nn.quantize(model, group_size=QUANTIZE_GROUP, bits=bits, class_predicate=predicate)
    return model
