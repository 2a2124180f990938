"""After a round with rejections every cache equals a run over the kept tokens alone.

GatedDeltaNet caches (qwen3_5 / qwen3_next hybrids) are rewound from the states
recorded during the round (exo_spec.engine.recurrent_capture), with no replay pass.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from mlx_lm.models import qwen3_5, qwen3_next
from mlx_lm.models.cache import ArraysCache

from exo_spec.engine import CachedModel
from exo_spec.group.pipeline import Stage
from exo_spec.group.stage_cache import StageCache
from exo_spec.models.load import load

from decoders import (
    PROMPTS,
    assert_same_caches,
    loaded,
    perturbed,
    prompt_ids,
    tiny_qwen3_next,
)

FED = mx.array([5, 17, 99, 230, 41], dtype=mx.uint32)
TIGHT = {"rtol": 1e-5, "atol": 1e-6}


def _model_and_prompt(kind: str, checkpoints):
    if kind == "qwen3_next":
        return tiny_qwen3_next(), list(range(3, 14))
    path = getattr(checkpoints, kind)
    return loaded(path).model, prompt_ids(path, PROMPTS[0])


@pytest.fixture(scope="module", params=["qwen3_5", "qwen3_next"])
def hybrid(request, checkpoints):
    """(model, prompt ids) of a hybrid target."""
    return _model_and_prompt(request.param, checkpoints)


def _one_at_a_time(model, prompt: list[int], tokens: mx.array) -> CachedModel:
    """The reference: the prompt, then each kept token fed on its own."""
    fresh = CachedModel(model)
    fresh.prefill(mx.array(prompt, dtype=mx.uint32))
    for t in range(tokens.shape[0]):
        fresh(tokens[t : t + 1])
    return fresh


def _original_hooks() -> bool:
    return (qwen3_5.GatedDeltaNet.__call__.__module__ == qwen3_5.__name__
            and qwen3_next.Qwen3NextGatedDeltaNet.__call__.__module__ == qwen3_next.__name__
            and qwen3_5.gated_delta_update.__module__ == "mlx_lm.models.gated_delta"
            and qwen3_next.gated_delta_update.__module__ == "mlx_lm.models.gated_delta")


@pytest.mark.parametrize("split", [False, True], ids=["one-pass", "drafter-style"])
@pytest.mark.parametrize("kept", range(FED.shape[0] + 1))
def test_hybrid_state_after_rejection(hybrid, kept, split):
    """A round of width S, then kept = 0..S: conv state, recurrent state and KV
    offsets equal a model that was fed only the kept tokens, one at a time, and no
    token was fed twice. ``split`` feeds the round as a drafter does (2 tokens, then
    one at a time) instead of in one verify pass."""
    model, prompt = hybrid
    spec = CachedModel(model)
    spec.prefill(mx.array(prompt, dtype=mx.uint32))
    spec.begin_round(FED.shape[0])
    assert not _original_hooks()
    if split:
        for chunk in (FED[:2], FED[2:3], FED[3:4], FED[4:]):
            spec(chunk)
    else:
        spec(FED)
    spec.end_round(FED, kept)
    assert _original_hooks()  # patched only while a round is open

    fresh = _one_at_a_time(model, prompt, FED[:kept])
    assert sum(isinstance(c, ArraysCache) for c in spec.cache) >= 2
    assert spec.rounds.replayed_tokens == 0
    assert_same_caches(spec.cache, fresh.cache, **TIGHT)
    following = mx.array([7], dtype=mx.uint32)
    np.testing.assert_allclose(np.array(spec(following)[0]), np.array(fresh(following)[0]),
                               **TIGHT)


@pytest.mark.parametrize("model_kind", ["qwen3_5", "qwen3_next", "llama", "rotating"])
@pytest.mark.parametrize("first_kept", [1, 3])
def test_round_started_before_the_previous_one_ends(checkpoints, model_kind, first_kept):
    """The engine starts round 2 assuming round 1 keeps all 3 tokens. When round 1
    keeps all 3, round 2 then keeps 1 of its 2; when it keeps 1, round 2 is taken
    back whole. Either way the caches equal a model fed only the kept tokens, with
    GatedDeltaNet caches rewound from their recordings (no replay) and a rotating
    cache that wraps restored from its snapshot and replayed."""
    model, prompt = _model_and_prompt("llama" if model_kind == "rotating" else model_kind,
                                      checkpoints)
    max_kv_size = len(prompt) + 2 if model_kind == "rotating" else None
    spec = CachedModel(model, max_kv_size=max_kv_size)
    spec.prefill(mx.array(prompt, dtype=mx.uint32))
    first, second = FED[:3], FED[3:]
    spec.begin_round(3)
    spec(first)
    spec.begin_round(2)
    spec(second)
    if first_kept == 3:
        spec.end_round(first, 3)
        spec.end_round(second, 1)
        kept = [first, second[:1]]
    else:
        with pytest.raises(RuntimeError, match="undo the later rounds"):
            spec.end_round(first, first_kept)
        spec.undo_round()
        spec.end_round(first, first_kept)
        kept = [first[:first_kept]]
    assert _original_hooks()
    assert (spec.rounds.replayed_tokens > 0) == (model_kind == "rotating")

    fresh = CachedModel(model, max_kv_size=max_kv_size)
    fresh.prefill(mx.array(prompt, dtype=mx.uint32))
    for chunk in kept:  # in the pieces the round loop kept them, as rounding depends on it
        fresh(chunk)
    following = mx.array([7], dtype=mx.uint32)
    np.testing.assert_allclose(np.array(spec(following)[0]), np.array(fresh(following)[0]),
                               **TIGHT)


def test_drafter_and_target_rounds_open_together(checkpoints):
    """Two hybrid models with rounds open at once (the drafter's round spans the
    target's verify), forwards interleaved, closed in either order: each cache is
    rewound from its own recording."""
    path = checkpoints.qwen3_5
    prompt = prompt_ids(path, PROMPTS[1])
    target_model, drafter_model = loaded(path).model, perturbed(path, scale=0.01)
    target, drafter = CachedModel(target_model), CachedModel(drafter_model)
    ids = mx.array(prompt, dtype=mx.uint32)
    target.prefill(ids)
    drafter.prefill(ids)
    drafted = FED[:4]

    drafter.begin_round(3)
    for t in range(3):
        drafter.last_logits(drafted[t : t + 1])
    target.begin_round(4)
    target(drafted)
    drafter.end_round(drafted[:3], 1)
    assert not _original_hooks()  # the target's round is still open
    target.end_round(drafted, 2)
    assert _original_hooks()

    assert_same_caches(target.cache,
                       _one_at_a_time(target_model, prompt, drafted[:2]).cache, **TIGHT)
    assert_same_caches(drafter.cache,
                       _one_at_a_time(drafter_model, prompt, drafted[:1]).cache, **TIGHT)
    assert target.rounds.replayed_tokens == drafter.rounds.replayed_tokens == 0


@pytest.mark.parametrize("kept", [1, 3])
def test_follower_stage_rewinds_without_replay(checkpoints, kept):
    """A pipeline stage past rank 0 (layers 2-3: GatedDeltaNet, attention) fed hidden
    rows, as a follower is: its round is rewound in place like CachedModel's."""
    stage = Stage(load(str(checkpoints.qwen3_5)).model, range(2, 4), rank=1)
    mx.random.seed(3)
    prompt = mx.random.normal((1, 9, stage.hidden_size))
    rows = mx.random.normal((5, stage.hidden_size))
    spec, fresh = StageCache(stage), StageCache(stage)
    spec(prompt)
    spec.rounds.begin(rows.shape[0])
    spec(rows[None])
    spec.rounds.end(rows, kept)
    fresh(prompt)
    for t in range(kept):
        fresh(rows[None, t : t + 1])
    assert isinstance(spec.rounds.cache[0], ArraysCache)
    assert spec.rounds.replayed_tokens == 0
    assert_same_caches(spec.rounds.cache, fresh.rounds.cache, **TIGHT)
    following = mx.random.normal((1, 1, stage.hidden_size))
    np.testing.assert_allclose(np.array(spec(following)), np.array(fresh(following)), **TIGHT)


def test_dropped_round_stops_capturing(checkpoints):
    spec = CachedModel(loaded(checkpoints.qwen3_5).model)
    spec.prefill(mx.array([1, 2, 3], dtype=mx.uint32))
    spec.begin_round(2)
    spec(FED[:2])
    spec.rounds.drop()
    assert _original_hooks()


def test_trimmable_cache_is_trimmed_not_replayed(checkpoints):
    model = loaded(checkpoints.llama).model
    spec = CachedModel(model)
    spec.prefill(mx.array([1, 2, 3], dtype=mx.uint32))
    fed = mx.array([4, 5, 6], dtype=mx.uint32)
    spec.begin_round(3)
    spec(fed)
    spec.end_round(fed, 1)
    assert spec.rounds.replayed_tokens == 0
    assert all(c.offset == 4 for c in spec.cache)


def test_reset_empties_caches_and_drops_an_open_round(checkpoints):
    model = loaded(checkpoints.qwen3_5).model
    spec = CachedModel(model)
    spec.prefill(mx.array([1, 2, 3], dtype=mx.uint32))
    spec.begin_round(3)
    spec(mx.array([4, 5, 6], dtype=mx.uint32))
    spec.rounds.reset()
    assert _original_hooks()
    assert spec.rounds.replayed_tokens == 0
    assert all(c.empty() for c in spec.cache)
