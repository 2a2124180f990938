"""Continuous batching with speculation: the ragged KV and GatedDeltaNet caches
against mlx-lm's caches, each sequence's greedy output (plain, with a drafter or MTP,
with its own penalties and logprobs) against mlx-lm's own decode of it alone, prompts
read in chunks while rows run, cancels, seeded sequences independent of their batch,
and sampled output distributed as the target's."""

from __future__ import annotations

from collections import Counter

import mlx.core as mx
import numpy as np
import pytest
from mlx_lm.models import llama
from mlx_lm.models.cache import BatchKVCache, KVCache, make_prompt_cache
from test_distribution import LENGTH, SAMPLING, _assert_matches, _exact_joint
from test_penalties import MAX_TOKENS, SETTINGS, mlx_lm_decode

from exo_spec.engine import Mtp
from exo_spec.engine.batch import BatchDecoder, BatchRequest
from exo_spec.engine.batch.batch_cache import BatchCache
from exo_spec.engine.batch.ragged_arrays import RaggedArraysCache
from exo_spec.engine.prompt_lookup import PromptLookup
from exo_spec.engine.sampling import Sampling
from exo_spec.models.mtp import load_mtp
from exo_spec.sampling import Penalties

from decoders import PROMPTS, loaded, perturbed, prompt_ids, tiny_qwen3_next
from reference import greedy_reference

TEXTS = [*PROMPTS, "x", "import os\nimport sys\n\ndef main(argv):\n    return 0\n"]


@pytest.fixture(scope="module")
def close_drafter(checkpoints):
    """Agrees with the target often but not always: rows keep different counts."""
    return perturbed(checkpoints.llama, scale=0.005)


def _logits_alone(model, tokens: list[int]) -> np.ndarray:
    return np.array(model(mx.array([tokens]), cache=make_prompt_cache(model))[0])


def test_ragged_cache_against_mlx_lm(checkpoints):
    """A left-padded prefill, holes, padded writes, compaction, a row leaving and one
    joining: every row's logits stay those of the row decoded alone by mlx-lm's KVCache."""
    model = loaded(checkpoints.llama).model
    prompts = [prompt_ids(checkpoints.llama, t) for t in TEXTS[:3]]
    rng = np.random.default_rng(0)
    batch = BatchCache(model)
    _add(batch, prompts)  # prefilled together, left-padded
    histories = [list(p) for p in prompts]

    def check(logits, fed, real):
        """``fed`` (B, W) went in; row b's last ``real[b]`` columns are its tokens."""
        for b, history in enumerate(histories):
            tokens = fed[b][len(fed[b]) - real[b]:]
            want = _logits_alone(model, history + tokens)[-real[b]:]
            np.testing.assert_allclose(np.array(logits[b, -real[b]:]), want, atol=1e-4)

    # Without holes it is mlx-lm's BatchKVCache, built by mlx-lm's own merge.
    width = 5
    fed = rng.integers(0, 300, (3, width)).tolist()
    theirs = [BatchKVCache.merge([_prefilled(model, p)[i] for p in prompts])
              for i in range(len(model.layers))]
    want = np.array(model(mx.array(fed), cache=theirs))
    got = batch(mx.array(fed))
    np.testing.assert_allclose(np.array(got), want, atol=1e-5)
    check(got, fed, [width] * 3)
    kept = [5, 2, 0]  # a row keeping all, one some, one none of a verify pass
    batch.keep(kept, width)
    histories = [h + f[:n] for h, f, n in zip(histories, fed, kept, strict=True)]

    # Rows of 1, 3 and 2 tokens in one pass, left-padded: the padding is holes too.
    lengths = [1, 3, 2]
    fed = [[0] * (3 - n) + rng.integers(0, 300, n).tolist() for n in lengths]
    batch.pad([3 - n for n in lengths])
    check(batch(mx.array(fed)), fed, lengths)
    histories = [h + f[3 - n:] for h, f, n in zip(histories, fed, lengths, strict=True)]
    batch.keep([3, 2, 2], 3)  # the last two rows drop their newest token
    histories[1].pop()
    histories[2].pop()
    layer = batch.layers[0]
    width, shared = layer._idx, min(layer.invalid)
    assert shared > 0  # every row has holes or padding: compacting reclaims slots
    for c in batch.layers:
        c.compact()
    assert layer._idx == width - shared and layer.holes is None
    fed = rng.integers(0, 300, (3, 2)).tolist()
    check(batch(mx.array(fed)), fed, [2] * 3)
    histories = [h + f for h, f in zip(histories, fed, strict=True)]
    for b, history in enumerate(histories):  # a row extracted holds its tokens only
        assert layer.extract(b).offset == len(history)

    batch.filter([2, 0])
    histories = [histories[2], histories[0]]
    joining = prompt_ids(checkpoints.llama, TEXTS[3])
    _add(batch, [joining])
    histories.append(joining)
    fed = rng.integers(0, 300, (3, 3)).tolist()
    check(batch(mx.array(fed)), fed, [3] * 3)

    with pytest.raises(TypeError, match="keep"):
        batch.layers[0].trim(1)


