"""A conversation's next turn decoded from the prefix cache is the turn decoded without it.

Turn 1 is a prompt P; turn 2 is P, turn 1's output and a new message. With the cache,
turn 2 starts from turn 1's stored caches (the target's, and the proposer's state: a
drafter's caches, an MTP head's cache and the hidden row it reads next) and prefills
only what follows P; its tokens are those of a decode with no cache and, greedy, of
mlx-lm's own decode, for every proposer and fixed or adaptive k. P is long enough that
turn 1's prefill takes two chunks and turn 2's starts inside a chunk.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from mlx_lm.generate import generate_step
from mlx_lm.sample_utils import make_logits_processors

from exo_spec.engine import CachedModel, DraftModel, Mtp, Sampling, SpecDecoder
from exo_spec.engine.assistant import Gemma4Assistant
from exo_spec.engine.cached_model import make_cache
from exo_spec.engine.prefix_cache import PrefixCache
from exo_spec.engine.target import PREFILL_CHUNK
from exo_spec.models import gemma4_assistant, synthetic
from exo_spec.models.mtp import load_mtp
from exo_spec.models.synthetic_gemma4 import write_gemma4_assistant, write_gemma4_text
from exo_spec.sampling import Penalties

from decoders import always_pipelined, assert_same_caches, draft_length, loaded, perturbed
from reference import greedy_reference

FIRST = "def heappush(heap, item):\n    heap.append(item)\n" * 26
NEXT = "class Queue:\n    def __init__(self"
MAX_TOKENS = 16
BIG = 1 << 30
TOLERANCE = {"rtol": 1e-4, "atol": 1e-4}


@pytest.fixture(scope="module")
def gemma4(tmp_path_factory):
    """A Gemma 4 target (sliding window 8: its rotating caches wrap) and its assistant."""
    root = tmp_path_factory.mktemp("gemma4-prefix")
    tok = root / "tokenizer"
    synthetic.write_tokenizer(tok)
    target = write_gemma4_text(root / "target", tok, seed=10)
    return target, write_gemma4_assistant(root / "assistant", target, seed=11)


def _factory(kind: str, checkpoints, gemma4):
    """(target path, a function of (k, sampling, cache, penalties) making a decoder)."""
    if kind == "assistant":
        path, assistant_path = gemma4
        assistant = gemma4_assistant.load(assistant_path)[0]
    else:
        path = {"draft": checkpoints.llama, "none": checkpoints.llama,
                "mtp": checkpoints.qwen3_5, "mtp-mla": checkpoints.deepseek_v3,
                "none-hybrid": checkpoints.qwen3_5}[kind]
    model = loaded(path).model
    drafter = perturbed(checkpoints.llama, 0.01) if kind == "draft" else None
    head = load_mtp(path, model) if kind.startswith("mtp") else None

    def make(k, sampling=Sampling(), cache=None, penalties=None, max_kv_size=None):
        target = CachedModel(model, max_kv_size=max_kv_size)
        proposer = {"draft": lambda: DraftModel(drafter, max_kv_size=max_kv_size),
                    "mtp": lambda: Mtp(head, model), "mtp-mla": lambda: Mtp(head, model),
                    "assistant": lambda: Gemma4Assistant(assistant, target)}.get(kind)
        return SpecDecoder(target, proposer and proposer(), sampling=sampling,
                           draft_length=draft_length(k), pipelining=always_pipelined(),
                           penalties=penalties, prefix_cache=cache)

    return path, make


def _decode(decoder: SpecDecoder, prompt: list[int], seed: int | None = None):
    """The tokens, and the proposer's state right after the prompt (None without one)."""
    if seed is not None:
        mx.random.seed(seed)
    rounds = decoder.generate(prompt, MAX_TOKENS)
    tokens = next(rounds)
    state = decoder.proposer.state() if decoder.proposer else None
    return tokens + [t for chunk in rounds for t in chunk], state


def _ids(path, text: str) -> list[int]:
    return loaded(path).tokenizer.encode(text)


def _conversation(path, make, seed=None, **kwargs):
    """Turn 1, then turn 2 with the cache and without: (turn 2's prompt, (tokens,
    state) with the hit, the same without, the decoders with and without)."""
    cache = PrefixCache(BIG)
    p1 = _ids(path, FIRST)
    assert PREFILL_CHUNK < len(p1) < 2 * PREFILL_CHUNK - 50
    first = make(cache=cache, **kwargs)
    out1, _ = _decode(first, p1, seed)
    assert first.stats.cached_prompt_tokens == 0 and len(cache) == 1
    p2 = p1 + out1 + _ids(path, NEXT)
    hit, fresh = make(cache=cache, **kwargs), make(**kwargs)
    got, want = _decode(hit, p2, seed), _decode(fresh, p2, seed)
    assert hit.stats.cached_prompt_tokens == len(p1)
    assert fresh.stats.cached_prompt_tokens == 0
    return p2, got, want, hit, fresh


