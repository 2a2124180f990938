"""Gemma 4 "assistant" drafters (``model_type: gemma4_assistant``), the small MTP
drafters Google publishes beside the instruct models as ``gemma-4-*-it-assistant``.

What the published format is, and where each point comes from:

- config.json (Hugging Face ``Gemma4AssistantConfig``, transformers
  ``models/gemma4_assistant/configuration_gemma4_assistant.py``; the released
  E4B assistant's config as quoted in third-party loaders): top level
  ``architectures: ["Gemma4AssistantForCausalLM"]``, ``backbone_hidden_size``
  (the target's width), ``use_ordered_embeddings``, ``num_centroids``,
  ``centroid_intermediate_top_k``, ``tie_word_embeddings``, and a Gemma 4
  ``text_config`` (``model_type: gemma4_text``) for the drafter's own layers
  with ``num_kv_shared_layers == num_hidden_layers`` (every layer shares K/V;
  HF fills it in when absent), ``hidden_size_per_layer_input == 0``, no MoE,
  no double-wide MLP.
- weights (transformers ``modeling_gemma4_assistant.py``; the tensor list of
  the released E4B assistant's model.safetensors as recorded by rvllm's
  drafter loader): ``pre_projection.weight`` (hidden, 2 * backbone),
  ``post_projection.weight`` (backbone, hidden), ``model.embed_tokens.weight``
  (vocab, hidden; also the tied LM head, ``lm_head.weight`` is not stored),
  ``model.norm.weight``, ``model.layers.{i}.`` {``input_layernorm``,
  ``post_attention_layernorm``, ``pre_feedforward_layernorm``,
  ``post_feedforward_layernorm``}``.weight``, ``layer_scalar``,
  ``mlp.{gate,up,down}_proj.weight``, ``self_attn.{q_proj,q_norm,o_proj}.weight``
  (no k/v projections; full-attention layers use ``global_head_dim``), and with
  ordered embeddings ``masked_embedding.centroids.weight`` (num_centroids,
  hidden) and ``masked_embedding.token_ordering`` (vocab, int64).
- forward (``Gemma4AssistantForCausalLM.forward`` and transformers'
  ``SinglePositionMultiTokenCandidateGenerator``): the input is
  ``concat(target_embed(last token) * sqrt(backbone), target last hidden)``
  where the hidden is the target's final-normed state; ``pre_projection`` →
  Gemma 4 decoder layers whose queries attend to the K/V of the target's last
  non-shared layer of the same type (RoPE'd at the constant position of the
  last token) → ``model.norm`` → logits (no soft-capping) and
  ``post_projection`` of the same normed state, which is the next step's
  hidden input.
- centroid head (``Gemma4AssistantMaskedEmbedder``): cluster logits pick the
  top ``centroid_intermediate_top_k`` clusters; ``token_ordering`` viewed as
  (num_centroids, vocab / num_centroids) lists each cluster's token ids; only
  those tokens get logits from the LM-head rows, the rest get
  ``min(selected) - 1``. We take that minimum per row, lazily (HF takes it over
  the batch with ``.item()``, a host sync we avoid).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models import gemma4_text

from .heads import language_model
from .load import LoadedModel, ModelLoadError, load_target_reader, load_with_classes

MODEL_TYPE = "gemma4_assistant"


@dataclass
class ModelArgs:
    text_config: dict
    backbone_hidden_size: int
    use_ordered_embeddings: bool = False
    num_centroids: int = 2048
    centroid_intermediate_top_k: int = 32
    tie_word_embeddings: bool = True
    model_type: str = MODEL_TYPE
    text: gemma4_text.ModelArgs = field(init=False)

    def __post_init__(self):
        text = {
            "hidden_size_per_layer_input": 0,
            "vocab_size_per_layer_input": 0,
            "use_double_wide_mlp": False,
            **self.text_config,
        }
        layers = text["num_hidden_layers"]
        text["num_kv_shared_layers"] = text.get("num_kv_shared_layers") or layers
        if text["num_kv_shared_layers"] != layers:
            raise ValueError(f"every layer of a Gemma 4 assistant shares K/V; got "
                             f"num_kv_shared_layers={text['num_kv_shared_layers']} of {layers}")
        if text["hidden_size_per_layer_input"] or text.get("enable_moe_block"):
            raise ValueError("a Gemma 4 assistant has no per-layer inputs and no MoE block")
        self.text = gemma4_text.ModelArgs.from_dict(text)
        if self.use_ordered_embeddings and self.text.vocab_size % self.num_centroids:
            raise ValueError(f"vocab_size {self.text.vocab_size} is not a multiple of "
                             f"num_centroids {self.num_centroids}")

    @classmethod
    def from_dict(cls, config: dict) -> ModelArgs:
        keys = ("text_config", "backbone_hidden_size", "use_ordered_embeddings", "num_centroids",
                "centroid_intermediate_top_k", "tie_word_embeddings", "model_type")
        return cls(**{k: config[k] for k in keys if k in config})


class MaskedEmbedder(nn.Module):
    """The centroid ("masked embedding") logit head."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.top_k = args.centroid_intermediate_top_k
        self.num_centroids = args.num_centroids
        self.vocab_size = args.text.vocab_size
        self.centroids = nn.Linear(args.text.hidden_size, args.num_centroids, bias=False)
        self.token_ordering = mx.zeros((self.vocab_size,), dtype=mx.int32)
        self.freeze(keys=["token_ordering"], recurse=False)

    def __call__(self, h: mx.array, rows) -> mx.array:
        """Full-vocabulary logits for ``h`` (..., H); ``rows(ids)`` gathers LM-head rows."""
        scores = self.centroids(h)
        clusters = mx.argpartition(-scores, kth=self.top_k - 1, axis=-1)[..., : self.top_k]
        ids = self.token_ordering.reshape(self.num_centroids, -1)[clusters]
        ids = ids.reshape(*h.shape[:-1], -1)
        selected = (rows(ids) @ h[..., None])[..., 0]
        fill = mx.min(selected, axis=-1, keepdims=True) - 1
        out = mx.broadcast_to(fill, (*h.shape[:-1], self.vocab_size))
        return mx.put_along_axis(out, ids, selected.astype(out.dtype), axis=-1)


