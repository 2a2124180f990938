"""Split an mlx-lm causal LM into its body (tokens -> final hidden states) and its
head (hidden states -> logits), for proposers that read the target's hidden state."""

from __future__ import annotations

from collections.abc import Callable

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.base import gather_last_axis


def language_model(model: nn.Module) -> nn.Module:
    """The text model of a checkpoint (multimodal ones wrap it in ``language_model``)."""
    return getattr(model, "language_model", model)


def body_and_head(model: nn.Module) -> tuple[nn.Module, Callable[[mx.array], mx.array]]:
    lm = language_model(model)
    body = lm.model
    args = getattr(lm, "args", None)
    tied = getattr(args, "tie_word_embeddings", False) or not hasattr(lm, "lm_head")
    project = body.embed_tokens.as_linear if tied else lm.lm_head
    group = getattr(lm, "sharding_group", None)
    if group is not None and not tied:  # mlx-lm's shard() split the vocabulary over ranks
        project = _gathered(project, group)
    cap = getattr(lm, "final_logit_softcapping", None) or getattr(
        args, "final_logit_softcapping", None
    )
    if not cap:
        return body, project
    return body, lambda h: mx.tanh(project(h) / cap) * cap


def _gathered(project: nn.Module, group: mx.distributed.Group) -> Callable[[mx.array], mx.array]:
    return lambda h: gather_last_axis(project(h), group)


def embedding(model: nn.Module) -> nn.Embedding:
    return language_model(model).model.embed_tokens
