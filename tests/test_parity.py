"""At temperature 0 every proposer, every k, emits exactly mlx-lm's own greedy decode."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import pytest
from mlx_lm.models.cache import QuantizedKVCache, RotatingKVCache

from exo_spec.engine import CachedModel, FixedDraftLength, Mtp, SpecDecoder, recurrent_capture
from exo_spec.engine.cached_model import make_cache
from exo_spec.engine.pipelining import RoundPipelining
from exo_spec.models.load import load
from exo_spec.models.mtp import load_mtp
from exo_spec.models.synthetic import write_llama

from decoders import (
    PROMPTS,
    always_pipelined,
    assert_same_caches,
    assert_same_parameters,
    drafter_decoder,
    loaded,
    lookup_decoder,
    mtp_decoder,
    perturbed,
    prompt_ids,
    run,
)
from reference import greedy_reference

KS = [1, 2, 3, 4, None]  # None: adaptive
MAX_TOKENS = 24


def _check(decoder, path, prompt_text, max_tokens=MAX_TOKENS):
    prompt = prompt_ids(path, prompt_text)
    expected = greedy_reference(loaded(path).model, prompt, max_tokens)
    got = run(decoder, prompt, max_tokens)
    assert got == expected
    assert decoder.finish.reason == "length"
    assert len(got) == max_tokens
    return decoder.stats


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("prompt", PROMPTS)
@pytest.mark.parametrize("lookup", [False, True])
def test_small_drafter(checkpoints, k, prompt, lookup):
    drafter = loaded(checkpoints.drafter).model
    decoder = drafter_decoder(checkpoints.llama, drafter, k, lookup=lookup)
    _check(decoder, checkpoints.llama, prompt)
    if lookup and k:
        _assert_both_sources_drafted(decoder)


def _assert_both_sources_drafted(decoder: SpecDecoder) -> None:
    """Rounds of copied drafts and rounds of the model proposer's both ran."""
    assert decoder.stats.mode.startswith("lookup+")
    assert 0 < decoder.rounds_copied < decoder.stats.rounds


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("prompt", PROMPTS)
def test_prompt_lookup_alone(checkpoints, k, prompt):
    """A random model soon repeats itself, so copies are found and kept; where none is
    found the round is a plain step."""
    decoder = lookup_decoder(checkpoints.llama, k)
    stats = _check(decoder, checkpoints.llama, prompt)
    assert stats.mode == "lookup"
    if k:
        assert 0 < stats.accepted <= stats.drafted
        assert decoder.rounds_copied < stats.rounds  # some found nothing: plain steps


@pytest.mark.parametrize("k", KS)
def test_close_drafter_partial_acceptance(checkpoints, k):
    drafter = perturbed(checkpoints.llama, scale=0.005)
    decoder = drafter_decoder(checkpoints.llama, drafter, k)
    stats = _check(decoder, checkpoints.llama, PROMPTS[0], max_tokens=40)
    if k:  # adaptive may rightly decode plainly: a tiny CPU drafter costs as much as the target
        assert 0 < stats.accepted < stats.drafted
        _assert_rounds_pipelined_kept_and_taken_back(decoder)


def _assert_rounds_pipelined_kept_and_taken_back(decoder: SpecDecoder) -> None:
    """Both outcomes of a round started before the previous one was read happened."""
    assert 0 < decoder.rounds_taken_back < decoder.rounds_pipelined


