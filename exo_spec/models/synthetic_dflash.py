"""Tiny random-weight DFlash drafters for a target checkpoint, written with fixed
seeds in the published layout (see exo_spec.models.dflash)."""

from __future__ import annotations

import json
from pathlib import Path

from mlx.utils import tree_unflatten

from . import dflash
from .synthetic import _random_params


def spread_layers(num_layers: int, count: int = 2) -> list[int]:
    """``count`` target layers spread from the first to the last."""
    if count == 1:
        return [num_layers // 2]
    return sorted({round(i * (num_layers - 1) / (count - 1)) for i in range(count)})


def write_dflash(out: Path, target_dir: Path, *, seed: int = 0, block_size: int = 5,
                 num_hidden_layers: int = 1, target_layer_ids: list[int] | None = None,
                 mask_token_id: int | None = None) -> Path:
    """A drafter for the target at ``target_dir``: by default tapping its first and last
    layers, with its last token id as the mask token."""
    target = json.loads((target_dir / "config.json").read_text())
    text = target.get("text_config", target)
    config = dflash.config_for(
        target, block_size=block_size, num_hidden_layers=num_hidden_layers,
        target_layer_ids=target_layer_ids or spread_layers(text["num_hidden_layers"]),
        mask_token_id=text["vocab_size"] - 1 if mask_token_id is None else mask_token_id)
    model = dflash.Model(dflash.ModelArgs.from_dict(config))
    model.update(tree_unflatten(list(_random_params(model, seed).items())))
    return dflash.save(out, model, config)
