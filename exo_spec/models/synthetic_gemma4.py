"""Tiny random-weight Gemma 4 pairs: a ``gemma4_text`` target and its
``gemma4_assistant`` drafter, written with fixed seeds in the on-disk layout
the published checkpoints use (see exo_spec.models.gemma4_assistant)."""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import mlx.nn as nn

from . import gemma4_assistant
from .synthetic import EOS, _random_params, _save, _token_id, _vocab_size

ROPE_PARAMETERS = {
    "full_attention": {"partial_rotary_factor": 0.25, "rope_theta": 1000000.0,
                       "rope_type": "proportional"},
    "sliding_attention": {"rope_theta": 10000.0, "rope_type": "default"},
}


def _gemma4_params(module: nn.Module, seed: int) -> dict[str, mx.array]:
    """Gemma multiplies embeddings by sqrt(hidden); with the generic embedding scale
    the last token's embedding drowns the context and a decode repeats one token."""
    params = _random_params(module, seed)
    for name, value in params.items():
        if name.endswith("layer_scalar"):
            params[name] = 1.0 + 0.1 * mx.random.normal(value.shape)
        elif name.endswith("embed_tokens.weight"):
            params[name] = value * 0.1
    return params


def gemma4_text_config(tokenizer_dir: Path, **overrides) -> dict:
    """Every Gemma 4 feature the assistant meets: sliding and full layers with their
    own head dims and RoPE, a sliding window shorter than a test decode, K/V shared
    by the last layers, per-layer inputs and logit soft-capping."""
    vocab = _vocab_size(tokenizer_dir)
    return {
        "model_type": "gemma4_text",
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 5,
        "layer_types": ["sliding_attention", "full_attention", "sliding_attention",
                        "sliding_attention", "full_attention"],
        "num_kv_shared_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "global_head_dim": 32,
        "sliding_window": 8,
        "hidden_size_per_layer_input": 8,
        "vocab_size": vocab,
        "vocab_size_per_layer_input": vocab,
        "rms_norm_eps": 1e-6,
        "rope_parameters": ROPE_PARAMETERS,
        "final_logit_softcapping": 30.0,
        "use_double_wide_mlp": True,
        "tie_word_embeddings": True,
        "max_position_embeddings": 4096,
        "eos_token_id": _token_id(tokenizer_dir, EOS),
        **overrides,
    }


def write_gemma4_text(out: Path, tokenizer_dir: Path, *, seed: int = 0, **overrides) -> Path:
    from mlx_lm.models import gemma4_text

    config = gemma4_text_config(tokenizer_dir, **overrides)
    model = gemma4_text.Model(gemma4_text.ModelArgs.from_dict(config))
    return _save(out, config, _gemma4_params(model, seed), tokenizer_dir)


def gemma4_assistant_config(target_config: dict, *, ordered_embeddings: bool,
                            num_centroids: int = 16, top_k: int = 4) -> dict:
    """An assistant for ``target_config``, shaped like the released ones: its own
    narrower width, one layer per attention type reading the target's K/V."""
    text = {
        "model_type": "gemma4_text",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "layer_types": ["sliding_attention", "full_attention"],
        "num_kv_shared_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": target_config["num_key_value_heads"],
        "head_dim": target_config["head_dim"],
        "global_head_dim": target_config["global_head_dim"],
        "sliding_window": target_config["sliding_window"],
        "hidden_size_per_layer_input": 0,
        "vocab_size_per_layer_input": 0,
        "use_double_wide_mlp": False,
        "vocab_size": target_config["vocab_size"],
        "rms_norm_eps": 1e-6,
        "rope_parameters": target_config["rope_parameters"],
        "final_logit_softcapping": None,
        "tie_word_embeddings": True,
        "max_position_embeddings": 4096,
    }
    return {
        "architectures": ["Gemma4AssistantForCausalLM"],
        "model_type": gemma4_assistant.MODEL_TYPE,
        "backbone_hidden_size": target_config["hidden_size"],
        "use_ordered_embeddings": ordered_embeddings,
        "num_centroids": num_centroids,
        "centroid_intermediate_top_k": top_k,
        "tie_word_embeddings": True,
        "eos_token_id": target_config["eos_token_id"],
        "text_config": text,
    }


def write_gemma4_assistant(out: Path, target_dir: Path, *, ordered_embeddings: bool = True,
                           seed: int = 1, **config_overrides) -> Path:
    """Random assistant weights for the target at ``target_dir``, saved as the
    published checkpoints store them (no ``lm_head.weight``, int64 token ordering)."""
    import json

    target_config = json.loads((target_dir / "config.json").read_text())
    config = gemma4_assistant_config(target_config, ordered_embeddings=ordered_embeddings,
                                     **config_overrides)
    model = gemma4_assistant.Model(gemma4_assistant.ModelArgs.from_dict(config))
    weights = _gemma4_params(model, seed)
    if ordered_embeddings:
        vocab = config["text_config"]["vocab_size"]
        order = mx.random.permutation(vocab, key=mx.random.key(seed))
        weights["masked_embedding.token_ordering"] = order.astype(mx.int64)
    return _save(out, config, weights, target_dir)