@pytest.mark.parametrize("k", KS)
def test_hybrid_target_with_close_drafter(checkpoints, k):
    """Both models are hybrids with rounds open at once; rejected drafts are rewound
    from the recorded GatedDeltaNet states, never by feeding tokens again."""
    drafter = perturbed(checkpoints.qwen3_5, scale=0.005)
    decoder = drafter_decoder(checkpoints.qwen3_5, drafter, k)
    stats = _check(decoder, checkpoints.qwen3_5, PROMPTS[1], max_tokens=40)
    if k:
        assert 0 < stats.accepted < stats.drafted
        _assert_rounds_pipelined_kept_and_taken_back(decoder)
    assert decoder.target.rounds.replayed_tokens == decoder.proposer.lm.rounds.replayed_tokens == 0


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("prompt", PROMPTS)
@pytest.mark.parametrize("lookup", [False, True])
def test_qwen3_5_mtp(checkpoints, k, prompt, lookup):
    decoder = mtp_decoder(checkpoints.qwen3_5, k, lookup=lookup)
    # Long enough for this model's output to repeat itself, and the lookup to copy.
    stats = _check(decoder, checkpoints.qwen3_5, prompt, max_tokens=40 if lookup else MAX_TOKENS)
    assert stats.mode == ("lookup+mtp" if lookup else "mtp")
    if k:
        assert stats.drafted > 0
    if lookup and k:
        _assert_both_sources_drafted(decoder)
    assert decoder.target.rounds.replayed_tokens == 0


@pytest.mark.parametrize("k", [1, 3, None])
def test_deepseek_v3_mtp(checkpoints, k):
    _check(mtp_decoder(checkpoints.deepseek_v3, k), checkpoints.deepseek_v3, PROMPTS[0])


@pytest.mark.parametrize("k", [1, 4])
def test_identical_drafter_accepts_everything(checkpoints, k):
    drafter = loaded(checkpoints.llama).model
    decoder = drafter_decoder(checkpoints.llama, drafter, k)
    stats = _check(decoder, checkpoints.llama, PROMPTS[0])
    assert stats.drafted > 0
    assert stats.accepted == stats.drafted
    assert decoder.rounds_pipelined > 0 and decoder.rounds_taken_back == 0
    assert stats.tokens_per_round == pytest.approx(k + 1, abs=1.0)


@pytest.mark.parametrize("make", ["drafter", "mtp"])
def test_eos_is_never_emitted(checkpoints, make):
    path = checkpoints.llama if make == "drafter" else checkpoints.qwen3_5
    prompt = prompt_ids(path, PROMPTS[0])
    reference = greedy_reference(loaded(path).model, prompt, MAX_TOKENS)
    stop_at = next(i for i in range(3, MAX_TOKENS) if reference[i] not in reference[:i])
    eos = frozenset({reference[stop_at]})
    if make == "drafter":
        decoder = drafter_decoder(path, perturbed(path, scale=0.01), 3, eos=eos)
    else:
        decoder = mtp_decoder(path, 3, eos=eos)
    assert run(decoder, prompt, MAX_TOKENS) == reference[:stop_at]
    assert decoder.finish.reason == "stop"


def test_a_job_ending_with_a_round_started_ahead_takes_it_back(checkpoints):
    """An identical drafter keeps every draft, so the round that emits the EOS token has
    the next one started ahead; ending the job takes it back from the target and the
    drafter, which end where a decoder that never starts ahead leaves them."""
    path = checkpoints.qwen3_5
    prompt = prompt_ids(path, PROMPTS[0])
    reference = greedy_reference(loaded(path).model, prompt, MAX_TOKENS)
    stop_at = next(i for i in range(8, MAX_TOKENS) if reference[i] not in reference[:i])
    ends = []
    for ahead in (True, False):
        decoder = drafter_decoder(path, loaded(path).model, 2,
                                  eos=frozenset({reference[stop_at]}))
        decoder.pipelining = RoundPipelining(forced=ahead)
        assert run(decoder, prompt, MAX_TOKENS) == reference[:stop_at]
        assert (decoder.rounds_pipelined > 0) == ahead
        ends.append(decoder)
    assert not recurrent_capture._armed
    ahead, plain = ends
    assert (mx.concatenate(ahead.proposer._unfed).tolist()
            == mx.concatenate(plain.proposer._unfed).tolist())
    assert_same_caches(ahead.target.cache, plain.target.cache, rtol=1e-5, atol=1e-6)
    assert_same_caches(ahead.proposer.lm.cache, plain.proposer.lm.cache, rtol=1e-5, atol=1e-6)


