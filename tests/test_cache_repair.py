"""After a round with rejections every cache equals a fresh run over the kept tokens."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from mlx_lm.models.cache import ArraysCache

from exo_spec.spec import CachedModel

from decoders import PROMPTS, loaded, prompt_ids


def _state(cache) -> list[np.ndarray]:
    if isinstance(cache, ArraysCache):
        return [np.array(x) for x in cache.cache]
    keys, values = cache.state[:2]
    return [np.array(keys[..., : cache.offset, :]), np.array(values[..., : cache.offset, :])]


@pytest.mark.parametrize("kept", [0, 1, 3])
def test_hybrid_state_after_rejection(checkpoints, kept):
    path = checkpoints.qwen3_5
    model = loaded(path).model
    prompt = mx.array(prompt_ids(path, PROMPTS[0]), dtype=mx.uint32)
    fed = mx.array([5, 17, 99, 230, 41], dtype=mx.uint32)

    spec = CachedModel(model)
    spec.prefill(prompt)
    spec.begin_round(fed.shape[0])
    spec(fed)
    spec.end_round(fed, kept)

    fresh = CachedModel(model)
    fresh.prefill(mx.concatenate([prompt, fed[:kept]]))

    assert any(isinstance(c, ArraysCache) for c in spec.cache)
    assert spec.replayed_tokens == kept
    for got, want in zip(spec.cache, fresh.cache, strict=True):
        for a, b in zip(_state(got), _state(want), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    next_token = mx.array([7], dtype=mx.uint32)
    np.testing.assert_allclose(np.array(spec(next_token)[0]), np.array(fresh(next_token)[0]),
                               rtol=1e-4, atol=1e-4)


def test_trimmable_cache_is_trimmed_not_replayed(checkpoints):
    model = loaded(checkpoints.llama).model
    spec = CachedModel(model)
    spec.prefill(mx.array([1, 2, 3], dtype=mx.uint32))
    fed = mx.array([4, 5, 6], dtype=mx.uint32)
    spec.begin_round(3)
    spec(fed)
    spec.end_round(fed, 1)
    assert spec.replayed_tokens == 0
    assert all(c.offset == 4 for c in spec.cache)
