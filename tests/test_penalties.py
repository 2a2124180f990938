"""Penalties and logit bias inside the speculative engine stay lossless: at temperature 0
the output is mlx-lm's own greedy decode with ``make_logits_processors`` configured the
same, at temperature > 0 it is distributed as the penalized target's samples; logprobs
are the penalized target's, the same whether speculating or not."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from functools import cache

import mlx.core as mx
import numpy as np
import pytest
from mlx_lm.generate import generate_step
from mlx_lm.sample_utils import make_logits_processors
from test_distribution import _assert_matches

from exo_spec.engine import CachedModel, DraftModel, Mtp, SpecDecoder
from exo_spec.engine.sampling import Sampling, log_probs, probs
from exo_spec.models.mtp import load_mtp
from exo_spec.prompt import encode_prompt
from exo_spec.sampling import Penalties

from decoders import PROMPTS, always_pipelined, draft_length, loaded, perturbed, prompt_ids

# Small context sizes, so that each verify row's window differs from its neighbours'.
ALL = Penalties(presence_penalty=0.05, frequency_penalty=-0.03, repetition_penalty=0.9,
                presence_context_size=4, frequency_context_size=3, repetition_context_size=5,
                logit_bias={28: -1.0, 150: 0.02})
BIAS = Penalties(logit_bias={28: -1.0, 508: -1.0, 150: 0.02})
# Contexts longer than a short prompt; a frequency penalty strong enough that
# counting a window's padding would show.
LONG = Penalties(presence_penalty=0.05, frequency_penalty=-0.3, repetition_penalty=0.9,
                 presence_context_size=6, frequency_context_size=5, repetition_context_size=7)
SETTINGS = {"all": ALL, "bias": BIAS, "long": LONG}
KS = [1, 2, 3, 4, None]  # None: adaptive
MAX_TOKENS = 30


def processors(p: Penalties) -> list:
    return make_logits_processors(
        p.logit_bias, p.repetition_penalty, p.repetition_context_size, p.presence_penalty,
        p.presence_context_size, p.frequency_penalty, p.frequency_context_size)


@cache
def mlx_lm_decode(path, prompt: tuple[int, ...], config: str | None, max_tokens: int = MAX_TOKENS
                  ) -> tuple[list[int], list[np.ndarray]]:
    """mlx-lm's greedy decode with the penalties ``SETTINGS[config]``: tokens, and the
    log-softmax of its processed logits at each position."""
    kwargs = {"logits_processors": processors(SETTINGS[config])} if config else {}
    steps = generate_step(mx.array(prompt), loaded(path).model, max_tokens=max_tokens, **kwargs)
    tokens, logprobs = [], []
    for token, lp in steps:
        tokens.append(token)
        logprobs.append(np.array(lp))
    return tokens, logprobs


def decoder(path, proposer: str | None, k: int | None, penalties: Penalties,
            sampling=Sampling(), logprobs: int | None = None) -> SpecDecoder:
    target = loaded(path).model
    if proposer == "drafter":  # close enough to keep some drafts, not all
        proposal = DraftModel(_close_drafter(path))
    elif proposer == "mtp":
        proposal = Mtp(load_mtp(path, target), target)
    else:
        proposal = None
    return SpecDecoder(CachedModel(target), proposal, sampling=sampling,
                       draft_length=draft_length(k), pipelining=always_pipelined(),
                       penalties=penalties, logprobs=logprobs)


@cache
def _close_drafter(path):
    return perturbed(path, scale=0.005)


def _path(checkpoints, proposer):
    return checkpoints.qwen3_5 if proposer == "mtp" else checkpoints.llama


def _run(decoder: SpecDecoder, prompt: list[int], max_tokens: int = MAX_TOKENS) -> list[int]:
    """Decode, checking that logprobs (if asked) arrive with the chunk they belong to."""
    out = []
    for chunk in decoder.generate(prompt, max_tokens):
        out += chunk
        if decoder.top_logprobs is not None:
            assert [t.token_id for t in decoder.logprobs] == out
    return out


@pytest.mark.parametrize("config", ["all", "bias"])
@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("proposer", ["drafter", "mtp"])
def test_greedy_equals_mlx_lm_with_the_same_processors(checkpoints, proposer, k, config):
    path = _path(checkpoints, proposer)
    prompt = prompt_ids(path, PROMPTS[0])
    expected, _ = mlx_lm_decode(path, tuple(prompt), config)
    # The settings matter here: without them mlx-lm says something else.
    assert expected != mlx_lm_decode(path, tuple(prompt), None)[0]
    dec = decoder(path, proposer, k, SETTINGS[config])
    assert _run(dec, prompt) == expected
    if k:
        assert dec.stats.drafted > 0
    if k and proposer == "drafter":  # rejections, and rounds started ahead kept and taken back
        assert 0 < dec.stats.accepted < dec.stats.drafted
        assert dec.rounds_taken_back > 0
        if config == "all":  # with a bias alone, long rounds seldom keep every draft
            assert dec.rounds_taken_back < dec.rounds_pipelined


def test_plain_decoding_equals_mlx_lm(checkpoints):
    path = checkpoints.qwen3_5
    prompt = prompt_ids(path, PROMPTS[1])
    dec = decoder(path, None, None, ALL)
    assert _run(dec, prompt) == mlx_lm_decode(path, tuple(prompt), "all")[0]


@pytest.mark.parametrize("proposer", [None, "drafter"])
def test_a_history_shorter_than_the_context(checkpoints, proposer):
    """A two-token prompt: the first positions' windows are shorter than every
    penalty's context."""
    path = checkpoints.llama
    prompt = prompt_ids(path, PROMPTS[0])[:2]
    dec = decoder(path, proposer, 2, LONG)
    assert _run(dec, prompt, 16) == mlx_lm_decode(path, tuple(prompt), "long", 16)[0]


