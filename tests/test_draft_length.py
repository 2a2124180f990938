"""The adaptive draft-length policy, driven by simulated rounds."""

from __future__ import annotations

import pytest

from exo_spec.spec import AdaptiveDraftLength, FixedDraftLength

PLAIN_S = 0.010


def simulate(policy: AdaptiveDraftLength, acceptance: float, draft_cost: float, tokens: int):
    """Feed the policy rounds whose drafts are kept at the given per-token rate
    (deterministically: the expected prefix) and whose time follows the cost model."""
    ks, produced = [], 0
    while produced < tokens:
        k = policy.next()
        ks.append(k)
        accepted = 0
        while accepted < k and (accepted + 1) * acceptance >= accepted + 0.5:
            accepted += 1
        policy.observe(k, accepted, PLAIN_S * (1 + draft_cost * k))
        produced += accepted + 1
    return ks


def test_useless_drafter_falls_back_to_plain_with_rare_probes():
    ks = simulate(AdaptiveDraftLength(), acceptance=0.0, draft_cost=0.3, tokens=1000)
    spec_rounds = [k for k in ks if k]
    assert len(spec_rounds) <= 12  # the first guesses, then probes backing off
    assert ks[-200:].count(0) >= 198
    # Every probe costs 1 + 0.3 plain steps for one token: under 1% overall.
    extra = sum(0.3 * k for k in spec_rounds)
    assert extra / len(ks) < 0.01


def test_good_drafter_drafts_long():
    ks = simulate(AdaptiveDraftLength(max_k=4), acceptance=0.95, draft_cost=0.05, tokens=400)
    assert ks[-20:] == [4] * 20


def test_expensive_drafter_is_not_used_even_when_right():
    ks = simulate(AdaptiveDraftLength(), acceptance=0.5, draft_cost=2.0, tokens=400)
    assert ks[-50:].count(0) >= 45


def test_fixed_length():
    assert FixedDraftLength(3).next() == 3
    with pytest.raises(ValueError):
        FixedDraftLength(0)
