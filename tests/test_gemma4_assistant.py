"""Gemma 4 assistant drafters: loading, heads, K/V reading, pairing, and the
engine's invariants (greedy parity, sampled distribution) with the assistant."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten
from mlx_lm.models.cache import KVCache, RotatingKVCache
from scipy.stats import chisquare

from exo_spec import cli
from exo_spec.decoder_factory import make_decoder
from exo_spec.engine import CachedModel, FixedDraftLength, Sampling, SpecDecoder
from exo_spec.engine.assistant import Gemma4Assistant, read_kv, shared_kv_layers
from exo_spec.engine.pipelining import RoundPipelining
from exo_spec.engine.sampling import probs
from exo_spec.model_set import load_models
from exo_spec.models import gemma4_assistant, synthetic
from exo_spec.models.cards import CARD_FILE
from exo_spec.models.heads import body_and_head
from exo_spec.models.load import ModelLoadError, load
from exo_spec.models.synthetic_gemma4 import write_gemma4_assistant, write_gemma4_text
from exo_spec.prompt import encode_prompt
from exo_spec.spec_mode import SpecMode

from reference import greedy_reference

PROMPT = "def heappush(heap, item):"
MAX_TOKENS = 24  # three times the fixture's sliding window: the rotating caches wrap


@dataclass(frozen=True)
class Pair:
    target: Path
    centroid: Path  # assistant with the ordered-embedding (centroid) head
    tied: Path  # assistant with the plain tied-embedding head
    published: Path  # assistant written by hand in the released on-disk layout
    wide_target: Path  # a Gemma 4 target of another width
    wide_assistant: Path  # its assistant
    foreign: Path  # an assistant for our target with another tokenizer


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> Pair:
    root = tmp_path_factory.mktemp("gemma4")
    tok = root / "tokenizer"
    synthetic.write_tokenizer(tok)
    target = write_gemma4_text(root / "target", tok, seed=10)
    wide = write_gemma4_text(root / "wide-target", tok, seed=12, hidden_size=48)
    other_tok = root / "other-tokenizer"
    synthetic.write_tokenizer(other_tok, vocab_size=400)
    foreign = write_gemma4_assistant(root / "foreign", target, seed=14)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(other_tok / name, foreign / name)
    return Pair(
        target=target,
        centroid=write_gemma4_assistant(root / "centroid", target, seed=11),
        tied=write_gemma4_assistant(root / "tied", target, ordered_embeddings=False, seed=13),
        published=_write_published_layout(root / "published", target),
        wide_target=wide,
        wide_assistant=write_gemma4_assistant(root / "wide-assistant", wide, seed=15),
        foreign=foreign,
    )


def _write_published_layout(out: Path, target_dir: Path) -> Path:
    """An assistant written independently of our model class: config keys and tensor
    names, shapes and dtypes as the released gemma-4-E4B-it-assistant ships them
    (bf16 weights, int64 token ordering, no lm_head.weight, no tokenizer), scaled down."""
    t = json.loads((target_dir / "config.json").read_text())
    hidden, heads, vocab, centroids = 32, 2, t["vocab_size"], 8
    config = {
        "architectures": ["Gemma4AssistantForCausalLM"],
        "model_type": "gemma4_assistant",
        "backbone_hidden_size": t["hidden_size"],
        "num_centroids": centroids,
        "centroid_intermediate_top_k": 2,
        "use_ordered_embeddings": True,
        "eos_token_id": [t["eos_token_id"]],
        "dtype": "bfloat16",
        "text_config": {
            "model_type": "gemma4_text",
            "hidden_size": hidden,
            "intermediate_size": 48,
            "num_hidden_layers": 4,
            "num_attention_heads": heads,
            "num_key_value_heads": t["num_key_value_heads"],
            "head_dim": t["head_dim"],
            "global_head_dim": t["global_head_dim"],
            "num_kv_shared_layers": 4,
            "hidden_size_per_layer_input": 0,
            "vocab_size": vocab,
            "vocab_size_per_layer_input": vocab,
            "sliding_window": t["sliding_window"],
            "rms_norm_eps": 1e-06,
            "final_logit_softcapping": None,
            "layer_types": ["sliding_attention"] * 3 + ["full_attention"],
            "rope_parameters": {
                "full_attention": {"partial_rotary_factor": 0.25, "rope_theta": 1000000.0,
                                   "rope_type": "proportional"},
                "sliding_attention": {"rope_theta": 10000.0, "rope_type": "default"},
            },
        },
    }
    rng = np.random.default_rng(0)

    def w(*shape, scale=0.05):
        return mx.array(rng.normal(0, scale, shape), dtype=mx.bfloat16)

    tensors = {
        "masked_embedding.centroids.weight": w(centroids, hidden),
        "masked_embedding.token_ordering": mx.array(rng.permutation(vocab), dtype=mx.int64),
        "model.embed_tokens.weight": w(vocab, hidden, scale=0.5),
        "pre_projection.weight": w(hidden, 2 * t["hidden_size"]),
        "post_projection.weight": w(t["hidden_size"], hidden),
        "model.norm.weight": w(hidden, scale=0.1) + 1,
    }
    for i, kind in enumerate(config["text_config"]["layer_types"]):
        d = t["global_head_dim"] if kind == "full_attention" else t["head_dim"]
        p = f"model.layers.{i}."
        for norm in ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                     "post_feedforward_layernorm"):
            tensors[p + norm + ".weight"] = w(hidden, scale=0.1) + 1
        tensors[p + "layer_scalar"] = w(1, scale=0.1) + 1
        tensors[p + "mlp.gate_proj.weight"] = w(48, hidden)
        tensors[p + "mlp.up_proj.weight"] = w(48, hidden)
        tensors[p + "mlp.down_proj.weight"] = w(hidden, 48)
        tensors[p + "self_attn.q_proj.weight"] = w(heads * d, hidden)
        tensors[p + "self_attn.q_norm.weight"] = w(d, scale=0.1) + 1
        tensors[p + "self_attn.o_proj.weight"] = w(hidden, heads * d)
    out.mkdir(parents=True)
    (out / "config.json").write_text(json.dumps(config))
    mx.save_safetensors(str(out / "model.safetensors"), tensors, metadata={"format": "pt"})
    return out


def _generate_json(capsys, target: Path, assistant: Path, k: int, **flags) -> dict:
    argv = ["generate", "--model", str(target), "--draft-model", str(assistant), "--prompt",
            PROMPT, "--max-tokens", str(MAX_TOKENS), "--num-draft", str(k), "--json"]
    for flag, value in flags.items():
        argv += [f"--{flag.replace('_', '-')}", str(value)]
    assert cli.main(argv) == 0
    return json.loads(capsys.readouterr().out)


def _reference(target: Path, max_tokens: int = MAX_TOKENS) -> list[int]:
    loaded = load(str(target))
    return greedy_reference(loaded.model, encode_prompt(loaded.tokenizer, PROMPT), max_tokens)


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_cli_greedy_equals_target_decode(pair, capsys, k):
    result = _generate_json(capsys, pair.target, pair.centroid, k)
    assert result["tokens"] == _reference(pair.target)
    assert result["stats"]["mode"] == "assistant"
    assert result["stats"]["drafted"] > 0


@pytest.mark.parametrize("which", ["tied", "published"])
def test_other_heads_keep_greedy_parity(pair, which):
    models = load_models(str(pair.target), str(getattr(pair, which)))
    assert models.mode == "assistant"
    decoder = make_decoder(models, sampling=Sampling(), num_draft=3)
    prompt = encode_prompt(models.target.tokenizer, PROMPT)
    out = [t for chunk in decoder.generate(prompt, MAX_TOKENS) for t in chunk]
    assert out == _reference(pair.target)
    assert decoder.stats.drafted > 0


def test_published_layout_loads_as_released(pair):
    model, _ = gemma4_assistant.load(pair.published)
    names = dict(tree_flatten(model.parameters()))
    assert "lm_head.weight" not in names
    assert model.masked_embedding.token_ordering.dtype == mx.int32
    assert model.model.layers[3].self_attn.head_dim == 32  # full attention: global head dim
    assert not hasattr(model.model.layers[0].self_attn, "k_proj")
    assert model.model.embed_tokens.weight.dtype == mx.bfloat16


def test_centroid_head_against_full_vocabulary(pair):
    model, _ = gemma4_assistant.load(pair.centroid)
    head = model.masked_embedding
    h = mx.random.normal((3, 32), key=mx.random.key(0))
    got = np.array(model.logits(h))
    table = np.array(model.model.embed_tokens.weight)
    full = np.array(h) @ table.T
    scores = np.array(head.centroids(h))
    clusters = np.array(head.token_ordering).reshape(head.num_centroids, -1)
    for row in range(3):
        top = np.argsort(-scores[row])[: head.top_k]
        chosen = clusters[top].ravel()
        expected = np.full(full.shape[1], full[row, chosen].min() - 1)
        expected[chosen] = full[row, chosen]
        np.testing.assert_allclose(got[row], expected, rtol=1e-5, atol=1e-5)
        assert set(np.flatnonzero(got[row] > expected.min())) == set(chosen)


def test_tied_head_against_full_vocabulary(pair):
    model, _ = gemma4_assistant.load(pair.tied)
    h = mx.random.normal((3, 32), key=mx.random.key(1))
    expected = np.array(h) @ np.array(model.model.embed_tokens.weight).T
    np.testing.assert_allclose(np.array(model.logits(h)), expected, rtol=1e-5, atol=1e-5)


def test_drafts_read_the_kv_a_full_history_gives(pair):
    """After a decode whose sliding caches wrapped, were trimmed and restored, and whose
    rounds were started ahead of the previous read, its output is the target's greedy
    decode and a draft step equals one computed from plain full-length caches of the
    accepted tokens."""
    target = load(str(pair.target))
    assistant, _ = gemma4_assistant.load(pair.centroid)
    cached = CachedModel(target.model)
    proposer = Gemma4Assistant(assistant, cached)
    decoder = SpecDecoder(cached, proposer, draft_length=FixedDraftLength(3),
                          pipelining=RoundPipelining(forced=True))
    prompt = encode_prompt(target.tokenizer, PROMPT)
    out = [t for chunk in decoder.generate(prompt, MAX_TOKENS) for t in chunk]
    assert out == _reference(pair.target)
    assert decoder.rounds_pipelined > 0
    position = cached.cache[0].offset
    window = target.model.args.sliding_window
    assert any(isinstance(c, RotatingKVCache) and c.offset > c.max_size for c in cached.cache)
    got, _ = proposer.step(proposer._token, proposer._hidden[None], proposer.shared_kv(), position)

    fed = mx.array((prompt + out)[:position])
    plain = [KVCache() for _ in cached.cache]
    hidden = body_and_head(target.model)[0](fed[None], cache=plain)
    layers = shared_kv_layers(target.model.args)
    full = plain[layers["full_attention"]]
    sliding = plain[layers["sliding_attention"]]
    in_window = mx.arange(position) > position - window
    shared = {
        "full_attention": read_kv(full, None),
        "sliding_attention": (*read_kv(sliding, None)[:2], in_window),
    }
    token = mx.array(out[-1:], dtype=mx.uint32)
    expected, _ = proposer.step(token, hidden[:, -1:], shared, position)
    np.testing.assert_allclose(np.array(got), np.array(expected), rtol=1e-4, atol=1e-4)

    shared["sliding_attention"] = (*shared["sliding_attention"][:2], None)
    unwindowed, _ = proposer.step(token, hidden[:, -1:], shared, position)
    assert not np.allclose(np.array(unwindowed), np.array(expected), rtol=1e-4, atol=1e-4)


# The random assistant's top 4 rarely meets the target's, so this mostly checks the
# rejection branch; the acceptance branch is the one the other proposers' tests cover.
SAMPLING = Sampling(temp=1.0, top_k=4)
LENGTH = 3  # the prompt pass's token, then one round drafting one token
SAMPLES = 1500


def test_sampled_sequences_follow_the_target(pair):
    target = load(str(pair.target))
    assistant, _ = gemma4_assistant.load(pair.centroid)
    prompt = target.tokenizer.encode(PROMPT)
    joint = {(): 1.0}
    for _ in range(LENGTH):
        grown = {}
        for prefix, p in joint.items():
            logits = target.model(mx.array([prompt + list(prefix)]))[0, -1:]
            dist = np.array(probs(logits, SAMPLING)[0], dtype=np.float64)
            for t in np.flatnonzero(dist > 0):
                grown[prefix + (int(t),)] = p * dist[t]
        joint = grown
    counts: Counter = Counter()
    drafted = 0
    for seed in range(SAMPLES):
        mx.random.seed(seed)
        cached = CachedModel(target.model)
        decoder = SpecDecoder(cached, Gemma4Assistant(assistant, cached), sampling=SAMPLING,
                              draft_length=FixedDraftLength(2))
        counts[tuple(t for chunk in decoder.generate(prompt, LENGTH) for t in chunk)] += 1
        drafted += decoder.stats.drafted
    assert drafted == SAMPLES
    assert set(counts) <= set(joint), "sampled a sequence the target cannot produce"
    cells = sorted(joint, key=joint.get, reverse=True)
    frequent = [c for c in cells if joint[c] * SAMPLES >= 5]
    rare = [c for c in cells if joint[c] * SAMPLES < 5]  # pooled so every bin expects >= 5
    bins = [[c] for c in frequent] + ([rare] if rare else [])
    observed = [sum(counts[c] for c in b) for b in bins]
    expected = np.array([sum(joint[c] for c in b) for b in bins])
    assert chisquare(observed, expected * SAMPLES / expected.sum()).pvalue > 1e-3


def test_mismatched_width_is_refused(pair, capsys):
    with pytest.raises(ModelLoadError, match="hidden size 48, the target has 64"):
        load_models(str(pair.target), str(pair.wide_assistant))
    argv = ["generate", "--model", str(pair.target), "--draft-model", str(pair.wide_assistant),
            "--prompt", PROMPT, "--json"]
    assert cli.main(argv) == 2
    assert "does not fit target" in capsys.readouterr().err


def test_mismatched_tokenizer_is_refused(pair):
    with pytest.raises(ModelLoadError, match="vocabulary"):
        load_models(str(pair.target), str(pair.foreign))


def test_non_gemma_target_is_refused(pair, tmp_path):
    llama = synthetic.write_llama(tmp_path / "llama", pair.target, seed=3)
    with pytest.raises(ModelLoadError, match="Gemma 4 targets"):
        load_models(str(llama), str(pair.centroid))


def test_model_card_names_the_default_assistant(pair, tmp_path):
    target = shutil.copytree(pair.target, tmp_path / "target")
    shutil.copytree(pair.centroid, tmp_path / "assistant")
    (target / CARD_FILE).write_text(json.dumps({"drafter_model_ids": ["../assistant"]}))
    assert load_models(str(target)).mode == "assistant"
    assert load_models(str(target), spec=SpecMode.NONE).mode == "none"
    assert load_models(str(pair.target)).mode == "none"


def test_quantized_assistant_round_trip(pair, tmp_path):
    """Quantized with the assistant's own exclusions, saved, and loaded back: the
    centroid router stays in full precision and the drafts are unchanged."""
    model, config = gemma4_assistant.load(pair.centroid)
    keep = model.quant_predicate  # mlx-lm's convert asks it about quantizable modules only
    nn.quantize(model, group_size=32, bits=8,
                class_predicate=lambda p, m: hasattr(m, "to_quantized") and keep(p, m))
    out = shutil.copytree(pair.centroid, tmp_path / "q8")
    config["quantization"] = {"group_size": 32, "bits": 8}
    (out / "config.json").write_text(json.dumps(config))
    mx.save_safetensors(str(out / "model.safetensors"), dict(tree_flatten(model.parameters())))
    loaded, _ = gemma4_assistant.load(out)
    assert isinstance(loaded.pre_projection, nn.QuantizedLinear)
    assert isinstance(loaded.model.embed_tokens, nn.QuantizedEmbedding)
    assert type(loaded.masked_embedding.centroids) is nn.Linear
    h = mx.random.normal((2, 32), key=mx.random.key(2))
    np.testing.assert_allclose(np.array(loaded.logits(h)), np.array(model.logits(h)), atol=1e-5)
    models = load_models(str(pair.target), str(out))
    decoder = make_decoder(models, sampling=Sampling(), num_draft=2)
    prompt = encode_prompt(models.target.tokenizer, PROMPT)
    got = [t for chunk in decoder.generate(prompt, 12) for t in chunk]
    assert got == _reference(pair.target, 12)
