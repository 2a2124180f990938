"""Loading fixtures into decoders for tests."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten, tree_map
from mlx_lm.models import qwen3_next
from mlx_lm.models.cache import ArraysCache

from exo_spec.engine import (
    AdaptiveDraftLength,
    CachedModel,
    DraftModel,
    FixedDraftLength,
    Mtp,
    Sampling,
    SpecDecoder,
)
from exo_spec.engine.pipelining import RoundPipelining
from exo_spec.engine.prompt_lookup import PromptLookup
from exo_spec.models.load import load
from exo_spec.models.mtp import load_mtp


def always_pipelined() -> RoundPipelining:
    """Every round that can start the next one ahead does (whether that pays is timing;
    here the riskier path is the one under test)."""
    return RoundPipelining(forced=True)

PROMPTS = ["def heappush(heap, item):", "class Queue:\n    def __init__(self"]


@cache
def loaded(path: Path):
    return load(str(path))


def perturbed(path: Path, scale: float, seed: int = 7):
    """A fresh copy of the model at ``path`` with seeded noise on every weight: a
    drafter that agrees with the target often but not always."""
    model = load(str(path)).model
    _add_noise(model, scale, seed)
    return model


def _add_noise(model, scale: float, seed: int) -> None:
    mx.random.seed(seed)
    model.update(tree_map(lambda p: p + scale * mx.random.normal(p.shape, p.dtype),
                          model.parameters()))
    mx.eval(model.parameters())


def draft_length(k: int | None):
    return FixedDraftLength(k) if k else AdaptiveDraftLength()


def drafter_decoder(target_path: Path, drafter_model, k: int | None, sampling=Sampling(),
                    eos=frozenset(), max_kv_size=None, lookup: bool = False) -> SpecDecoder:
    """``lookup``: a prompt lookup drafts first, beside the drafter."""
    target = loaded(target_path).model
    return SpecDecoder(CachedModel(target, max_kv_size=max_kv_size),
                       DraftModel(drafter_model, max_kv_size=max_kv_size),
                       sampling=sampling, draft_length=draft_length(k), eos_token_ids=eos,
                       pipelining=always_pipelined(), lookup=PromptLookup() if lookup else None)


def mtp_decoder(target_path: Path, k: int | None, sampling=Sampling(),
                eos=frozenset(), noise: float = 0.0, lookup: bool = False) -> SpecDecoder:
    """``noise``: seeded noise of this scale on the head's weights (see ``perturbed``);
    ``lookup``: a prompt lookup drafts first, beside the head."""
    target = loaded(target_path).model
    head = load_mtp(target_path, target)
    if noise:
        _add_noise(head, noise, seed=7)
    proposer = Mtp(head, target)
    return SpecDecoder(CachedModel(target), proposer, sampling=sampling,
                       draft_length=draft_length(k), eos_token_ids=eos,
                       pipelining=always_pipelined(), lookup=PromptLookup() if lookup else None)


def lookup_decoder(target_path: Path, k: int | None, sampling=Sampling()) -> SpecDecoder:
    """Prompt lookup alone."""
    return SpecDecoder(CachedModel(loaded(target_path).model), sampling=sampling,
                       draft_length=draft_length(k), lookup=PromptLookup())


def prompt_ids(path: Path, text: str) -> list[int]:
    return loaded(path).tokenizer.encode(text)


def run(decoder: SpecDecoder, prompt: list[int], max_tokens: int) -> list[int]:
    return [t for chunk in decoder.generate(prompt, max_tokens) for t in chunk]


def tiny_qwen3_next():
    """A tiny random qwen3_next (GatedDeltaNet + gated attention), the same each call."""
    mx.random.seed(11)
    args = qwen3_next.ModelArgs(
        model_type="qwen3_next", hidden_size=64, num_hidden_layers=4, intermediate_size=128,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        linear_num_value_heads=4, linear_num_key_heads=2, linear_key_head_dim=16,
        linear_value_head_dim=16, linear_conv_kernel_dim=4, num_experts=0,
        num_experts_per_tok=1, decoder_sparse_step=1, shared_expert_intermediate_size=64,
        mlp_only_layers=[], moe_intermediate_size=64, rms_norm_eps=1e-6, vocab_size=300,
        rope_theta=10000.0, partial_rotary_factor=0.25, max_position_embeddings=512,
        full_attention_interval=2,
    )
    model = qwen3_next.Model(args)
    mx.eval(model.parameters())
    return model


def _cache_state(cache) -> list[np.ndarray]:
    if isinstance(cache, ArraysCache):
        return [np.array(x) for x in cache.cache]
    keys, values = cache.state[:2]
    return [np.array(keys[..., : cache.offset, :]), np.array(values[..., : cache.offset, :]),
            np.array(cache.offset)]


def assert_same_parameters(got: nn.Module, want: nn.Module) -> None:
    """Two modules hold the same parameters: names, dtypes and values."""
    got, want = dict(tree_flatten(got.parameters())), dict(tree_flatten(want.parameters()))
    assert got.keys() == want.keys()
    for name, value in got.items():
        assert value.dtype == want[name].dtype, name
        np.testing.assert_array_equal(np.array(value), np.array(want[name]), err_msg=name)


def assert_same_caches(got: list, want: list, **tolerance) -> None:
    """Two models' caches hold the same state: arrays of recurrent caches, and the
    keys, values and offsets of KV caches."""
    for a, b in zip(got, want, strict=True):
        assert type(a) is type(b)
        for x, y in zip(_cache_state(a), _cache_state(b), strict=True):
            np.testing.assert_allclose(x, y, **tolerance)
