"""Write trained models as ordinary mlx-lm checkpoints.

The target goes out in the Hugging Face layout of published Qwen3.5 checkpoints
(``model.language_model.*``, ``lm_head.weight``, ``mtp.*``, norms stored as
offsets from one, conv1d as (C, 1, K)), where exo_spec.models.mtp.load_mtp
finds its head.
"""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from ..models import synthetic
from .architectures import TargetWithMtp


def _flat(module: nn.Module, dtype: mx.Dtype) -> dict[str, mx.array]:
    return {name: value.astype(dtype) for name, value in tree_flatten(module.parameters())}


def write_target(out: Path, model: TargetWithMtp, config: dict, tokenizer_dir: Path,
                 dtype: mx.Dtype = mx.float32) -> Path:
    weights = {}
    for name, value in _flat(model.target, dtype).items():
        if name.startswith("language_model.model."):
            name = "model.language_model." + name.removeprefix("language_model.model.")
        else:
            name = name.removeprefix("language_model.")
        weights[name] = value
    weights.update({"mtp." + name: value for name, value in _flat(model.mtp, dtype).items()})
    return synthetic._save(out, config, synthetic._to_hf_qwen3_5(weights), tokenizer_dir)


def write_llama(out: Path, model: nn.Module, config: dict, tokenizer_dir: Path,
                dtype: mx.Dtype = mx.float32) -> Path:
    return synthetic._save(out, config, _flat(model, dtype), tokenizer_dir)