class AssistantModel(nn.Module):
    def __init__(self, args: gemma4_text.ModelArgs):
        super().__init__()
        self.embed_tokens = nn.Embedding(args.vocab_size, args.hidden_size)
        self.layers = [gemma4_text.DecoderLayer(args, i) for i in range(args.num_hidden_layers)]
        self.norm = nn.RMSNorm(args.hidden_size, eps=args.rms_norm_eps)


SharedKV = dict[str, tuple[mx.array, mx.array, mx.array | None]]
"""Per layer type: the target's keys and values (B, kv_heads, S, D) and a mask over S."""


class Model(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.model_type = args.model_type
        text = args.text
        self.model = AssistantModel(text)
        self.pre_projection = nn.Linear(2 * args.backbone_hidden_size, text.hidden_size, bias=False)
        self.post_projection = nn.Linear(text.hidden_size, args.backbone_hidden_size, bias=False)
        if not args.tie_word_embeddings:
            self.lm_head = nn.Linear(text.hidden_size, text.vocab_size, bias=False)
        if args.use_ordered_embeddings:
            self.masked_embedding = MaskedEmbedder(args)

    @property
    def layer_types(self) -> list[str]:
        return self.args.text.layer_types

    def __call__(
        self, x: mx.array, shared_kv: SharedKV, position: int
    ) -> tuple[mx.array, mx.array]:
        """One draft step. ``x`` (B, L, 2 * backbone) is ``[embedding, hidden]``; the
        queries sit at ``position``. Returns (logits (B, L, V), next hidden (B, L, backbone))."""
        h = self.pre_projection(x)
        for layer in self.model.layers:
            keys, values, mask = shared_kv[layer.layer_type]
            h, _, _ = layer(h, mask, None, shared_kv=(keys, values), offset=position)
        h = self.model.norm(h)
        return self.logits(h), self.post_projection(h)

    def logits(self, h: mx.array) -> mx.array:
        if self.args.use_ordered_embeddings:
            return self.masked_embedding(h, self._head_rows)
        return self.full_logits(h)

    def full_logits(self, h: mx.array) -> mx.array:
        """The plain LM head over the whole vocabulary."""
        if self.args.tie_word_embeddings:
            return self.model.embed_tokens.as_linear(h)
        return self.lm_head(h)

    def _head_rows(self, ids: mx.array) -> mx.array:
        if self.args.tie_word_embeddings:
            return self.model.embed_tokens(ids)  # dequantizes the rows of a quantized table
        return self.lm_head.weight[ids]

    def sanitize(self, weights: dict[str, mx.array]) -> dict[str, mx.array]:
        out = {}
        for name, value in weights.items():
            if "rotary_emb" in name or (name == "lm_head.weight" and self.args.tie_word_embeddings):
                continue
            if name == "masked_embedding.token_ordering":
                value = value.astype(mx.int32)
            out[name] = value
        return out

    @property
    def quant_predicate(self):
        # The centroid router is tiny and decides which tokens get logits at all;
        # quantization error there drops whole clusters, so it stays in full precision.
        def predicate(path: str, _module) -> bool:
            return not path.startswith("masked_embedding.")

        return predicate


def is_assistant(config: dict[str, Any]) -> bool:
    return config.get("model_type") == MODEL_TYPE


def load(path: Path) -> tuple[Model, dict]:
    """The assistant at ``path``."""
    return load_with_classes(path, Model, ModelArgs)


def load_for(path: Path, target: LoadedModel) -> LoadedModel:
    """Load the assistant at ``path`` and refuse it unless it was made for ``target``."""
    return load_target_reader(path, target, Model, ModelArgs, "Gemma 4 assistant", check_pair)


def check_pair(args: ModelArgs, target: LoadedModel) -> None:
    """The assistant reads the target's embeddings, hidden state and K/V: widths,
    vocabulary and per-type attention shapes must all agree."""
    lm = language_model(target.model)
    t = getattr(lm, "args", None)
    if getattr(t, "model_type", None) != "gemma4_text":
        raise ModelLoadError(f"a Gemma 4 assistant drafts for Gemma 4 targets; "
                             f"{target.path} is {target.config.get('model_type')}")
    problems = []
    if args.backbone_hidden_size != t.hidden_size:
        problems.append(f"it expects hidden size {args.backbone_hidden_size}, "
                        f"the target has {t.hidden_size}")
    if args.text.vocab_size != t.vocab_size:
        problems.append(f"it has {args.text.vocab_size} tokens, the target {t.vocab_size}")
    own = t.layer_types[: t.num_hidden_layers - t.num_kv_shared_layers]
    for kind in sorted(set(args.text.layer_types)):
        if kind not in own:
            problems.append(f"the target has no {kind} layer to share K/V from")
            continue
        full = kind == "full_attention"
        head_dim = (t.global_head_dim if full and t.global_head_dim else t.head_dim)
        mine = (args.text.global_head_dim if full and args.text.global_head_dim
                else args.text.head_dim)
        kv_heads = (t.num_global_key_value_heads if full and t.attention_k_eq_v
                    and t.num_global_key_value_heads else t.num_key_value_heads)
        if mine != head_dim:
            problems.append(f"{kind} head dim {mine} != the target's {head_dim}")
        if args.text.num_attention_heads % kv_heads:
            problems.append(f"{args.text.num_attention_heads} query heads do not group over "
                            f"the target's {kv_heads} {kind} K/V heads")
    if problems:
        raise ModelLoadError(f"Gemma 4 assistant does not fit target {target.path}: "
                             + "; ".join(problems))
