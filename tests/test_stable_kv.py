"""StableKVCache computes what KVCache computes, with key shapes that stay put."""

from __future__ import annotations

import mlx.core as mx
import pytest
from mlx_lm.models.cache import KVCache, make_prompt_cache

from exo_spec.models.load import load
from exo_spec.spec import stable_kv
from exo_spec.spec.stable_kv import StableKVCache, stable


@pytest.mark.parametrize("kind", ["llama", "qwen3_5"])
@pytest.mark.parametrize("dtype", [mx.float32, mx.bfloat16])
def test_same_logits_as_kv_cache_over_verify_rounds(checkpoints, kind, dtype):
    model = load(str(getattr(checkpoints, kind))).model  # a fresh copy: its dtype changes
    model.set_dtype(dtype)
    plain = make_prompt_cache(model)
    padded = stable(make_prompt_cache(model), force=True)
    assert any(isinstance(c, StableKVCache) for c in padded)
    prompt = mx.array([[(7 * i) % 300 for i in range(250)]])
    for c in (plain, padded):
        model(prompt, cache=c)
    for step in range(12):  # crosses the 256-token buffer step
        width = 1 + step % 5
        tokens = mx.array([[(step * 11 + i) % 300 for i in range(width)]])
        a, b = model(tokens, cache=plain), model(tokens, cache=padded)
        assert mx.array_equal(a, b).item()
        if kind == "llama":  # hybrids cannot trim their GatedDeltaNet state
            for c in plain + padded:
                c.trim(width - 1)


def test_padded_passes_see_the_whole_buffer():
    c = StableKVCache()
    c.forced = True
    x = mx.zeros((1, 2, 10, 4))
    assert c.update_and_fetch(x, x)[0].shape[2] == 10  # a prompt: as KVCache
    for width in (2, 3, 5):
        mask = c.make_mask(width)
        keys, _ = c.update_and_fetch(mx.ones((1, 2, width, 4)), mx.ones((1, 2, width, 4)))
        assert keys.shape[2] == mask.shape[1] == 256
        c.trim(width - 1)
    assert c.make_mask(1) is None
    assert c.update_and_fetch(mx.ones((1, 2, 1, 4)), mx.ones((1, 2, 1, 4)))[0].shape[2] == c.offset


def test_only_on_cuda_unless_forced(monkeypatch):
    monkeypatch.delenv("EXO_SPEC_STABLE_KV", raising=False)
    caches = [KVCache()]
    expected = bool(getattr(mx, "cuda", None) and mx.cuda.is_available()
                    and mx.default_device() == mx.gpu)
    assert stable_kv.wanted() is expected
    monkeypatch.setenv("EXO_SPEC_STABLE_KV", "0")
    assert stable(caches) is caches
    monkeypatch.setenv("EXO_SPEC_STABLE_KV", "1")
    assert isinstance(stable(caches)[0], StableKVCache)
