"""Native multi-token-prediction (MTP) heads that mlx-lm drops on load.

Two published layouts:

- Qwen3.5/3.6 and Qwen3-Next store ``mtp.*`` beside the model. Wiring followed
  from the Qwen3-Next MTP module as vLLM implements it
  (``vllm/model_executor/models/qwen3_next_mtp.py``)::

      x = fc(concat(pre_fc_norm_embedding(embed(t_{i+1})), pre_fc_norm_hidden(h_i)))
      x = norm(full_attention_decoder_layer(x))       # -> shared lm_head
      the normed x is also the hidden state for the next chained step.

- DeepSeek-V3 (and GLM-4.5 style) store the MTP block as decoder layer
  ``num_hidden_layers`` with extra ``enorm``, ``hnorm``, ``eh_proj`` and
  ``shared_head.{norm,head}`` (DeepSeek-V3 technical report, section 2.2; wiring
  as in vLLM's ``deepseek_mtp.py``)::

      x = eh_proj(concat(enorm(embed(t_{i+1})), hnorm(h_i)))
      x = decoder_layer(x)                             # chained hidden (pre-norm)
      logits = shared_head.head(shared_head.norm(x))

In both, ``h_i`` is the target's final-normed hidden state at position i (the
input of its lm_head) and the embedding table is the target's own.
"""

from __future__ import annotations

import glob
from collections.abc import Callable
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.base import create_attention_mask
from mlx_lm.models.cache import KVCache
from mlx_lm.models.deepseek_v3 import DeepseekV3DecoderLayer
from mlx_lm.models.qwen3_5 import DecoderLayer as Qwen35DecoderLayer

from .load import ModelLoadError, read_config, text_config
from .quantize import quantize


class Qwen35Mtp(nn.Module):
    def __init__(self, args, num_layers: int = 1):
        super().__init__()
        h = args.hidden_size
        self.fc = nn.Linear(2 * h, h, bias=False)
        self.pre_fc_norm_embedding = nn.RMSNorm(h, eps=args.rms_norm_eps)
        self.pre_fc_norm_hidden = nn.RMSNorm(h, eps=args.rms_norm_eps)
        # The MTP block is a full-attention layer, whatever the target's layer pattern.
        full_attention_idx = args.full_attention_interval - 1
        self.layers = [Qwen35DecoderLayer(args, full_attention_idx) for _ in range(num_layers)]
        self.norm = nn.RMSNorm(h, eps=args.rms_norm_eps)

    def __call__(self, embeddings: mx.array, hidden: mx.array, cache: list) -> mx.array:
        x = mx.concatenate(
            [self.pre_fc_norm_embedding(embeddings), self.pre_fc_norm_hidden(hidden)], axis=-1
        )
        x = self.fc(x)
        mask = create_attention_mask(x, cache[0])
        x = self.layers[0](x, mask, cache[0])
        return self.norm(x)

    def logits(self, x: mx.array, target_head: Callable[[mx.array], mx.array]) -> mx.array:
        return target_head(x)  # Qwen's MTP shares the target's lm_head


class DeepseekMtp(nn.Module):
    def __init__(self, args, num_layers: int = 1):
        super().__init__()
        self.layers = [DeepseekMtpLayer(args) for _ in range(num_layers)]

    def __call__(self, embeddings: mx.array, hidden: mx.array, cache: list) -> mx.array:
        layer = self.layers[0]
        x = layer.eh_proj(mx.concatenate([layer.enorm(embeddings), layer.hnorm(hidden)], axis=-1))
        mask = create_attention_mask(x, cache[0], return_array=True)
        return layer(x, mask, cache[0])

    def logits(self, x: mx.array, target_head: Callable[[mx.array], mx.array]) -> mx.array:
        head = self.layers[0].shared_head
        return head.head(head.norm(x))


class SharedHead(nn.Module):
    def __init__(self, hidden_size: int, vocab_size: int, eps: float):
        super().__init__()
        self.norm = nn.RMSNorm(hidden_size, eps=eps)
        self.head = nn.Linear(hidden_size, vocab_size, bias=False)


class DeepseekMtpLayer(DeepseekV3DecoderLayer):
    def __init__(self, args):
        super().__init__(args, layer_idx=args.num_hidden_layers)
        h = args.hidden_size
        self.enorm = nn.RMSNorm(h, eps=args.rms_norm_eps)
        self.hnorm = nn.RMSNorm(h, eps=args.rms_norm_eps)
        self.eh_proj = nn.Linear(2 * h, h, bias=False)
        self.shared_head = SharedHead(h, args.vocab_size, args.rms_norm_eps)


class MtpError(ModelLoadError):
    pass


def _checkpoint_weights(path: Path, keep: Callable[[str], bool]) -> dict[str, mx.array]:
    weights = {}
    for file in sorted(glob.glob(str(path / "*.safetensors"))):
        for name, value in mx.load(file).items():
            if keep(name):
                weights[name] = value
    return weights


