"""DFlash block drafters: the published layout, pairing and selection, the engine's
invariants with one (greedy parity, the sampled distribution, the prefix cache), and
training one."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten
from test_distribution import LENGTH, SAMPLES, SAMPLING, _assert_matches, _exact_joint
from test_prefix_cache_decode import MAX_TOKENS as TURN_TOKENS
from test_prefix_cache_decode import _assert_same_state, _conversation

from exo_spec.decoder_factory import make_decoder
from exo_spec.engine import (
    AdaptiveDraftLength,
    CachedModel,
    FixedDraftLength,
    Sampling,
    SpecDecoder,
)
from exo_spec.engine.dflash import DFlash
from exo_spec.model_set import load_models
from exo_spec.models import dflash, synthetic
from exo_spec.models.load import ModelLoadError, load
from exo_spec.models.synthetic_dflash import write_dflash
from exo_spec.proposer_choice import choose_group_proposer
from exo_spec.spec_mode import SpecMode
from exo_spec.train.dflash import train_dflash
from exo_spec.train.distill import greedy_continuations
from exo_spec.train.sizes import Schedule
from exo_spec.train.trainer import TrainResult

from decoders import (
    PROMPTS,
    always_pipelined,
    assert_same_caches,
    loaded,
    prompt_ids,
    run,
)
from reference import greedy_reference

MAX_TOKENS = 32
BLOCK = 5  # tokens per block: at most 4 drafts a round


@dataclass(frozen=True)
class Drafters:
    trained: Path  # trained for checkpoints.llama on its greedy continuations
    training: TrainResult
    qwen3_5: Path  # random weights, for the hybrid checkpoints.qwen3_5
    published: Path  # written by hand in the published layout, for checkpoints.llama


@pytest.fixture(scope="module")
def drafters(checkpoints, tmp_path_factory) -> Drafters:
    root = tmp_path_factory.mktemp("dflash")
    target = load(str(checkpoints.llama))
    text = np.array(target.tokenizer.encode(synthetic.corpus_text()), dtype=np.int32)
    data = greedy_continuations(target.model, text, count=64, prompt_len=8, new_tokens=40,
                                seed=0, separator=0)
    config = json.loads((checkpoints.llama / "config.json").read_text())
    model, drafter_config, result = train_dflash(
        target.model, config, data,
        # Enough steps that, sampling at temperature 1, some drafts are kept.
        Schedule(max_steps=150, lr=3e-3, warmup_steps=5, batch_size=8, seq_len=32),
        block_size=BLOCK, target_layer_ids=[0, 1], mask_token_id=config["vocab_size"] - 1,
        log=lambda line: None)
    return Drafters(
        trained=dflash.save(root / "trained", model, drafter_config),
        training=result,
        qwen3_5=write_dflash(root / "qwen3_5", checkpoints.qwen3_5, block_size=BLOCK, seed=3),
        published=_write_published_layout(root / "published", checkpoints.llama),
    )


def _write_published_layout(out: Path, target_dir: Path) -> Path:
    """A drafter written independently of our model class: config keys and tensor names,
    shapes and dtypes as z-lab's Qwen3-8B-DFlash-b16 ships them (bf16, no prefix, no
    embeddings, LM head or tokenizer), scaled down."""
    t = json.loads((target_dir / "config.json").read_text())
    hidden, heads, kv_heads, head_dim, inner, layers = t["hidden_size"], 4, 2, 16, 96, 2
    taps = [0, 1]
    config = {
        "architectures": ["DFlashDraftModel"],
        "auto_map": {"AutoModel": "dflash.DFlashDraftModel"},
        "attention_bias": False,
        "attention_dropout": 0.0,
        "block_size": 4,
        "dflash_config": {"mask_token_id": t["vocab_size"] - 2, "target_layer_ids": taps},
        "dtype": "bfloat16",
        "head_dim": head_dim,
        "hidden_act": "silu",
        "hidden_size": hidden,
        "initializer_range": 0.02,
        "intermediate_size": inner,
        "layer_types": ["full_attention"] * layers,
        "max_position_embeddings": 40960,
        "max_window_layers": layers,
        "model_type": "qwen3",
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "num_key_value_heads": kv_heads,
        "num_target_layers": t["num_hidden_layers"],
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": 1000000,
        "sliding_window": None,
        "tie_word_embeddings": False,
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": t["vocab_size"],
    }
    rng = np.random.default_rng(0)

    def w(*shape, scale=0.05):
        return mx.array(rng.normal(0, scale, shape), dtype=mx.bfloat16)

    def norm(n):
        return mx.array(1 + rng.normal(0, 0.1, (n,)), dtype=mx.bfloat16)

    tensors = {"fc.weight": w(hidden, len(taps) * hidden), "hidden_norm.weight": norm(hidden),
               "norm.weight": norm(hidden)}
    for i in range(layers):
        p = f"layers.{i}."
        tensors.update({
            p + "input_layernorm.weight": norm(hidden),
            p + "post_attention_layernorm.weight": norm(hidden),
            p + "self_attn.q_proj.weight": w(heads * head_dim, hidden),
            p + "self_attn.k_proj.weight": w(kv_heads * head_dim, hidden),
            p + "self_attn.v_proj.weight": w(kv_heads * head_dim, hidden),
            p + "self_attn.o_proj.weight": w(hidden, heads * head_dim),
            p + "self_attn.q_norm.weight": norm(head_dim),
            p + "self_attn.k_norm.weight": norm(head_dim),
            p + "mlp.gate_proj.weight": w(inner, hidden),
            p + "mlp.up_proj.weight": w(inner, hidden),
            p + "mlp.down_proj.weight": w(hidden, inner),
        })
    out.mkdir(parents=True)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    mx.save_safetensors(str(out / "model.safetensors"), tensors, metadata={"format": "pt"})
    return out


def _decoder(target_path: Path, drafter: dflash.Model, k: int | None,
             sampling: Sampling = Sampling(), **kwargs) -> SpecDecoder:
    target = loaded(target_path).model
    length = FixedDraftLength(k) if k else AdaptiveDraftLength(drafter.args.block_size - 1)
    return SpecDecoder(CachedModel(target, taps=drafter.target_layer_ids),
                       DFlash(drafter, target), sampling=sampling, draft_length=length,
                       pipelining=always_pipelined(), **kwargs)


def _assert_context_in_sync(path: Path, drafter: dflash.Model, decoder: SpecDecoder,
                            prompt: list[int]) -> None:
    """After a job's rounds (kept, rejected, taken back), the drafter's context is what
    a fresh drafter reading the same sequence's states at once holds."""
    decoder.proposer.propose(1, Sampling())  # feeds what the last commits queued
    state = decoder.proposer.state()
    seen = state["seen"]
    model = loaded(path).model
    tokens = prompt + greedy_reference(model, prompt, seen + 1 - len(prompt))
    reference = DFlash(drafter, model)
    _, hidden = CachedModel(model, taps=drafter.target_layer_ids).prefill(
        mx.array(tokens[:seen], dtype=mx.uint32), hidden=True)
    reference.prefill(mx.array(tokens[: seen + 1], dtype=mx.uint32), hidden)
    assert_same_caches(state["cache"], reference.cache, rtol=1e-4, atol=1e-4)


