"""Cut an mlx-lm model into pipeline stages: contiguous layer ranges, one per rank.

Rank 0 keeps the embeddings, its layers and the head (final norm + lm_head);
every other rank keeps only its layers. The last rank sends its raw hidden rows
back to rank 0, which applies the head. The head sits on rank 0, not on the last
rank, so that the existing round loop runs there unchanged:
it needs the logits to verify, and one round moves the same k+1 rows of hidden
size back to rank 0 as it moves on every other hop, instead of k+1 rows of
vocabulary size. Tied embeddings make the head rank 0's anyway.

Weights are loaded lazily and the other ranks' arrays dropped before anything is
evaluated, so each rank's memory is its own share. A later stage's body gets an
identity for its embedding and is called on the hidden rows, so any body that
embeds its input and iterates ``body.layers`` can be split (llama, qwen3_5 and
qwen3_next hybrids, deepseek_v3, ...); per-layer-type mask indices are
recomputed for the kept layers. Bodies that transform their embeddings are
refused (``split_refusal``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import mlx.core as mx
import mlx.nn as nn

from ..models.heads import body_and_head, language_model
from ..models.load import text_config

# Model types whose body changes its embeddings before the first layer (a scale, a
# multiplier, per-layer token inputs), as mlx-lm's model sources define them. A later
# stage feeds its hidden rows through the body with an identity embedding, so these
# would be transformed again there; they are not split.
EMBEDDING_TRANSFORMS = frozenset({
    "afmoe", "falcon_h1", "gear", "gemma", "gemma2", "gemma3", "gemma3_text", "gemma3n",
    "gemma4", "gemma4_text", "granite", "granitemoe", "granitemoehybrid", "minicpm",
    "minicpm3", "phi3small", "recurrent_gemma",
})


def split_refusal(config: dict) -> str:
    """Why this model's layers cannot be cut into pipeline stages ("" if they can)."""
    types = {config.get("model_type"), text_config(config).get("model_type")}
    if found := sorted(t for t in types if t in EMBEDDING_TRANSFORMS):
        return (f"model_type {found[0]} cannot be split across ranks: its body transforms the "
                "embeddings before the first layer, which a later pipeline stage cannot redo")
    return ""


def layer_count(model: nn.Module) -> int:
    return len(language_model(model).model.layers)


def parse_split(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(f"--split must be layer counts like 3,1, got {text!r}") from None


def layer_ranges(num_layers: int, ranks: int, split: Sequence[int] | None = None) -> list[range]:
    """Contiguous layer ranges, rank 0 first; even by default (earlier ranks take the extra)."""
    if split is None:
        base, extra = divmod(num_layers, ranks)
        split = [base + (r < extra) for r in range(ranks)]
    if len(split) != ranks:
        raise ValueError(f"--split has {len(split)} entries for {ranks} ranks")
    if any(s <= 0 for s in split) or sum(split) != num_layers:
        raise ValueError(f"--split {','.join(map(str, split))} must be positive layer counts "
                         f"summing to the model's {num_layers} layers")
    starts = [sum(split[:r]) for r in range(ranks)]
    return [range(s, s + n) for s, n in zip(starts, split, strict=True)]


def _first(layers: list[nn.Module], pred: Callable[[nn.Module], bool]) -> int | None:
    return next((i for i, layer in enumerate(layers) if pred(layer)), None)


def _reindex_masks(body: nn.Module) -> None:
    """Bodies build each mask from the cache of the first layer of its type."""
    layers = body.layers
    if hasattr(body, "ssm_idx"):  # qwen3_5 / qwen3_next hybrids
        body.ssm_idx = _first(layers, lambda layer: layer.is_linear)
        body.fa_idx = _first(layers, lambda layer: not layer.is_linear)
    elif hasattr(body, "swa_idx"):  # llama-style sliding-window interleaving
        body.swa_idx = _first(layers, lambda layer: layer.use_sliding)
        body.fa_idx = _first(layers, lambda layer: not layer.use_sliding) or 0


class Stage:
    """One rank's share of the model: ``forward(x, cache)`` runs its layers.

    Rank 0's input is token ids (1, S); the others' input is hidden rows (1, S, H).
    The output is the raw residual stream (1, S, H), before the final norm. Rank 0
    also keeps the head, ``project(norm(h))``, for the rows the last rank sends back.
    """

    def __init__(self, model: nn.Module, layers: range, rank: int):
        lm = language_model(model)
        body = lm.model
        self.model = model
        probe = body.embed_tokens(mx.array([[0]]))  # lazy: reads no weights
        self.wire_dtype, self.hidden_size = probe.dtype, probe.shape[-1]
        _, self.project = body_and_head(model)
        self.norm = body.norm
        body.layers = body.layers[layers.start : layers.stop]
        _reindex_masks(body)
        body.norm = nn.Identity()
        if rank:  # a later stage: no embeddings, no head
            body.embed_tokens = nn.Identity()
            if "lm_head" in lm:
                lm.lm_head = nn.Identity()
            self.project = self.norm = None
        self._body = body
        mx.eval(model.parameters())

    def forward(self, x: mx.array, cache: list) -> mx.array:
        h = self._body(x, cache=cache)  # later stages embed with an identity
        return h.astype(self.wire_dtype)
