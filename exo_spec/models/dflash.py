"""DFlash block drafters (Chen et al., "DFlash: Block Diffusion for Flash Speculative
Decoding", arXiv 2602.06036), as z-lab publishes them for Qwen3, Qwen3.5/3.6 and Llama
targets and SGLang and vLLM serve them.

One forward of the drafter proposes a whole block: its input is the target's own
embeddings of ``[s_T, MASK, ..., MASK]`` (``block_size`` tokens, s_T the newest known
token), its queries attend without a causal mask to the block and to a context made of
the target's hidden states at several of its layers, and the target's LM head reads the
block's outputs at positions 1.. as the drafts of s_{T+1}, s_{T+2}, ... So drafting k
tokens costs one pass, whatever k.

The published format, from z-lab's checkpoints (``z-lab/Qwen3-8B-DFlash-b16`` and the
others), their reference ``dflash/model.py`` and the loaders SGLang and vLLM ship:

- config.json: a Qwen3 decoder config (``hidden_size`` equal to the target's,
  ``num_hidden_layers`` the drafter's own, ``num_attention_heads``,
  ``num_key_value_heads``, ``head_dim``, ``intermediate_size``, ``rms_norm_eps``,
  ``rope_theta`` or transformers' ``rope_parameters``, ``attention_bias``), with
  ``architectures: ["DFlashDraftModel"]``, ``block_size`` (16 in the ``-b16``
  drafters), ``num_target_layers`` and ``dflash_config: {"target_layer_ids": [...],
  "mask_token_id": N}``; a key in ``dflash_config`` wins over the same key at the top.
- weights, with no prefix: ``fc.weight`` (H, len(target_layer_ids) * H),
  ``hidden_norm.weight``, ``norm.weight`` and per layer ``layers.{i}.`` {
  ``input_layernorm``, ``post_attention_layernorm``} ``.weight``,
  ``self_attn.{q,k,v,o}_proj.weight``, ``self_attn.{q,k}_norm.weight``,
  ``mlp.{gate,up,down}_proj.weight``. No embeddings and no LM head: both are the
  target's. No tokenizer either (``mask_token_id`` is a spare row of the target's
  embedding table).
- forward: the context is ``hidden_norm(fc(concat of the target's layer outputs))``
  where layer i's output is the residual stream after target layer i (transformers'
  ``hidden_states[i + 1]``, the final-normed state for the last layer); every drafter
  layer projects it with its own k/v projections (k_norm and RoPE applied, no input
  norm) and puts those keys before the block's own; RoPE positions are the
  sequence's (context row j at j, the block from T); ``norm`` ends the stack.

Refused with one line: DFlash2 drafters (grouped convolutions and a candidate
selector), causal or sliding-window drafter layers, and the logit multiplier, soft
cap or embedding scale some configs carry.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten
from mlx_lm.models.qwen3 import MLP
from mlx_lm.models.rope_utils import initialize_rope

from .heads import language_model
from .load import LoadedModel, ModelLoadError, load_target_reader, load_with_classes

ARCHITECTURE = "DFlashDraftModel"
ARCHITECTURES = (ARCHITECTURE, "DFlash2DraftModel")

# Keys (in dflash_config or at the top) that change the forward beyond what is built
# here, with the values that leave it as it is.
_NEUTRAL = {"output_multiplier": 1.0, "final_logit_softcapping": None,
            "input_embedding_scale": 1.0, "is_causal": False}


def is_dflash(config: dict[str, Any]) -> bool:
    return any(a in ARCHITECTURES for a in config.get("architectures") or [])


@dataclass
class ModelArgs:
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    target_layer_ids: list[int]
    mask_token_id: int
    block_size: int = 16
    num_target_layers: int | None = None
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    max_position_embeddings: int = 32768
    attention_bias: bool = False

    @classmethod
    def from_dict(cls, config: dict) -> ModelArgs:
        """ValueError, one line, for a config this module cannot run."""
        if "DFlash2DraftModel" in (config.get("architectures") or []):
            raise ValueError("DFlash2 drafters (grouped convolutions, a candidate selector) "
                             "are not supported")
        dflash = config.get("dflash_config") or {}

        def value(key, default=None):
            return dflash.get(key, config.get(key, default))

        for key, neutral in _NEUTRAL.items():
            if value(key, neutral) not in (neutral, None):
                raise ValueError(f"DFlash drafters with {key}={value(key)!r} are not supported")
        if any(t != "full_attention" for t in config.get("layer_types") or []):
            raise ValueError("DFlash drafters with sliding-window layers are not supported")
        missing = [k for k in ("target_layer_ids", "mask_token_id") if value(k) is None]
        if missing:
            raise ValueError(f"a DFlash config needs dflash_config.{missing[0]}")
        rope = config.get("rope_parameters") or {}
        scaling = config.get("rope_scaling") or (
            rope if rope.get("rope_type", "default") != "default" else None)
        heads = config["num_attention_heads"]
        return cls(
            hidden_size=config["hidden_size"],
            num_hidden_layers=config["num_hidden_layers"],
            num_attention_heads=heads,
            num_key_value_heads=config.get("num_key_value_heads", heads),
            head_dim=config.get("head_dim") or config["hidden_size"] // heads,
            intermediate_size=config["intermediate_size"],
            target_layer_ids=[int(i) for i in value("target_layer_ids")],
            mask_token_id=int(value("mask_token_id")),
            block_size=int(value("block_size", 16)),
            num_target_layers=config.get("num_target_layers"),
            rms_norm_eps=config.get("rms_norm_eps", 1e-6),
            rope_theta=config.get("rope_theta") or rope.get("rope_theta", 10000.0),
            rope_scaling=scaling,
            max_position_embeddings=config.get("max_position_embeddings", 32768),
            attention_bias=config.get("attention_bias", False),
        )


Offset = int | mx.array  # the position of a sequence's first row, or one per batch row
ContextKV = list[tuple[mx.array, mx.array]]  # per layer: keys, values (B, kv_heads, C, D)


class Attention(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.heads, self.kv_heads = args.num_attention_heads, args.num_key_value_heads
        self.head_dim = d = args.head_dim
        self.scale = d**-0.5
        bias = args.attention_bias
        self.q_proj = nn.Linear(args.hidden_size, self.heads * d, bias=bias)
        self.k_proj = nn.Linear(args.hidden_size, self.kv_heads * d, bias=bias)
        self.v_proj = nn.Linear(args.hidden_size, self.kv_heads * d, bias=bias)
        self.o_proj = nn.Linear(self.heads * d, args.hidden_size, bias=bias)
        self.q_norm = nn.RMSNorm(d, eps=args.rms_norm_eps)
        self.k_norm = nn.RMSNorm(d, eps=args.rms_norm_eps)
        self.rope = initialize_rope(d, args.rope_theta, False, args.rope_scaling,
                                    args.max_position_embeddings)

    def _heads(self, x: mx.array, count: int) -> mx.array:
        b, s, _ = x.shape
        return x.reshape(b, s, count, self.head_dim).transpose(0, 2, 1, 3)

    def keys_values(self, x: mx.array, offset: Offset) -> tuple[mx.array, mx.array]:
        """Keys and values (B, kv_heads, S, D) of rows ``x`` (B, S, H) at ``offset``.."""
        keys = self.rope(self.k_norm(self._heads(self.k_proj(x), self.kv_heads)), offset)
        return keys, self._heads(self.v_proj(x), self.kv_heads)

    def __call__(self, x: mx.array, context: tuple[mx.array, mx.array], offset: Offset,
                 mask: mx.array | None = None) -> mx.array:
        """The block ``x`` (B, S, H) at ``offset``.. attends to ``context`` and to itself
        (no causal mask); ``mask`` (B, 1, S, C + S), if given, hides some of those keys."""
        queries = self.rope(self.q_norm(self._heads(self.q_proj(x), self.heads)), offset)
        keys, values = self.keys_values(x, offset)
        keys = mx.concatenate([context[0], keys], axis=2)
        values = mx.concatenate([context[1], values], axis=2)
        out = mx.fast.scaled_dot_product_attention(queries, keys, values, scale=self.scale,
                                                   mask=mask)
        return self.o_proj(out.transpose(0, 2, 1, 3).reshape(x.shape[0], x.shape[1], -1))


class DecoderLayer(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.self_attn = Attention(args)
        self.mlp = MLP(args.hidden_size, args.intermediate_size)
        self.input_layernorm = nn.RMSNorm(args.hidden_size, eps=args.rms_norm_eps)
        self.post_attention_layernorm = nn.RMSNorm(args.hidden_size, eps=args.rms_norm_eps)

    def __call__(self, x, context, offset, mask=None):
        x = x + self.self_attn(self.input_layernorm(x), context, offset, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class Model(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.model_type = "dflash"
        h = args.hidden_size
        self.layers = [DecoderLayer(args) for _ in range(args.num_hidden_layers)]
        self.fc = nn.Linear(len(args.target_layer_ids) * h, h, bias=False)
        self.hidden_norm = nn.RMSNorm(h, eps=args.rms_norm_eps)
        self.norm = nn.RMSNorm(h, eps=args.rms_norm_eps)

    @property
    def target_layer_ids(self) -> list[int]:
        return self.args.target_layer_ids

    def context(self, features: mx.array, offset: Offset) -> ContextKV:
        """Every layer's keys and values for the target's tapped states ``features``
        (B, C, len(target_layer_ids) * H), whose first row sits at ``offset``."""
        ctx = self.hidden_norm(self.fc(features))
        return [layer.self_attn.keys_values(ctx, offset) for layer in self.layers]

    def __call__(self, block: mx.array, context: ContextKV, offset: Offset,
                 mask: mx.array | None = None) -> mx.array:
        """The final-normed states (B, S, H) of the block whose target embeddings are
        ``block`` (B, S, H), its first row at ``offset``, after ``context``."""
        x = block
        for layer, kv in zip(self.layers, context, strict=True):
            x = layer(x, kv, offset, mask)
        return self.norm(x)

    def sanitize(self, weights: dict[str, mx.array]) -> dict[str, mx.array]:
        return {k: v for k, v in weights.items() if "rotary_emb" not in k}


def load(path: Path) -> tuple[Model, dict]:
    """The drafter at ``path``."""
    return load_with_classes(path, Model, ModelArgs)


def load_for(path: Path, target: LoadedModel) -> LoadedModel:
    """Load the drafter at ``path`` and refuse it unless it fits ``target``."""
    return load_target_reader(path, target, Model, ModelArgs, "DFlash drafter", check_pair)


def check_pair(args: ModelArgs, target: LoadedModel) -> None:
    """The drafter reads the target's embeddings, LM head and layer outputs: the width,
    the tapped layers and the mask token must all exist in the target."""
    lm = language_model(target.model)
    t = lm.args
    layers = len(lm.model.layers)
    problems = []
    if args.hidden_size != t.hidden_size:
        problems.append(f"it expects hidden size {args.hidden_size}, the target has "
                        f"{t.hidden_size}")
    if args.num_target_layers not in (None, layers):
        problems.append(f"it was made for a target of {args.num_target_layers} layers, "
                        f"this one has {layers}")
    if bad := [i for i in args.target_layer_ids if not 0 <= i < layers]:
        problems.append(f"it taps layer {bad[0]}, the target has layers 0..{layers - 1}")
    if not 0 <= args.mask_token_id < t.vocab_size:
        problems.append(f"its mask token {args.mask_token_id} is outside the target's "
                        f"{t.vocab_size} embeddings")
    if args.block_size < 2:
        problems.append(f"its block_size {args.block_size} leaves no token to draft")
    if problems:
        raise ModelLoadError(f"DFlash drafter does not fit target {target.path}: "
                             + "; ".join(problems))


def config_for(target_config: dict, *, target_layer_ids: list[int], mask_token_id: int,
               block_size: int, num_hidden_layers: int = 1, num_attention_heads: int = 4,
               num_key_value_heads: int = 2, intermediate_size: int | None = None) -> dict:
    """The config.json of a drafter for the target whose config is ``target_config``,
    in the published layout."""
    t = target_config.get("text_config", target_config)
    hidden = t["hidden_size"]
    return {
        "architectures": [ARCHITECTURE],
        "model_type": "qwen3",
        "hidden_size": hidden,
        "num_hidden_layers": num_hidden_layers,
        "num_attention_heads": num_attention_heads,
        "num_key_value_heads": num_key_value_heads,
        "head_dim": hidden // num_attention_heads,
        "intermediate_size": intermediate_size or 2 * hidden,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "max_position_embeddings": t.get("max_position_embeddings", 4096),
        "vocab_size": t["vocab_size"],
        "tie_word_embeddings": False,
        "block_size": block_size,
        "num_target_layers": t["num_hidden_layers"],
        "dflash_config": {"target_layer_ids": list(target_layer_ids),
                          "mask_token_id": mask_token_id},
    }


def save(out: Path, model: Model, config: dict, dtype: mx.Dtype = mx.float32) -> Path:
    """Write ``model`` and ``config`` at ``out`` as the published checkpoints are laid
    out (no tokenizer: the drafter reads the target's token ids)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    weights = {k: v.astype(dtype) for k, v in tree_flatten(model.parameters())}
    mx.save_safetensors(str(out / "model.safetensors"), weights, metadata={"format": "pt"})
    return out