def test_training_reduces_the_loss(drafters):
    first, final = drafters.training.first_loss[0], drafters.training.final_loss[0]
    assert final < first - 0.3, (first, final)


@pytest.mark.parametrize("target", ["llama", "qwen3_5"])
def test_greedy_matches_mlx_lm(checkpoints, drafters, target):
    """k = 1..4 and adaptive, every round started ahead where it can be: the output is
    mlx-lm's greedy decode, through kept drafts, rejections and taken-back rounds."""
    path = getattr(checkpoints, target)
    drafter = dflash.load(drafters.trained if target == "llama" else drafters.qwen3_5)[0]
    drafted = accepted = taken_back = 0
    for text in PROMPTS:
        prompt = prompt_ids(path, text)
        want = greedy_reference(loaded(path).model, prompt, MAX_TOKENS)
        for k in (1, 2, 3, 4, None):
            decoder = _decoder(path, drafter, k)
            assert run(decoder, prompt, MAX_TOKENS) == want, (text, k)
            assert decoder.stats.mode == "dflash"
            drafted += decoder.stats.drafted
            accepted += decoder.stats.accepted
            taken_back += decoder.rounds_taken_back
            _assert_context_in_sync(path, drafter, decoder, prompt)
    assert drafted and taken_back
    if target == "llama":  # the trained drafter's drafts are kept, often enough to matter
        assert accepted > 0.1 * drafted


