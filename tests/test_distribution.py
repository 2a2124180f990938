"""At temperature > 0 speculative output is distributed exactly as the target's own samples."""

from __future__ import annotations

from collections import Counter

import mlx.core as mx
import numpy as np
import pytest
from scipy.stats import chisquare

from exo_spec.engine.prompt_lookup import one_hot
from exo_spec.engine.sampling import Sampling, probs
from exo_spec.engine.verify import verify_sampled

from decoders import (
    PROMPTS,
    drafter_decoder,
    loaded,
    lookup_decoder,
    mtp_decoder,
    perturbed,
    prompt_ids,
    run,
)
from reference import greedy_reference

SAMPLING = Sampling(temp=1.0, top_k=3)
LENGTH = 4  # the first token from the prompt pass, then one round drafting 2
SAMPLES = 1500


def _exact_joint(model, prompt: list[int]) -> dict[tuple[int, ...], float]:
    """Probability of every LENGTH-token continuation under the target, by enumeration."""
    joint = {(): 1.0}
    for _ in range(LENGTH):
        grown = {}
        for prefix, p in joint.items():
            logits = model(mx.array([prompt + list(prefix)]))[0, -1:]
            dist = np.array(probs(logits, SAMPLING)[0])
            for t in np.flatnonzero(dist > 0):
                grown[prefix + (int(t),)] = p * float(dist[t])
        joint = grown
    return joint


def _assert_matches(counts: Counter, joint: dict, samples: int) -> None:
    cells = sorted(joint, key=joint.get, reverse=True)
    assert set(counts) <= set(cells), "sampled a sequence the target cannot produce"
    observed, expected = [], []
    rest_o, rest_e = 0, 0.0
    for cell in cells:  # pool the rare cells so every bin expects >= 5
        if joint[cell] * samples >= 5:
            observed.append(counts[cell])
            expected.append(joint[cell] * samples)
        else:
            rest_o += counts[cell]
            rest_e += joint[cell] * samples
    if rest_e > 0:
        observed.append(rest_o)
        expected.append(rest_e)
    expected = np.array(expected, dtype=np.float64)
    expected *= sum(observed) / expected.sum()
    assert chisquare(observed, expected).pvalue > 1e-3


@pytest.mark.parametrize("proposer", ["drafter", "mtp", "lookup"])
def test_sampled_sequences_follow_the_target(checkpoints, proposer):
    path = checkpoints.qwen3_5 if proposer == "mtp" else checkpoints.llama
    prompt = prompt_ids(path, PROMPTS[0])
    if proposer == "lookup":  # into the loop this model's greedy decode falls in: copies
        prompt += greedy_reference(loaded(path).model, prompt, 12)
    joint = _exact_joint(loaded(path).model, prompt)
    drafter = perturbed(path, scale=0.01) if proposer == "drafter" else None
    counts: Counter = Counter()
    drafted = accepted = 0
    for seed in range(SAMPLES):
        mx.random.seed(seed)
        if proposer == "drafter":
            decoder = drafter_decoder(path, drafter, 2, sampling=SAMPLING)
        elif proposer == "mtp":
            decoder = mtp_decoder(path, 2, sampling=SAMPLING)
        else:
            decoder = lookup_decoder(path, 2, sampling=SAMPLING)
        counts[tuple(run(decoder, prompt, LENGTH))] += 1
        drafted += decoder.stats.drafted
        accepted += decoder.stats.accepted
    if proposer == "lookup":  # a copy of 2 wherever the sampled token was seen before
        assert drafted > SAMPLES / 2
    else:
        assert drafted >= 2 * SAMPLES  # every sample went through a k = 2 round
    if proposer != "mtp":
        assert 0 < accepted < drafted  # both branches of the rule were taken
    _assert_matches(counts, joint, SAMPLES)


@pytest.mark.parametrize("proposal", ["sampled", "deterministic"])
def test_rule_against_fixed_distributions(proposal):
    """The first emitted token is distributed as p, whatever q proposes: drafts drawn
    from q, or fixed ones (a prompt lookup's), whose q is one-hot."""
    rng = np.random.default_rng(0)
    vocab, k, trials = 5, 3, 4000
    p = rng.dirichlet(np.ones(vocab), size=k + 1).astype(np.float32)
    q = rng.dirichlet(np.ones(vocab) * 0.5, size=k).astype(np.float32)
    fixed = mx.array([1, 3, 0], dtype=mx.uint32)
    mx.random.seed(0)
    counts = Counter()
    for _ in range(trials):
        if proposal == "sampled":
            drafts = mx.random.categorical(mx.log(mx.array(q))).astype(mx.uint32)
            _, tokens = verify_sampled(mx.array(p), mx.array(q), drafts)
        else:
            _, tokens = verify_sampled(mx.array(p), one_hot(fixed, vocab), fixed)
        counts[int(tokens[0].item())] += 1
    observed = [counts[t] for t in range(vocab)]
    expected = p[0].astype(np.float64) / p[0].astype(np.float64).sum() * trials
    assert chisquare(observed, expected).pvalue > 1e-3


def test_rule_keeps_every_draft_when_q_equals_p():
    p = mx.array([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5], [0.1, 0.1, 0.8]])
    drafts = mx.array([1, 2], dtype=mx.uint32)
    for seed in range(20):
        mx.random.seed(seed)
        accepted, tokens = verify_sampled(p, p[:2], drafts)
        assert accepted.item() == 2
        assert tokens.tolist()[:2] == [1, 2]
