"""At temperature > 0 speculative output is distributed exactly as the target's own samples."""

from __future__ import annotations

from collections import Counter

import mlx.core as mx
import numpy as np
import pytest
from scipy.stats import chisquare

from exo_spec.engine.sampling import Sampling, probs
from exo_spec.engine.verify import verify_sampled

from decoders import PROMPTS, drafter_decoder, loaded, mtp_decoder, perturbed, prompt_ids, run

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


@pytest.mark.parametrize("proposer", ["drafter", "mtp"])
def test_sampled_sequences_follow_the_target(checkpoints, proposer):
    path = checkpoints.llama if proposer == "drafter" else checkpoints.qwen3_5
    prompt = prompt_ids(path, PROMPTS[0])
    joint = _exact_joint(loaded(path).model, prompt)
    drafter = perturbed(path, scale=0.01) if proposer == "drafter" else None
    counts: Counter = Counter()
    drafted = accepted = 0
    for seed in range(SAMPLES):
        mx.random.seed(seed)
        if proposer == "drafter":
            decoder = drafter_decoder(path, drafter, 2, sampling=SAMPLING)
        else:
            decoder = mtp_decoder(path, 2, sampling=SAMPLING)
        counts[tuple(run(decoder, prompt, LENGTH))] += 1
        drafted += decoder.stats.drafted
        accepted += decoder.stats.accepted
    assert drafted >= 2 * SAMPLES  # every sample went through a k = 2 round
    if proposer == "drafter":
        assert 0 < accepted < drafted  # both branches of the rule were taken
    _assert_matches(counts, joint, SAMPLES)


def test_rule_against_fixed_distributions():
    """The first emitted token is distributed as p, whatever q proposes."""
    rng = np.random.default_rng(0)
    vocab, k, trials = 5, 3, 4000
    p = rng.dirichlet(np.ones(vocab), size=k + 1).astype(np.float32)
    q = rng.dirichlet(np.ones(vocab) * 0.5, size=k).astype(np.float32)
    mx.random.seed(0)
    counts = Counter()
    for _ in range(trials):
        drafts = mx.random.categorical(mx.log(mx.array(q))).astype(mx.uint32)
        _, tokens = verify_sampled(mx.array(p), mx.array(q), drafts)
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