def _assert_logprobs_match(got, want_tokens, want_logprobs, n):
    assert [t.token_id for t in got] == want_tokens
    for entry, token, ref in zip(got, want_tokens, want_logprobs, strict=True):
        assert entry.logprob == pytest.approx(float(ref[token]), rel=1e-4, abs=1e-5)
        assert len(entry.top) == n
        ids, values = zip(*entry.top, strict=True) if n else ((), ())
        assert list(values) == sorted(values, reverse=True)
        np.testing.assert_allclose(values, np.sort(ref)[::-1][:n], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(values, ref[list(ids)], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("proposer, k, n", [("drafter", 3, 5), ("mtp", 2, 0), (None, None, 5)])
def test_greedy_logprobs_are_mlx_lm_s(checkpoints, proposer, k, n):
    """Each emitted token's logprob, and the n likeliest, equal the log-softmax of
    mlx-lm's processed logits there: from the verify rows, plain steps and the first
    token alike."""
    path = _path(checkpoints, proposer)
    prompt = prompt_ids(path, PROMPTS[0])
    tokens, logprobs = mlx_lm_decode(path, tuple(prompt), "all")
    dec = decoder(path, proposer, k, ALL, logprobs=n)
    assert _run(dec, prompt) == tokens
    _assert_logprobs_match(dec.logprobs, tokens, logprobs, n)
    if proposer == "drafter":  # rows of kept drafts, corrections and bonus tokens
        assert 0 < dec.stats.accepted < dec.stats.drafted


def test_sampled_logprobs_are_the_penalized_distribution_s(checkpoints):
    """At temperature > 0 a speculative run reports, for each token it drew, the
    log-probability under the distribution a plain decode draws from there: penalties
    over that token's history, then the filters and the temperature."""
    path = checkpoints.llama
    prompt = prompt_ids(path, PROMPTS[0])
    sampling = Sampling(temp=0.05, top_k=4)
    mx.random.seed(3)
    dec = decoder(path, "drafter", 2, ALL, sampling=sampling, logprobs=3)
    tokens = _run(dec, prompt, 16)
    assert 0 < dec.stats.accepted < dec.stats.drafted  # kept drafts and corrections
    model = loaded(path).model
    for i, entry in enumerate(dec.logprobs):
        history = mx.array(prompt + tokens[:i])
        logits = model(history[None])[0, -1:]
        for process in processors(ALL):
            logits = process(history, logits)
        want = np.array(log_probs(logits, sampling)[0])
        assert entry.logprob == pytest.approx(float(want[tokens[i]]), rel=1e-4, abs=1e-5)
        np.testing.assert_allclose([v for _, v in entry.top], np.sort(want)[::-1][:3],
                                   rtol=1e-4, atol=1e-5)


def test_bad_settings_are_refused(checkpoints):
    with pytest.raises(ValueError, match="logprobs"):
        decoder(checkpoints.llama, None, None, ALL, logprobs=21)
    dec = decoder(checkpoints.llama, None, None, Penalties(logit_bias={10**6: 1.0}))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        _run(dec, prompt_ids(checkpoints.llama, PROMPTS[0]))


# --- temperature > 0: the verify rule keeps the penalized target's distribution ---

SAMPLING = Sampling(temp=0.1, top_k=3)
LENGTH = 4  # the first token from the prompt pass, then one round drafting 2
SAMPLES = 1500


def _exact_joint(model, prompt: list[int], penalties: Penalties) -> dict:
    """Probability of every LENGTH-token continuation under the penalized target, by
    enumeration, each step processed by mlx-lm's processors over its own history."""
    joint = {(): 1.0}
    for _ in range(LENGTH):
        grown = {}
        for prefix, p in joint.items():
            history = mx.array(prompt + list(prefix))
            logits = model(history[None])[0, -1:]
            for process in processors(penalties):
                logits = process(history, logits)
            dist = np.array(probs(logits, SAMPLING)[0])
            for t in np.flatnonzero(dist > 0):
                grown[prefix + (int(t),)] = p * float(dist[t])
        joint = grown
    return joint


def test_sampled_sequences_follow_the_penalized_target(checkpoints):
    path = checkpoints.llama
    prompt = prompt_ids(path, PROMPTS[0])
    # Strong enough at this temperature that the joint moves far (total variation 0.3)
    # from the unpenalized target's, or from one whose rows miss their newest token.
    penalties = Penalties(presence_penalty=-0.2, frequency_penalty=0.02,
                          repetition_penalty=0.9, presence_context_size=3,
                          frequency_context_size=2, repetition_context_size=2,
                          logit_bias={28: -1.0, 150: 0.02})
    joint = _exact_joint(loaded(path).model, prompt, penalties)
    counts: Counter = Counter()
    drafted = accepted = 0
    for seed in range(SAMPLES):
        mx.random.seed(seed)
        dec = decoder(path, "drafter", 2, penalties, sampling=SAMPLING)
        counts[tuple(_run(dec, prompt, LENGTH))] += 1
        drafted += dec.stats.drafted
        accepted += dec.stats.accepted
    assert drafted >= 2 * SAMPLES  # every sample went through a k = 2 round
    assert 0 < accepted < drafted  # both branches of the rule were taken
    _assert_matches(counts, joint, SAMPLES)


# --- the command line ---


def test_cli_flags(checkpoints):
    """One process: the flags reach the decoder (output and logprobs as mlx-lm's with
    the same processors); a malformed one is one clear line and exit status 2."""
    path = checkpoints.llama
    flags = ["--presence-penalty", "0.05", "--frequency-penalty", "-0.03",
             "--repetition-penalty", "0.9", "--penalty-context-size", "4",
             "--logit-bias", "28=-1", "--logit-bias", "150=0.02"]
    code = (
        "import sys\nfrom exo_spec.cli import main\n"
        "print('\\x00', main(sys.argv[1:] + ['--logit-bias', '28']), file=sys.stderr)\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, "generate", "--model", str(path), "--prompt",
         PROMPTS[0], "--draft-model", str(checkpoints.drafter), "--num-draft", "2",
         "--max-tokens", "12", "--json", "--logprobs", "2", *flags],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    refusal, status = proc.stderr.split("\x00")
    assert status.split() == ["2"]
    assert refusal.strip().splitlines()[-1] == \
        "exo-spec generate: error: --logit-bias takes ID=BIAS, got '28'"
    out = json.loads(proc.stdout)
    size4 = Penalties(presence_penalty=0.05, frequency_penalty=-0.03, repetition_penalty=0.9,
                      presence_context_size=4, frequency_context_size=4,
                      repetition_context_size=4, logit_bias={28: -1.0, 150: 0.02})
    prompt = encode_prompt(loaded(path).tokenizer, PROMPTS[0])
    steps = generate_step(mx.array(prompt), loaded(path).model, max_tokens=12,
                          logits_processors=processors(size4))
    tokens, logprobs = zip(*((t, np.array(lp)) for t, lp in steps), strict=True)
    assert out["tokens"] == list(tokens)
    assert [e["token_id"] for e in out["logprobs"]] == list(tokens)
    for entry, token, ref in zip(out["logprobs"], tokens, logprobs, strict=True):
        assert entry["logprob"] == pytest.approx(float(ref[token]), rel=1e-4, abs=1e-5)
        assert [i for i, _ in entry["top"]] == list(np.argsort(-ref)[:2])