def _assert_same_state(got: dict | None, want: dict | None) -> None:
    """The proposer's state after turn 2's prompt: restored and extended, or read whole."""
    if want is None:
        assert got is None
        return
    assert got.keys() == want.keys()
    for key in got:
        if key == "cache":
            assert_same_caches(got[key], want[key], **TOLERANCE)
        else:
            np.testing.assert_allclose(np.array(got[key]), np.array(want[key]), **TOLERANCE)


@pytest.mark.parametrize("k", [2, None])  # None: adaptive
@pytest.mark.parametrize("kind", ["draft", "mtp", "none", "none-hybrid", "assistant"])
def test_next_turn_from_the_cache_is_the_greedy_decode(checkpoints, gemma4, kind, k):
    path, make = _factory(kind, checkpoints, gemma4)
    p2, (got, got_state), (want, want_state), hit, _ = _conversation(
        path, lambda **kw: make(k, **kw))
    assert got == want == greedy_reference(loaded(path).model, p2, MAX_TOKENS)
    if k is not None:  # adaptive: where plain steps left the drafter unfed depends on timing
        _assert_same_state(got_state, want_state)
    assert hit.stats.to_dict()["cached_prompt_tokens"] == hit.stats.cached_prompt_tokens


@pytest.mark.parametrize("kind", ["draft", "mtp", "assistant"])
def test_seeded_sampling_is_the_same_with_the_cache(checkpoints, gemma4, kind):
    path, make = _factory(kind, checkpoints, gemma4)
    sampling = Sampling(temp=0.8, top_k=20)
    _, (got, _), (want, _), hit, fresh = _conversation(
        path, lambda **kw: make(2, sampling, **kw), seed=5)
    assert got == want
    assert (hit.stats.drafted, hit.stats.accepted) == (fresh.stats.drafted, fresh.stats.accepted)


@pytest.mark.parametrize("kind", ["draft", "mtp-mla"])
def test_a_shared_prefix_serves_another_prompt(checkpoints, gemma4, kind):
    """KV-only caches (llama's, deepseek_v3's MLA latents) are cut to the prefix two
    prompts share; the proposer's state is not restored there, and it reads what it can
    (a drafter the whole prompt, an MTP head the hidden states of the rest)."""
    path, make = _factory(kind, checkpoints, gemma4)
    cache = PrefixCache(BIG)
    shared = _ids(path, FIRST)
    _decode(make(2, cache=cache), shared + _ids(path, NEXT))
    other = shared + _ids(path, "import heapq\n")
    got, _ = _decode(decoder := make(2, cache=cache), other)
    assert 0 < decoder.stats.cached_prompt_tokens <= len(shared)
    assert got == _decode(make(2), other)[0] == \
        greedy_reference(loaded(path).model, other, MAX_TOKENS)


def test_penalties_read_the_whole_prompt_on_a_hit(checkpoints, gemma4):
    path, make = _factory("draft", checkpoints, gemma4)
    penalties = Penalties(presence_penalty=0.05, frequency_penalty=-0.3, repetition_penalty=0.9,
                          presence_context_size=6, frequency_context_size=5,
                          repetition_context_size=7, logit_bias={28: -1.0})
    p2, (got, _), (want, _), _, _ = _conversation(path, lambda **kw: make(2, **kw),
                                                  penalties=penalties)
    processors = make_logits_processors(
        penalties.logit_bias, penalties.repetition_penalty, penalties.repetition_context_size,
        penalties.presence_penalty, penalties.presence_context_size,
        penalties.frequency_penalty, penalties.frequency_context_size)
    steps = generate_step(mx.array(p2), loaded(path).model, max_tokens=MAX_TOKENS,
                          logits_processors=processors)
    assert got == want == [t for t, _ in steps]


def test_caches_of_another_layout_are_not_used(checkpoints, gemma4):
    """An entry stored with full KV caches does not serve a decoder bounded by
    ``max_kv_size`` (rotating caches): that is a miss."""
    path, make = _factory("draft", checkpoints, gemma4)
    cache = PrefixCache(BIG)
    p1 = _ids(path, FIRST)
    _decode(make(2, cache=cache), p1)
    p2 = p1 + _ids(path, NEXT)
    bounded = make(2, cache=cache, max_kv_size=2048)
    assert type(bounded.target.cache[0]) is not type(make_cache(loaded(path).model)[0])
    got, _ = _decode(bounded, p2)
    assert bounded.stats.cached_prompt_tokens == 0
    assert got == _decode(make(2, max_kv_size=2048), p2)[0]
