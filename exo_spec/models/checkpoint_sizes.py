"""A checkpoint's config sizes checked against its weight files' tensor shapes, read
from the safetensors headers alone: a config that claims 100,000 layers over a few
megabytes of weights is refused in milliseconds, before mlx-lm builds a model from it
(which would take minutes and gigabytes before failing on the weights).

Only the text model's own tensors count: those under a layer stack's prefix
(``model.``, ``model.language_model.``, ``language_model.model.``, ...), so a vision
tower's or an MTP head's layers do not. Each size is checked where the tensors that
carry it are found, and a rule whose tensors are absent (another architecture's
names) checks nothing. A size passes when some tensor of its rule agrees, since
layers may differ (Gemma's global layers have wider heads, some MLPs are double-wide).
Shapes are read along the output dimension, which quantization leaves whole.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

# "<prefix>layers.<i>." where the prefix names a text model, not a vision tower
LAYER = re.compile(r"^((?:[\w]+\.)*?(?:model|language_model|transformer|backbone)\.)"
                   r"(?:layers|h|blocks)\.(\d+)\.")

Shapes = Mapping[str, Sequence[int]]


class SizeMismatch(ValueError):
    """A config size its weight files contradict."""


def _int(config: dict, key: str) -> int | None:
    value = config.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _stacks(shapes: Shapes) -> dict[str, set[int]]:
    """Layer indices by stack prefix."""
    stacks: dict[str, set[int]] = {}
    for name in shapes:
        if m := LAYER.match(name):
            stacks.setdefault(m[1], set()).add(int(m[2]))
    return stacks


def _head_dim(text: dict) -> int | None:
    if (head_dim := _int(text, "head_dim")) is not None:
        return head_dim
    hidden, heads = _int(text, "hidden_size"), _int(text, "num_attention_heads")
    return hidden // heads if hidden and heads and hidden % heads == 0 else None


Rule = tuple[str, str, str, Callable[[int], bool]]


def _rules(text: dict) -> list[Rule]:
    """(config key, its value as said, tensor name pattern after the stack prefix, test
    of a matching tensor's output size)."""
    rules: list[Rule] = []

    def expect(key: str, suffix: str) -> None:
        if (value := _int(text, key)) is not None:
            rules.append((key, str(value), suffix, lambda rows, v=value: rows == v))

    expect("vocab_size", r"embed_tokens\.weight")
    expect("hidden_size", r"layers\.\d+\.self_attn\.o_proj\.weight")
    expect("hidden_size", r"layers\.\d+\.mlp\.down_proj\.weight")
    expect("intermediate_size", r"layers\.\d+\.mlp\.(?:gate|up)_proj\.weight")
    head_dim, heads = _head_dim(text), _int(text, "num_attention_heads")
    kv_heads = _int(text, "num_key_value_heads") or heads
    if head_dim and heads:  # gated attention (Qwen3.5, Qwen3-Next) doubles q_proj
        width = heads * head_dim
        rules.append(("num_attention_heads", f"{heads} (head_dim {head_dim})",
                      r"layers\.\d+\.self_attn\.q_proj\.weight",
                      lambda rows: rows in (width, 2 * width)))
        if kv_heads:
            rules.append(("num_key_value_heads", f"{kv_heads} (head_dim {head_dim})",
                          r"layers\.\d+\.self_attn\.k_proj\.weight",
                          lambda rows: rows == kv_heads * head_dim))
    return rules


def check_sizes(file: Path, config: dict, shapes: Shapes) -> None:
    """SizeMismatch naming ``file`` (the config), the size and a tensor that
    contradicts it; ``shapes``: every tensor's shape, by name."""
    text = config.get("text_config", config)
    stacks = _stacks(shapes)
    if not stacks:
        return
    prefix = max(stacks, key=lambda p: len(stacks[p]))
    held = max(stacks[prefix]) + 1
    layers = _int(text, "num_hidden_layers")
    # DeepSeek-style MTP layers sit in the same stack, past num_hidden_layers.
    extra = _int(text, "num_nextn_predict_layers") or 0
    if layers is not None and not layers <= held <= layers + extra:
        raise SizeMismatch(f"{file}: num_hidden_layers is {layers}, but the weight files "
                           f"hold {held} layers ({prefix}layers.0 to {held - 1})")
    for key, value, suffix, agrees in _rules(text):
        pattern = re.compile(re.escape(prefix) + suffix + "$")
        found = {n: s for n, s in shapes.items() if pattern.match(n) and s}
        if found and not any(agrees(s[0]) for s in found.values()):
            name, shape = next(iter(found.items()))
            raise SizeMismatch(f"{file}: {key} is {value}, but {name} has shape {list(shape)}")