def mtp_layer_count(path: Path) -> int:
    """How many MTP layers the checkpoint at ``path`` ships (0 when none)."""
    config = read_config(path)
    text = text_config(config)
    declared = text.get("mtp_num_hidden_layers", config.get("num_nextn_predict_layers", 0))
    if not declared:
        return 0
    if config["model_type"] in ("qwen3_5", "qwen3_next"):
        found = _checkpoint_weights(path, lambda k: k.startswith("mtp."))
    else:
        first = text["num_hidden_layers"]
        found = _checkpoint_weights(path, lambda k: _layer_index(k) is not None
                                    and _layer_index(k) >= first)
    return declared if found else 0


def _layer_index(name: str) -> int | None:
    if not name.startswith("model.layers."):
        return None
    return int(name.split(".")[2])


def load_mtp(path: Path, target: nn.Module, bits: int | None = None) -> Qwen35Mtp | DeepseekMtp:
    """Load the MTP head of the checkpoint at ``path`` for the loaded ``target``;
    ``bits`` quantizes its float layers as ``load`` quantizes the target's."""
    config = read_config(path)
    model_type = config["model_type"]
    if mtp_layer_count(path) == 0:
        raise MtpError(f"{path} has no MTP weights (model_type {model_type})")
    if model_type == "qwen3_5":
        mtp, weights = _qwen3_5(path, target)
    elif model_type == "deepseek_v3":
        mtp, weights = _deepseek_v3(path, target)
    else:
        raise MtpError(f"native MTP is not supported for model_type {model_type}")
    dtype = _float_dtype(_embedding(target))
    if "quantization" in config and any(k.endswith(".scales") for k in weights):
        q = config["quantization"]
        nn.quantize(mtp, q["group_size"], q["bits"],
                    class_predicate=lambda p, _: f"{p}.scales" in weights)
    weights = {k: v.astype(dtype) if mx.issubdtype(v.dtype, mx.floating) else v
               for k, v in weights.items()}
    mtp.load_weights(list(weights.items()), strict=True)
    quantize(mtp, bits)
    mx.eval(mtp.parameters())
    mtp.eval()
    return mtp


def _float_dtype(embedding: nn.Module) -> mx.Dtype:
    """The target's floating dtype: a quantized embedding packs its weight in uint32
    and keeps it in its scales."""
    return embedding.scales.dtype if hasattr(embedding, "scales") else embedding.weight.dtype


def _embedding(target: nn.Module) -> nn.Embedding:
    lm = getattr(target, "language_model", target)
    return lm.model.embed_tokens


def _qwen3_5(path: Path, target: nn.Module):
    lm = target.language_model
    count = mtp_layer_count(path)
    if count != 1:
        raise MtpError(f"{path}: {count} MTP layers; exo-spec chains a single MTP layer")
    weights = _checkpoint_weights(path, lambda k: k.startswith("mtp.") or "conv1d.weight" in k)
    # Hugging Face checkpoints store (C, 1, K) conv weights and RMSNorm weights as
    # offsets from one; mlx-lm converts both on load, and so do we for mtp.*.
    hf_layout = any("conv1d.weight" in k and v.shape[-1] != 1 for k, v in weights.items())
    mtp_weights = {}
    for name, value in weights.items():
        if not name.startswith("mtp."):
            continue
        name = name.removeprefix("mtp.")
        if hf_layout and name.endswith("norm.weight") and value.ndim == 1:
            value = value + 1.0
        mtp_weights[name] = value
    return Qwen35Mtp(lm.args, count), mtp_weights


def _deepseek_v3(path: Path, target: nn.Module):
    args = target.args
    first = args.num_hidden_layers
    weights = _checkpoint_weights(path, lambda k: (_layer_index(k) or -1) >= first)
    count = len({_layer_index(k) for k in weights})
    if count != 1:
        raise MtpError(f"{path}: {count} MTP layers; exo-spec chains a single MTP layer")
    mtp_weights = {}
    experts: dict[str, dict[int, mx.array]] = {}
    for name, value in weights.items():
        rest = name.split(".", 3)[3]
        if rest.startswith("embed_tokens."):
            continue  # a copy of the target's embedding table
        if rest.startswith("mlp.experts."):
            _, _, e, proj = rest.split(".", 3)
            experts.setdefault(proj, {})[int(e)] = value
            continue
        mtp_weights["layers.0." + rest] = value
    for proj, by_expert in experts.items():
        stacked = mx.stack([by_expert[e] for e in sorted(by_expert)])
        mtp_weights[f"layers.0.mlp.switch_mlp.{proj}"] = stacked
    _fold_mla_kv_b(mtp_weights, args)
    return DeepseekMtp(args, count), mtp_weights


def _fold_mla_kv_b(weights: dict, args) -> None:
    """Split MLA's kv_b_proj into mlx-lm's embed_q / unembed_out, as mlx-lm does for the trunk."""
    name = "layers.0.self_attn.kv_b_proj.weight"
    if name not in weights:
        return
    kv_b = weights.pop(name)
    heads, nope = args.num_attention_heads, args.qk_nope_head_dim
    kv_b = kv_b.reshape(heads, nope + args.v_head_dim, -1)
    weights["layers.0.self_attn.embed_q.weight"] = mx.contiguous(kv_b[:, :nope].swapaxes(-1, -2))
    weights["layers.0.self_attn.unembed_out.weight"] = mx.contiguous(kv_b[:, nope:])


def make_mtp_cache() -> list:
    return [KVCache()]