@pytest.mark.parametrize("hybrid", ["qwen3_5", "qwen3_next"])
def test_hybrid_rows_rewind_alone(checkpoints, hybrid):
    """GatedDeltaNet + attention layers: a left-padded prefill read in chunks shorter
    than the padding, verify passes that keep a different count in every row (each
    row's recurrent state set to its own kept position), a row leaving and one
    joining: every row's logits stay those of the row alone in mlx-lm's own caches."""
    model = loaded(checkpoints.qwen3_5).model if hybrid == "qwen3_5" else tiny_qwen3_next()

    def ids(text: str) -> list[int]:  # within the smaller vocabulary (300) of both
        return [t % 300 for t in prompt_ids(checkpoints.qwen3_5, text)]

    prompts = [ids(t) for t in TEXTS[1:4]]
    batch = BatchCache(model)
    _add(batch, prompts, chunk=4)
    assert sum(isinstance(c, RaggedArraysCache) for c in batch.layers) >= 2
    histories = [list(p) for p in prompts]
    rng = np.random.default_rng(1)

    def verify(width: int, kept: list[int]) -> None:
        fed = rng.integers(0, 300, (len(histories), width)).tolist()
        logits = batch(mx.array(fed))
        for b, history in enumerate(histories):
            want = _logits_alone(model, history + fed[b])[-width:]
            np.testing.assert_allclose(np.array(logits[b]), want, atol=1e-4)
        batch.keep(kept, width)
        for history, tokens, n in zip(histories, fed, kept, strict=True):
            history += tokens[:n]

    verify(5, [5, 2, 1])
    verify(1, [1, 1, 1])  # a plain step: nothing recorded, nothing to rewind
    verify(4, [1, 4, 3])
    batch.filter([2, 0])
    histories = [histories[2], histories[0]]
    joining = ids(TEXTS[0])
    _add(batch, [joining])
    histories.append(joining)
    verify(3, [2, 3, 1])
    verify(2, [2, 2, 2])


def _add(batch: BatchCache, prompts: list[list[int]], chunk: int = 512) -> None:
    feed = batch.read(prompts)
    while not feed.done:
        batch.prefill(feed, chunk)
    batch.join(feed)


def _prefilled(model, prompt: list[int]) -> list[KVCache]:
    cache = [KVCache() for _ in model.layers]
    model(mx.array([prompt]), cache=cache)
    return cache


def _decode(decoder: BatchDecoder, requests: list[BatchRequest], join_at: dict[int, BatchRequest]
            ) -> dict[int, tuple[list[int], str]]:
    """Tokens and finish reason of every sequence; ``join_at``: step -> a request added
    before that step."""
    for r in requests:
        decoder.add(r)
    got: dict[int, list[int]] = {}
    finish = {}
    for step, out in enumerate(decoder.generate(), start=1):
        for e in out:
            got.setdefault(e.sequence, []).extend(e.tokens)
            if e.finish:
                finish[e.sequence] = e.finish.reason
                assert e.stats is not None and e.stats.generation_tokens == len(got[e.sequence])
        if step in join_at:
            decoder.add(join_at[step])
    return {i: (got[i], finish[i]) for i in got}


@pytest.mark.parametrize("k", [0, 1, 2, 3, 4, None])  # 0: no drafter; None: adaptive
def test_greedy_rows_equal_mlx_lm_alone(checkpoints, close_drafter, k):
    """Prompts of different lengths finishing at different times (max_tokens, an
    end-of-sequence token), one joining mid-way: each row is mlx-lm's own decode."""
    target = loaded(checkpoints.llama).model
    prompts = [prompt_ids(checkpoints.llama, t) for t in TEXTS]
    lengths = [24, 37, 9, 30]
    references = [greedy_reference(target, p, n) for p, n in zip(prompts, lengths, strict=True)]
    eos = references[1][20]  # row 1 stops there, and any other row that reaches it
    decoder = BatchDecoder(target, close_drafter if k != 0 else None, eos_token_ids={eos})
    requests = [BatchRequest(p, n, num_draft=k or None)
                for p, n in zip(prompts, lengths, strict=True)]
    got = _decode(decoder, requests[:3], join_at={3: requests[3]})
    for i, reference in enumerate(references):
        expected = reference[: reference.index(eos)] if eos in reference else reference
        assert got[i] == (expected, "stop" if eos in reference else "length"), i
    assert got[1][1] == "stop" and "length" in {reason for _, reason in got.values()}


