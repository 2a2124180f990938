"""Loading targets and drafters: mlx-lm checkpoints by local path or Hugging Face id."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten
from mlx_lm.tokenizer_utils import TokenizerWrapper
from mlx_lm.utils import _download, _get_classes, load_model, load_tokenizer

from ..engine.cuda import build_quantized_kernels
from .quantize import quantize


class ModelLoadError(ValueError):
    """A checkpoint that cannot be used, with a message a person can act on."""


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: TokenizerWrapper
    path: Path
    config: dict


def parameter_count(model: nn.Module) -> int:
    """The model's parameters as trained: a quantized layer's packed weight counted
    unpacked, its scales and biases not at all."""
    total = sum(v.size for _, v in tree_flatten(model.parameters()))
    for _, module in model.named_modules():
        if hasattr(module, "bits"):
            packing = module.scales.size + (module["biases"].size if "biases" in module else 0)
            total += module.weight.size * (32 // module.bits - 1) - packing
    return total


def resolve(path_or_id: str) -> Path:
    """A local checkpoint directory for ``path_or_id``, downloading a Hugging Face id."""
    local = Path(path_or_id).expanduser()
    if local.exists():
        if not (local / "config.json").is_file():
            raise ModelLoadError(f"{local} is not a model directory (no config.json)")
        return local
    if path_or_id.startswith((".", "/", "~")) or path_or_id.count("/") != 1:
        raise ModelLoadError(f"model not found: {path_or_id}")
    try:
        return _download(path_or_id)
    except Exception as e:  # the hub raises many types; one line is what the user needs
        raise ModelLoadError(f"cannot fetch {path_or_id} from Hugging Face: {e}") from e


def read_config(path: Path) -> dict:
    try:
        return json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"unreadable config {path / 'config.json'}: {e}") from e


def text_config(config: dict) -> dict:
    """The text model's part of a checkpoint's config (multimodal ones nest it)."""
    return config.get("text_config", config)


def _classes_without_mtp(config: dict):
    """mlx-lm's classes, with a sanitize that also drops DeepSeek-style MTP layers
    (``model.layers.{n >= num_hidden_layers}``), which mlx-lm only drops for n = 61."""
    model_class, args_class = _get_classes(config)
    if not config.get("num_nextn_predict_layers") or "text_config" in config:
        return model_class, args_class
    first = config["num_hidden_layers"]

    class WithoutMtp(model_class):
        def sanitize(self, weights):
            weights = {
                k: v for k, v in weights.items()
                if not (k.startswith("model.layers.") and int(k.split(".")[2]) >= first)
            }
            return super().sanitize(weights)

    return WithoutMtp, args_class


def load(path_or_id: str, *, lazy: bool = False, bits: int | None = None) -> LoadedModel:
    """``lazy`` leaves the weights unread until evaluated (pipeline ranks keep a share);
    ``bits`` quantizes the model as it loads (see ``quantize``)."""
    path = resolve(path_or_id)
    config = read_config(path)
    if "model_type" not in config:
        raise ModelLoadError(f"{path / 'config.json'} has no model_type")
    try:
        model, config = load_model(path, lazy=lazy, get_model_classes=_classes_without_mtp)
        tokenizer = load_tokenizer(path, eos_token_ids=config.get("eos_token_id"))
    except (ValueError, FileNotFoundError) as e:
        raise ModelLoadError(f"cannot load {path}: {e}") from e
    if bits:
        quantize(model, bits)
        if not lazy:
            mx.eval(model.parameters())
    if not lazy:
        build_quantized_kernels(model)
    return LoadedModel(model, tokenizer, path, config)


def vocabulary(tokenizer: TokenizerWrapper) -> dict[str, int]:
    return tokenizer._tokenizer.get_vocab()


def check_same_vocabulary(target: LoadedModel, drafter: LoadedModel) -> None:
    """Refuse a drafter whose token ids do not mean what the target's mean."""
    t, d = vocabulary(target.tokenizer), vocabulary(drafter.tokenizer)
    if t != d:
        only_t = len(t.keys() - d.keys())
        only_d = len(d.keys() - t.keys())
        moved = sum(1 for k in t.keys() & d.keys() if t[k] != d[k])
        raise ModelLoadError(
            f"drafter {drafter.path} does not share the target's vocabulary: "
            f"target {target.path} has {len(t)} tokens, drafter has {len(d)} "
            f"({only_t} only in the target, {only_d} only in the drafter, {moved} with other ids)"
        )