def test_mtp_on_a_quantized_target(checkpoints):
    """An mlx-community style checkpoint quantizes the target's linear and embedding
    layers: the MTP head still loads its own float weights as they are (they were
    cast to the packed embedding's uint32 before), and decoding stays lossless."""
    path = checkpoints.qwen3_5
    target = load(str(path)).model
    nn.quantize(target, group_size=32, bits=8,
                class_predicate=lambda _, m: hasattr(m, "to_quantized")
                and m.weight.shape[-1] % 32 == 0)
    mtp = load_mtp(path, target)
    unquantized = load_mtp(path, loaded(path).model)
    assert_same_parameters(mtp, unquantized)
    prompt = prompt_ids(path, PROMPTS[0])
    decoder = SpecDecoder(CachedModel(target), Mtp(mtp, target), draft_length=FixedDraftLength(2),
                          pipelining=always_pipelined())
    assert run(decoder, prompt, MAX_TOKENS) == greedy_reference(target, prompt, MAX_TOKENS)


@pytest.mark.parametrize("k", [2, None])
def test_rotating_cache_wraps(checkpoints, k):
    path = checkpoints.llama
    prompt = prompt_ids(path, PROMPTS[0])
    model = loaded(path).model
    caches = [RotatingKVCache(16, keep=4) for _ in model.layers]
    expected = greedy_reference(model, prompt, 40, prompt_cache=caches)
    decoder = drafter_decoder(path, perturbed(path, scale=0.01), k, max_kv_size=16)
    assert run(decoder, prompt, 40) == expected
    if k:  # rounds that wrapped the window were rebuilt from a snapshot
        assert decoder.target.rounds.replayed_tokens > 0


@pytest.mark.parametrize("k", [2, None])
def test_hybrid_rotating_cache_wraps(checkpoints, k):
    """A hybrid whose attention window wraps mid-round falls back to the snapshot and
    a replay for that round, GatedDeltaNet caches included."""
    path = checkpoints.qwen3_5
    prompt = prompt_ids(path, PROMPTS[0])
    model = loaded(path).model
    expected = greedy_reference(model, prompt, 40, prompt_cache=make_cache(model, 16))
    decoder = drafter_decoder(path, perturbed(path, scale=0.01), k, max_kv_size=16)
    assert run(decoder, prompt, 40) == expected
    if k:
        assert decoder.target.rounds.replayed_tokens > 0


def test_quantized_kv_cache(checkpoints, tmp_path):
    path = write_llama(tmp_path / "llama-hd32", checkpoints.tokenizer, hidden_size=128, seed=5)
    model = loaded(path).model
    prompt = prompt_ids(path, PROMPTS[1])
    caches = [QuantizedKVCache(group_size=32, bits=8) for _ in model.layers]
    expected = greedy_reference(model, prompt, MAX_TOKENS, prompt_cache=caches)
    decoder = drafter_decoder(path, perturbed(path, scale=0.01), 3)
    decoder.target.rounds.cache = [QuantizedKVCache(group_size=32, bits=8) for _ in model.layers]
    assert run(decoder, prompt, MAX_TOKENS) == expected
    assert decoder.stats.accepted < decoder.stats.drafted


@pytest.mark.parametrize("stop", [False, True])
def test_plain_decoding_pipelines_and_stops(checkpoints, stop):
    path = checkpoints.qwen3_5
    prompt = prompt_ids(path, PROMPTS[0])
    reference = greedy_reference(loaded(path).model, prompt, MAX_TOKENS)
    stop_at = next(i for i in range(3, MAX_TOKENS) if reference[i] not in reference[:i])
    eos = frozenset({reference[stop_at]}) if stop else frozenset()
    decoder = SpecDecoder(CachedModel(loaded(path).model), eos_token_ids=eos)
    assert run(decoder, prompt, MAX_TOKENS) == (reference[:stop_at] if stop else reference)
    assert decoder.finish.reason == ("stop" if stop else "length")