@pytest.mark.parametrize("proposer", ["none", "mtp", "drafter"])
def test_hybrid_rows_equal_mlx_lm_alone(checkpoints, proposer):
    """A GatedDeltaNet hybrid target decoding plainly, with its MTP head or with a
    drafter model: each greedy row is mlx-lm's own decode of it alone, a seeded sampled
    row what it emits alone. A long prompt joins mid-way and is read a chunk per step
    while the running rows go on emitting every step; a row cancelled while running,
    and one cancelled while read, emit no more."""
    path = checkpoints.qwen3_5
    target = loaded(path).model
    drafter = {"none": None, "mtp": Mtp(load_mtp(path, target), target),
               "drafter": loaded(checkpoints.drafter).model}[proposer]
    k = None if proposer == "none" else 3
    chunk = 8
    prompts = [prompt_ids(path, t) for t in TEXTS[:3]]
    long = prompt_ids(path, TEXTS[3] * 3)
    lengths = [30, 26, 9]
    references = [greedy_reference(target, p, n) for p, n in zip(prompts, lengths, strict=True)]
    sampled = BatchRequest(prompts[1], 12, sampling=Sampling(temp=1.0), seed=3, num_draft=k)
    alone = _decode(BatchDecoder(target, drafter), [sampled], {})[0][0]
    decoder = BatchDecoder(target, drafter, prefill_chunk=chunk)
    ids = [decoder.add(BatchRequest(p, n, num_draft=k))
           for p, n in zip(prompts, lengths, strict=True)]
    ids.append(decoder.add(sampled))
    lengths.append(12)
    got: dict[int, list[int]] = {}
    first_step = {}
    for step, out in enumerate(decoder.generate(), start=1):
        emitted = {e.sequence: e for e in out}
        for e in out:
            first_step.setdefault(e.sequence, step)
            got.setdefault(e.sequence, []).extend(e.tokens)
        if step > 1:  # every running row emits every step, also while the long prompt is read
            running = [i for i in ids if i in got and i != ids[0] and len(got[i]) < lengths[i]]
            assert all(i in emitted for i in running), step
        if step == 2:
            long_id = decoder.add(BatchRequest(long, 6, num_draft=k))
            dropped = decoder.add(BatchRequest(long[:20], 6, num_draft=k))
        if step == 3:
            assert decoder.cancel(dropped).generation_tokens == 0  # cancelled while read
            assert decoder.cancel(ids[0]).generation_tokens == len(got[ids[0]])
    # Read a chunk per step from step 3 on, emitting its first token as it joins.
    assert first_step[long_id] == 2 + -(-len(long) // chunk)
    assert dropped not in got
    assert got[long_id] == greedy_reference(target, long, 6)
    assert got[ids[0]] == references[0][: len(got[ids[0]])] and len(got[ids[0]]) < lengths[0]
    for i in ids[1:3]:
        assert got[i] == references[i], i
    assert got[ids[3]] == alone


def test_penalties_and_logprobs_per_row(checkpoints, close_drafter):
    """Each row's own penalties and logit bias, at its own k (its drafts before each
    verify row as history): every row is mlx-lm's generate_step of it alone with those
    logits_processors, and its logprobs are that decode's processed log-softmax."""
    path = checkpoints.llama
    prompts = [prompt_ids(path, t) for t in TEXTS]
    configs = ["all", "bias", "long", None]
    decoder = BatchDecoder(loaded(path).model, close_drafter)
    for prompt, config, k in zip(prompts, configs, [2, 4, None, 3], strict=True):
        decoder.add(BatchRequest(prompt, MAX_TOKENS, num_draft=k, logprobs=None if config == "bias"
                                 else 3, penalties=SETTINGS[config] if config else Penalties()))
    tokens: dict[int, list[int]] = {}
    logprobs: dict[int, list] = {}
    for out in decoder.generate():
        for e in out:
            tokens.setdefault(e.sequence, []).extend(e.tokens)
            logprobs.setdefault(e.sequence, []).extend(e.logprobs or [])
    for i, (prompt, config) in enumerate(zip(prompts, configs, strict=True)):
        want, want_logprobs = mlx_lm_decode(path, tuple(prompt), config)
        assert tokens[i] == want, config
        if config == "bias":
            assert logprobs[i] == []
            continue
        assert [t.token_id for t in logprobs[i]] == want
        for got, dist in zip(logprobs[i], want_logprobs, strict=True):
            assert got.logprob == pytest.approx(float(dist[got.token_id]), abs=1e-4)
            assert [t for t, _ in got.top] == np.argsort(-dist)[:3].tolist()


def test_seeded_row_ignores_its_batch(checkpoints, close_drafter):
    """A seeded sampled sequence at a fixed k emits the same tokens alone and among
    others (which draft longer, sample otherwise, and join and leave around it)."""
    target = loaded(checkpoints.llama).model
    prompts = [prompt_ids(checkpoints.llama, t) for t in TEXTS]
    sampling = Sampling(temp=1.0, top_p=0.9)

    def seeded(seed):
        return BatchRequest(prompts[0], 30, sampling=sampling, seed=seed, num_draft=2)

    alone = _decode(BatchDecoder(target, close_drafter), [seeded(5)], {})[0]
    others = [BatchRequest(prompts[1], 12, num_draft=4),
              BatchRequest(prompts[2], 40, sampling=Sampling(temp=0.7), seed=1, num_draft=3)]
    decoder = BatchDecoder(target, close_drafter)
    batched = _decode(decoder, [others[0], seeded(5)], {2: others[1]})[1]
    assert batched == alone
    other_seed = _decode(BatchDecoder(target, close_drafter), [seeded(6)], {})[0]
    assert other_seed != alone


def test_sampled_rows_follow_the_target(checkpoints):
    """Rows of a batch of sampled sequences at k = 2, beside a greedy row drafting 4
    (so theirs ignore drafts past their own k), are distributed as the target's samples."""
    path = checkpoints.llama
    prompt = prompt_ids(path, PROMPTS[0])
    target = loaded(path).model
    joint = _exact_joint(target, prompt)
    decoder = BatchDecoder(target, perturbed(path, scale=0.01))
    rows, batches = 20, 50
    other = BatchRequest(prompt_ids(path, PROMPTS[1]), LENGTH + 4, num_draft=4)
    counts: Counter = Counter()
    drafted = accepted = 0
    for batch in range(batches):
        ids = [decoder.add(BatchRequest(prompt, LENGTH, sampling=SAMPLING,
                                        seed=batch * rows + i, num_draft=2))
               for i in range(rows)]
        decoder.add(other)
        got = {i: [] for i in ids}
        for out in decoder.generate():
            for e in out:
                if e.sequence in got:
                    got[e.sequence] += e.tokens
                    if e.finish:
                        drafted += e.stats.drafted
                        accepted += e.stats.accepted
        counts.update(tuple(tokens) for tokens in got.values())
    assert drafted >= 2 * rows * batches  # every sample went through a k = 2 round
    assert 0 < accepted < drafted
    _assert_matches(counts, joint, rows * batches)


def test_refusals(checkpoints):
    """What it cannot decode row by row is refused in one clear line."""
    hybrid = loaded(checkpoints.qwen3_5).model
    target = loaded(checkpoints.llama).model
    sliding = llama.Model(llama.ModelArgs(
        model_type="llama", hidden_size=32, num_hidden_layers=2, intermediate_size=64,
        num_attention_heads=2, rms_norm_eps=1e-5, vocab_size=300, num_key_value_heads=2,
        layer_types=["sliding_attention", "full_attention"], sliding_window=8))
    with pytest.raises(ValueError, match="KVCache and GatedDeltaNet layers only.*Rotating"):
        BatchDecoder(sliding)
    with pytest.raises(ValueError, match="drafter.*KVCache layers.*ArraysCache"):
        BatchDecoder(target, drafter=hybrid)
    with pytest.raises(TypeError, match="drafter model .* or the target's MTP head only, not "
                                        "a PromptLookup"):
        BatchDecoder(target, drafter=PromptLookup())
    with pytest.raises(ValueError, match="num_draft needs a drafter"):
        BatchDecoder(target).add(BatchRequest([1], 4, num_draft=2))
    with pytest.raises(ValueError, match="logit_bias token id 5000 is outside"):
        BatchDecoder(target).add(BatchRequest([1], 4, penalties=Penalties(logit_bias={5000: 1})))
    with pytest.raises(ValueError, match="logprobs must be an integer in 0..20"):
        BatchRequest([1], 4, logprobs=21)
    with pytest.raises(ValueError, match="prefill_chunk must be >= 1"):
        BatchDecoder(target, prefill_chunk=0)
    with pytest.raises(ValueError, match="num_draft must be >= 1"):
        BatchRequest([1], 4, num_draft=0)
    with pytest.raises(ValueError, match="prompt is empty"):
        BatchRequest([], 4)