def test_sampled_sequences_follow_the_target(checkpoints, drafters):
    path = checkpoints.llama
    prompt = prompt_ids(path, PROMPTS[0])
    joint = _exact_joint(loaded(path).model, prompt)
    drafter = dflash.load(drafters.trained)[0]
    counts: Counter = Counter()
    drafted = accepted = 0
    for seed in range(SAMPLES):
        mx.random.seed(seed)
        decoder = _decoder(path, drafter, 2, sampling=SAMPLING)
        counts[tuple(run(decoder, prompt, LENGTH))] += 1
        drafted += decoder.stats.drafted
        accepted += decoder.stats.accepted
    assert drafted >= 2 * SAMPLES
    assert 0 < accepted < drafted  # both branches of the rule were taken
    _assert_matches(counts, joint, SAMPLES)


def test_next_turn_from_the_prefix_cache(checkpoints, drafters):
    """The drafter's context comes along with a prefix-cache hit: the same tokens and
    the same drafter state as a job that read the whole prompt."""
    path = checkpoints.llama
    drafter = dflash.load(drafters.trained)[0]
    p2, (got, got_state), (want, want_state), _, _ = _conversation(
        path, lambda cache=None: _decoder(path, drafter, 2, prefix_cache=cache))
    assert got == want == greedy_reference(loaded(path).model, p2, TURN_TOKENS)
    _assert_same_state(got_state, want_state)


def test_published_layout_loads_and_decodes(checkpoints, drafters):
    target = load(str(checkpoints.llama))
    models = load_models(str(checkpoints.llama), str(drafters.published))
    assert models.mode == "dflash"
    stored = mx.load(str(drafters.published / "model.safetensors"))
    params = dict(tree_flatten(models.drafter.model.parameters()))
    assert params.keys() == stored.keys()
    for name, value in stored.items():
        assert params[name].dtype == mx.bfloat16, name
        assert mx.array_equal(params[name], value), name
    assert models.drafter.model.args.block_size == 4
    assert models.drafter.tokenizer is models.target.tokenizer  # it ships none
    prompt = prompt_ids(checkpoints.llama, PROMPTS[1])
    want = greedy_reference(target.model, prompt, MAX_TOKENS)
    decoder = make_decoder(models, sampling=Sampling())
    assert run(decoder, prompt, MAX_TOKENS) == want
    assert decoder.stats.mode == "dflash" and decoder.draft_length.max_k == 3
    assert run(make_decoder(models, sampling=Sampling(), num_draft=3), prompt,
               MAX_TOKENS) == want
    with pytest.raises(ValueError, match="--num-draft 4 is more than DFlash drafter"):
        make_decoder(models, sampling=Sampling(), num_draft=4)


def test_refusals(checkpoints, drafters, tmp_path):
    """One line each: across ranks, another target's drafter, configs not supported."""
    with pytest.raises(ModelLoadError, match="DFlash drafter .* not supported across ranks"):
        choose_group_proposer(str(checkpoints.llama), checkpoints.llama,
                              str(drafters.published), SpecMode.AUTO)
    with pytest.raises(ModelLoadError, match="does not fit target .*hidden size 64, the "
                                             "target has 32"):
        load_models(str(checkpoints.drafter), str(drafters.published))
    with pytest.raises(ModelLoadError, match="made for a target of 2 layers, this one has 4"):
        load_models(str(checkpoints.qwen3_5), str(drafters.trained))
    config = json.loads((drafters.published / "config.json").read_text())
    for change, says in [({"architectures": ["DFlash2DraftModel"]}, "DFlash2 drafters"),
                         ({"layer_types": ["sliding_attention"] * 2}, "sliding-window"),
                         ({"dflash_config": {"mask_token_id": 3}}, "target_layer_ids")]:
        bad = tmp_path / says
        bad.mkdir()
        (bad / "config.json").write_text(json.dumps({**config, **change}))
        (bad / "model.safetensors").symlink_to(drafters.published / "model.safetensors")
        with pytest.raises(ModelLoadError, match=says) as refused:
            load_models(str(checkpoints.llama), str(bad))
        assert "\n" not in str(refused.value)
