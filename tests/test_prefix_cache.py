"""A prefix-cache hit gives what a fresh prefill gives, and its copies stay independent.

For each cache type the fixtures use (llama's KVCache, qwen3_5's GatedDeltaNet
ArraysCache + KVCache, deepseek_v3's MLA latent KVCache, RotatingKVCache with and
without kept first tokens): prefill P and store; a lookup for P+Q, fed Q, matches a
fresh prefill of P+Q, however the stored caches and the restored ones change afterwards.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from mlx_lm.models.cache import KVCache, RotatingKVCache

from exo_spec.engine import cache_snapshot
from exo_spec.engine.cached_model import make_cache
from exo_spec.engine.prefix_cache import PrefixCache

from decoders import assert_same_caches, loaded

TIGHT = {"rtol": 1e-5, "atol": 1e-6}
P = [(7 * i + 3) % 500 for i in range(29)]
Q = [(11 * i + 5) % 500 for i in range(13)]
R = [(13 * i + 1) % 500 for i in range(9)]  # R[0] != Q[0]
BIG = 1 << 30


def _feed(model, caches: list, tokens: list[int]) -> mx.array:
    logits = model(mx.array(tokens, dtype=mx.uint32)[None], cache=caches)[0]
    mx.eval(logits, [c.state for c in caches])
    return logits


def _setup(case: str, checkpoints):
    """(model, a function making its empty caches)."""
    kind, _, variant = case.partition("-")
    model = loaded(getattr(checkpoints, kind)).model
    if variant == "rotating":  # --max-kv-size: keeps the first 4 tokens
        return model, lambda: make_cache(model, max_kv_size=64)
    if variant == "window":  # a sliding-window layer (keep 0), smaller than P
        return model, lambda: [RotatingKVCache(16, keep=0) for _ in model.layers]
    return model, lambda: make_cache(model)


def _fresh(model, new_cache, tokens: list[int]):
    caches = new_cache()
    return _feed(model, caches, tokens), caches


@pytest.mark.parametrize("case", ["llama", "qwen3_5", "deepseek_v3", "llama-rotating",
                                  "llama-window"])
def test_hit_equals_fresh_prefill(case, checkpoints):
    model, new_cache = _setup(case, checkpoints)
    want, want_caches = _fresh(model, new_cache, P + Q)
    want_next = _feed(model, want_caches, R[:1])  # one decode step after the prompt
    cache = new_cache()
    _feed(model, cache, P[:20])  # a chunk, then decode-like steps: the window case wraps
    for t in P[20:]:
        _feed(model, cache, [t])
    prefix = PrefixCache(BIG)
    assert prefix.store(P, cache)
    for t in R[:3]:  # the job goes on with its own caches, writing into their buffers
        _feed(model, cache, [t])
    for _ in range(2):  # the second lookup sees the entry after the first hit changed
        hit = prefix.lookup(P + Q)
        assert hit is not None and hit.length == len(P) and hit.extra is None
        np.testing.assert_allclose(_feed(model, hit.caches, Q), want[len(P):], **TIGHT)
        np.testing.assert_allclose(_feed(model, hit.caches, R[:1]), want_next, **TIGHT)
        if case != "llama-window":  # a wrapped buffer may hold the window in another order
            assert_same_caches(hit.caches, want_caches, **TIGHT)
        _feed(model, hit.caches, R)
    assert prefix.hits == 2 and prefix.reused_tokens == 2 * len(P)


def test_kv_entries_serve_a_shared_prefix(checkpoints):
    """A KV-only entry is cut to the prefix it shares with the new tokens; one holding
    recurrent state serves only sequences that extend all of it."""
    llama, new_llama = _setup("llama", checkpoints)
    cache = new_llama()
    _feed(llama, cache, P + Q)
    prefix = PrefixCache(BIG)
    prefix.store(P + Q, cache, extra={"hidden": mx.ones((1, 8))})
    hit = prefix.lookup(P + R)
    assert hit.length == len(P) and hit.extra is None  # extra is only valid at its end
    np.testing.assert_allclose(_feed(llama, hit.caches, R), _fresh(llama, new_llama, P + R)[0][
        len(P):], **TIGHT)
    hit = prefix.lookup(P + Q)  # all of it: one token is left to prefill
    assert hit.length == len(P + Q) - 1
    np.testing.assert_allclose(_feed(llama, hit.caches, Q[-1:]),
                               _fresh(llama, new_llama, P + Q)[0][-1:], **TIGHT)

    qwen, new_qwen = _setup("qwen3_5", checkpoints)
    cache = new_qwen()
    _feed(qwen, cache, P + Q)
    hybrid = PrefixCache(BIG)
    hybrid.store(P + Q, cache)
    assert hybrid.lookup(P + R) is None
    assert hybrid.lookup(P + Q) is None
    assert hybrid.lookup(P + Q + R).length == len(P + Q)


def test_boundaries_of_rotating_entries(checkpoints):
    """A wrapped rotating cache resumes only from its end; one that keeps its first tokens
    only starts sequences that fit its window."""
    model, new_window = _setup("llama-window", checkpoints)  # window 16
    cache = new_window()
    _feed(model, cache, P)  # one feed keeps all 29 tokens: it may still be cut
    prefix = PrefixCache(BIG)
    prefix.store(P, cache)
    assert prefix.lookup(P[:-3] + Q).length == len(P) - 3
    _feed(model, cache, Q[:2])  # now the oldest are gone
    prefix = PrefixCache(BIG)
    prefix.store(P + Q[:2], cache)
    assert prefix.lookup(P + Q[:1] + R) is None and prefix.lookup(P + Q[:2]) is None
    assert prefix.lookup(P + Q).length == len(P) + 2

    model, new_sinks = _setup("llama-rotating", checkpoints)  # window 64
    cache = new_sinks()
    _feed(model, cache, P)
    prefix = PrefixCache(BIG)
    prefix.store(P, cache)
    assert prefix.lookup(P + [1] * (64 - len(P))).length == len(P)
    assert prefix.lookup(P + [1] * (65 - len(P))) is None


def test_extra_payload_is_copied(checkpoints):
    model, new_cache = _setup("llama", checkpoints)
    drafter = loaded(checkpoints.drafter).model
    cache, drafted = new_cache(), make_cache(drafter)
    _feed(model, cache, P)
    drafter_logits = _feed(drafter, drafted, P)
    prefix = PrefixCache(BIG)
    prefix.store(P, cache, extra={"drafter": drafted, "hidden": drafter_logits[-1:], "n": 3})
    _feed(drafter, drafted, R)
    want = _fresh(drafter, lambda: make_cache(drafter), P + Q)[0][len(P):]
    for _ in range(2):
        extra = prefix.lookup(P + Q).extra
        assert extra["n"] == 3
        np.testing.assert_array_equal(extra["hidden"], drafter_logits[-1:])
        np.testing.assert_allclose(_feed(drafter, extra["drafter"], Q), want, **TIGHT)


def test_lru_eviction_and_bytes(checkpoints):
    model, new_cache = _setup("llama", checkpoints)
    a, b, c = ([s] + P[1:20] for s in (1, 2, 4))
    caches = {}
    for seq in (a, b, c):
        caches[seq[0]] = new_cache()
        _feed(model, caches[seq[0]], seq)
    live = sum(k.keys[..., : k.offset, :].nbytes + k.values[..., : k.offset, :].nbytes
               for k in caches[1])
    assert live < sum(k.nbytes for k in caches[1])  # mlx-lm's buffers have slack
    assert not PrefixCache(live - 1).store(a, caches[1])

    prefix = PrefixCache(int(2.5 * live))
    prefix.store(a, caches[1])
    assert prefix.bytes_used == live  # only the live part is kept
    prefix.store(b, caches[2])
    assert prefix.bytes_used == 2 * live
    assert prefix.lookup(a + Q).length == len(a)  # a is now the most recent
    prefix.store(c, caches[4])  # evicts b, the least recently used
    assert prefix.bytes_used == 2 * live and len(prefix) == 2 and prefix.evictions == 1
    assert prefix.lookup(b + Q) is None
    assert prefix.lookup(c + Q).length == len(c) and prefix.lookup(a + Q).length == len(a)

    longer = new_cache()
    _feed(model, longer, a + Q[:3])
    prefix.store(a + Q[:3], longer)  # covers the entry for a, which is dropped
    assert len(prefix) == 2 and prefix.bytes_used < 2.5 * live
    assert prefix.lookup(a + R).length == len(a) and prefix.lookup(a + Q).length == len(a) + 3
    prefix.clear()
    assert prefix.bytes_used == 0 and prefix.lookup(a + Q) is None


def test_copies_own_their_memory(checkpoints):
    model, new_cache = _setup("qwen3_5", checkpoints)
    cache = new_cache()
    _feed(model, cache, P)
    prefix = PrefixCache(BIG)
    prefix.store(P, cache)
    hit = prefix.lookup(P + Q)
    stored = next(iter(prefix._entries.values())).caches
    groups = [cache_snapshot.arrays(x) for x in (cache, stored, hit.caches)]
    mx.eval(groups)
    addresses = [{np.asarray(a).__array_interface__["data"][0] for a in g} for g in groups]
    assert all(addresses)
    assert not (addresses[0] & addresses[1] or addresses[0] & addresses[2]
                or addresses[1] & addresses[2])


def test_checks_and_aliases(checkpoints):
    model, new_cache = _setup("llama", checkpoints)
    cache = new_cache()
    _feed(model, cache, P)
    with pytest.raises(ValueError, match="has seen 29 tokens"):
        PrefixCache(BIG).store(P[:-1], cache)
    shared = KVCache()
    copies = [cache_snapshot.clone(c, memo={}) for c in (shared, shared)]
    assert copies[0] is not copies[1]  # without a shared memo, two clones ...
    memo: dict = {}
    copies = [cache_snapshot.clone(c, memo=memo) for c in (shared, shared)]
    assert copies[0] is copies[1] and copies[0] is not shared  # ... with one, one clone


def test_lookup_serves_only_caches_of_the_asked_layout(checkpoints):
    """Caches made with another ``max_kv_size`` (rotating instead of full KV caches) are
    no hit, and a cuttable entry does not replace a prefix entry of another layout."""
    model, new_full = _setup("llama", checkpoints)
    _, new_rotating = _setup("llama-rotating", checkpoints)
    full, rotating = new_full(), new_rotating()
    _feed(model, full, P + Q)
    _feed(model, rotating, P)
    prefix = PrefixCache(BIG)
    prefix.store(P, rotating)
    prefix.store(P + Q, full)  # P is its prefix, but of another layout: both stay
    assert len(prefix) == 2
    layout = cache_snapshot.layout
    assert layout(full) != layout(rotating)
    assert prefix.lookup(P + R, layout(rotating)).caches[0].__class__ is RotatingKVCache
    assert prefix.lookup(P + Q + R, layout(full)).length == len(P + Q)
    assert prefix.lookup(P + Q + R, layout(rotating)).length == len(P)
    assert prefix.lookup(P + R, layout(make_cache(model, max_kv_size=128))) is None
    assert prefix.misses == 1


def test_a_group_mirrors_rank_0s_entries(checkpoints):
    """``GroupPrefixCache`` (rank 0) tells a follower's ``Snapshots`` to keep, restore and
    forget its own caches by entry id, as its index stores, hits and evicts; a hit cut
    from a longer entry is a miss across ranks."""
    from types import SimpleNamespace

    from exo_spec.group.prefix_cache import GroupPrefixCache, Snapshots

    model, new_cache = _setup("llama", checkpoints)
    follower = SimpleNamespace(rounds=SimpleNamespace(cache=new_cache(), drop=lambda: None))
    snapshots = Snapshots()
    leader = SimpleNamespace(command=lambda c: snapshots.serve(c, follower))
    caches = new_cache()
    _feed(model, caches, P)
    one = cache_snapshot.nbytes(cache_snapshot.clone_tree(caches))
    group = GroupPrefixCache(PrefixCache(one + one // 2), leader)  # room for one entry
    _feed(model, follower.rounds.cache, P)
    assert group.store(P, caches) and len(snapshots) == 1
    follower.rounds.cache = new_cache()
    assert group.lookup(P[:-3]) is None and group.index.misses == 1  # a cut hit
    hit = group.lookup(P + Q)
    assert hit.length == len(P) and group.index.hits == 1
    assert_same_caches(follower.rounds.cache, caches, **TIGHT)  # restored on the follower
    other = new_cache()
    _feed(model, other, R + P)  # longer than P, and not its extension
    assert group.store(R + P, other) and len(group) == 1 and len(snapshots) == 1  # P evicted
    group.clear()
    assert len(snapshots) == 0
