"""The models make-models trains: configs, seeded initial weights, the joint target.

The target is mlx-lm's ``qwen3_5`` with as few GatedDeltaNet layers as mlx-lm
allows: GatedDeltaNet's backward pass is slow (mlx-lm's Metal kernel has none, so
training runs a recurrence over time steps; make-models replaces it with the
chunked form in gated_delta, which still costs more than attention), and the MTP
path does not care which mixer the trunk uses. All full
attention (``full_attention_interval=1``) would be cheapest, but mlx-lm 0.32's
Qwen3.5 text model takes layer 0 to be GatedDeltaNet when it builds masks
(``ssm_idx = 0``) and fails on a KV cache there, so layers alternate GatedDeltaNet,
attention (``full_attention_interval=2``), starting with GatedDeltaNet; the
target needs at least two layers.
"""

from __future__ import annotations

import math
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten
from mlx_lm.models import llama, qwen3_5

from ..models import synthetic
from ..models.heads import body_and_head, embedding
from ..models.mtp import Qwen35Mtp
from .sizes import Shape


def target_config(shape: Shape, tokenizer_dir: Path) -> dict:
    if shape.num_hidden_layers < 2:
        raise ValueError("the target needs two layers or more (GatedDeltaNet, attention)")
    if (shape.hidden_size // shape.num_attention_heads) % 8:
        raise ValueError("the target's head_dim must be a multiple of 8 (even partial RoPE)")
    text = synthetic.qwen3_5_text_config(
        tokenizer_dir,
        hidden_size=shape.hidden_size,
        num_hidden_layers=shape.num_hidden_layers,
        full_attention_interval=2,
        mtp_num_hidden_layers=1,
    )
    head_dim = shape.hidden_size // shape.num_attention_heads
    text.update(
        intermediate_size=shape.intermediate_size,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_key_value_heads,
        head_dim=head_dim,
        # GatedDeltaNet's training memory grows with its state (heads x head_dim^2 per
        # token); four value heads keep it small at every size.
        linear_num_value_heads=4,
        linear_num_key_heads=2,
        linear_key_head_dim=head_dim,
        linear_value_head_dim=head_dim,
    )
    return {
        "model_type": "qwen3_5",
        "architectures": ["Qwen3_5ForConditionalGeneration"],
        "text_config": text,
        "tie_word_embeddings": False,
        "eos_token_id": text["eos_token_id"],
    }


def llama_config(shape: Shape, tokenizer_dir: Path) -> dict:
    """An mlx-lm llama of ``shape``: the drafter, and the bench's dense target."""
    return {
        "model_type": "llama",
        "hidden_size": shape.hidden_size,
        "num_hidden_layers": shape.num_hidden_layers,
        "num_attention_heads": shape.num_attention_heads,
        "num_key_value_heads": shape.num_key_value_heads,
        "intermediate_size": shape.intermediate_size,
        "vocab_size": synthetic._vocab_size(tokenizer_dir),
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "max_position_embeddings": 4096,
        "tie_word_embeddings": False,
        "eos_token_id": synthetic._token_id(tokenizer_dir, synthetic.EOS),
    }


class TargetWithMtp(nn.Module):
    """The target and its MTP head as one module, so one optimizer trains both."""

    def __init__(self, config: dict):
        super().__init__()
        self.target = qwen3_5.Model(qwen3_5.ModelArgs.from_dict(config))
        self.mtp = Qwen35Mtp(self.target.language_model.args)


def build_target(config: dict, seed: int) -> TargetWithMtp:
    model = TargetWithMtp(config)
    init_weights(model, seed, config["text_config"]["num_hidden_layers"])
    return model


def build_llama(config: dict, seed: int) -> nn.Module:
    model = llama.Model(llama.ModelArgs.from_dict(config))
    init_weights(model, seed, config["num_hidden_layers"])
    return model


def init_weights(model: nn.Module, seed: int, num_layers: int, std: float = 0.02) -> None:
    """GPT-2 style: N(0, std) matrices, residual output projections scaled down by
    sqrt(2 * layers), unit norms. Deterministic for a seed, whatever mlx's defaults."""
    key = mx.random.key(seed)
    params = []
    for name, value in tree_flatten(model.parameters()):
        key, sub = mx.random.split(key)
        if "norm" in name or name.endswith("dt_bias"):
            value = mx.ones(value.shape)
        elif name.endswith("A_log"):  # GatedDeltaNet decay rates, as mlx-lm draws them
            value = mx.log(mx.random.uniform(1.0, 16.0, value.shape, key=sub))
        elif name.endswith("conv1d.weight"):  # depthwise, kernel_size taps per channel
            value = mx.random.normal(value.shape, key=sub) / math.sqrt(value.shape[1])
        elif name.endswith(("o_proj.weight", "down_proj.weight")):
            value = mx.random.normal(value.shape, key=sub) * std / math.sqrt(2 * num_layers)
        else:
            value = mx.random.normal(value.shape, key=sub) * std
        params.append((name, value))
    model.update(tree_unflatten(params))
    mx.eval(model.parameters())


def target_loss(model: TargetWithMtp, tokens: mx.array, mtp_weight: float):
    """Next-token CE of the target plus ``mtp_weight`` times the MTP head's CE on the
    token after next. Wired as exo_spec.engine.mtp runs it: at position j the head reads
    the target's final-normed hidden state h_j (the lm_head's input) and the target's
    embedding of token j+1, attends causally over those pairs, and its output goes
    through the target's lm_head to predict token j+2. The MTP loss trains the trunk
    too, as in DeepSeek-V3."""
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    body, head = body_and_head(model.target)
    h = body(inputs)
    next_loss = nn.losses.cross_entropy(head(h), targets, reduction="mean")
    mtp_part = _mtp_loss(model, tokens, h, head)
    return next_loss + mtp_weight * mtp_part, next_loss, mtp_part


def mtp_loss(model: TargetWithMtp, tokens: mx.array):
    """The MTP head's loss alone, over the trunk's hidden states taken as given: for
    training the head with the target frozen."""
    body, head = body_and_head(model.target)
    return (_mtp_loss(model, tokens, mx.stop_gradient(body(tokens[:, :-1])), head),)


def _mtp_loss(model: TargetWithMtp, tokens: mx.array, h: mx.array, head) -> mx.array:
    """CE of the head's prediction of token j+2 from h_j and the embedding of token j+1."""
    following = embedding(model.target)(tokens[:, 1:-1])
    x = model.mtp(following, h[:, :-1], [None])
    return nn.losses.cross_entropy(head(x), tokens[:, 2:], reduction="mean")


def lm_loss(model: nn.Module, tokens: mx.array):
    logits = model(tokens[:, :-1])
    return (nn.losses.cross_entropy(logits, tokens[:, 1:], reduction="mean"),)
