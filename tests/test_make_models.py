"""`exo-spec make-models --size test`: real training, real checkpoints, lossless decoding."""

from __future__ import annotations

import dataclasses
import json
import math
from functools import partial

import mlx.core as mx
import mlx.nn as nn
import mlx_lm
import numpy as np
import pytest
from mlx.utils import tree_flatten
from mlx_lm.models.gated_delta import compute_g, gated_delta_ops, normalize_qk

from exo_spec.cli import main
from exo_spec.models.mtp import Qwen35Mtp, load_mtp
from exo_spec.models.synthetic import EOS
from exo_spec.train import architectures, corpus, distill, make_models
from exo_spec.train.gated_delta import chunked_gated_delta
from exo_spec.train.sizes import SIZES
from exo_spec.train.trainer import train

from decoders import drafter_decoder, loaded, mtp_decoder, prompt_ids, run
from reference import greedy_reference

MAX_TOKENS = 24


@pytest.fixture(scope="module")
def built(trained):
    """What `exo-spec make-models --size test` wrote, once per test run (conftest.trained)."""
    assert trained.log.splitlines()[-1].startswith(f"make-models: wrote {trained.path}")
    assert "target: step 30/30" in trained.log
    return trained.path


def test_checkpoints_open_with_mlx_lm(built):
    for name in ("target", "drafter", "untrained-drafter", "dense-target"):
        model, tokenizer = mlx_lm.load(str(built / name))
        assert tokenizer.encode("def f(x):")
    config = json.loads((built / "target" / "config.json").read_text())
    assert config["model_type"] == "qwen3_5"
    for name in ("drafter", "dense-target"):
        assert json.loads((built / name / "config.json").read_text())["model_type"] == "llama"


def test_target_ships_an_mtp_head(built):
    mtp = load_mtp(built / "target", loaded(built / "target").model)
    assert isinstance(mtp, Qwen35Mtp)


def test_manifest_records_training_and_losses_go_down(built):
    manifest = json.loads((built / "manifest.json").read_text())
    assert manifest["size"] == "test" and manifest["version"] == make_models.VERSION
    for name, parts in (("target", 3), ("drafter", 1), ("dense_target", 1)):
        first, final = manifest[name]["first_loss"], manifest[name]["final_loss"]
        assert len(final) == parts and manifest[name]["steps"] == 30
        assert all(b < a - 0.5 for a, b in zip(first, final, strict=True)), name
    size = SIZES["test"]
    per_sample = size.distill_prompt + size.distill_new_tokens + 1
    assert manifest["drafter"]["distilled_tokens"] == size.distill_count * per_sample
    head = manifest["target"]["mtp_head_alone"]
    assert head["steps"] == size.mtp_schedule.max_steps
    assert head["final_loss"][0] < head["first_loss"][0]


def test_prompts_come_from_held_out_files(built):
    prompts = json.loads((built / "prompts.json").read_text())
    assert len(prompts) == SIZES["test"].num_prompts
    assert all(200 <= len(p) <= 400 for p in prompts)
    trained = "\n".join(corpus.training_documents(SIZES["demo"].corpus_chars))
    assert not any(p in trained for p in prompts)


@pytest.mark.parametrize("k", [1, 3, None])
def test_mtp_decode_equals_mlx_lm_greedy(built, k):
    target = built / "target"
    prompt = prompt_ids(target, json.loads((built / "prompts.json").read_text())[0])
    expected = greedy_reference(loaded(target).model, prompt, MAX_TOKENS)
    decoder = mtp_decoder(target, k)
    assert run(decoder, prompt, MAX_TOKENS) == expected
    # The trained head keeps every draft on this tiny target's greedy loop; one with
    # noise on its weights does not, so rounds started ahead are kept and taken back.
    decoder = mtp_decoder(target, k, noise=0.3)
    assert run(decoder, prompt, MAX_TOKENS) == expected
    if k == 1:
        assert 0 < decoder.rounds_taken_back < decoder.rounds_pipelined


@pytest.mark.parametrize("drafter, k", [("drafter", 1), ("drafter", None),
                                        ("untrained-drafter", 2)])
def test_drafter_decode_equals_mlx_lm_greedy(built, drafter, k):
    target = built / "target"
    prompt = prompt_ids(target, json.loads((built / "prompts.json").read_text())[1])
    expected = greedy_reference(loaded(target).model, prompt, MAX_TOKENS)
    decoder = drafter_decoder(target, loaded(built / drafter).model, k)
    assert run(decoder, prompt, MAX_TOKENS) == expected


def test_same_seed_same_weights(tmp_path):
    for name in ("a", "b"):
        make_models.build(SIZES["test"], tmp_path / name, max_steps=3)
    for part in ("target", "drafter"):
        a = (tmp_path / "a" / part / "model.safetensors").read_bytes()
        assert a == (tmp_path / "b" / part / "model.safetensors").read_bytes()


@pytest.mark.parametrize("T, Hk, Hv, Dk, Dv, chunk", [(37, 2, 4, 16, 8, 16), (8, 1, 1, 8, 8, 4)])
def test_chunked_gated_delta_is_mlx_lm_recurrence(T, Hk, Hv, Dk, Dv, chunk):
    """Values, final state and gradients of the chunked training rule equal mlx-lm's
    step-by-step recurrence (the inference path)."""
    mx.random.seed(0)
    q, k = normalize_qk(mx.random.normal((2, T, Hk, Dk)), mx.random.normal((2, T, Hk, Dk)),
                        inv_scale=Dk**-0.5, eps=1e-6)
    v, a, b = (mx.random.normal(s) for s in ((2, T, Hv, Dv), (2, T, Hv), (2, T, Hv)))
    A_log, dt_bias = mx.log(mx.random.uniform(1, 16, (Hv,))), mx.ones((Hv,))
    y_proj, s_proj = mx.random.normal((2, T, Hv, Dv)), mx.random.normal((2, Hv, Dv, Dk))

    def recurrent(q, k, v, a, b):
        return gated_delta_ops(q, k, v, compute_g(A_log, a, dt_bias), mx.sigmoid(b),
                               mx.zeros((2, Hv, Dv, Dk)))

    def chunked(q, k, v, a, b):
        log_g = -mx.exp(A_log) * nn.softplus(a + dt_bias)
        return chunked_gated_delta(q, k, v, log_g, mx.sigmoid(b), chunk=chunk)

    def scalar(fn):
        return lambda *x: (fn(*x)[0] * y_proj).sum() + (fn(*x)[1] * s_proj).sum()

    inputs = (q, k, v, a, b)
    for want, got in zip(recurrent(*inputs), chunked(*inputs), strict=True):
        np.testing.assert_allclose(np.array(got), np.array(want), rtol=1e-4, atol=1e-5)
    grads = [mx.grad(scalar(fn), argnums=(0, 1, 2, 3, 4))(*inputs) for fn in (recurrent, chunked)]
    for want, got in zip(*grads, strict=True):
        np.testing.assert_allclose(np.array(got), np.array(want), rtol=1e-3, atol=1e-4)


def _target_run(built, schedule, **kwargs):
    size = SIZES["test"]
    tokenizer = built / "tokenizer"
    tokens = corpus.token_stream(corpus.training_documents(20_000), tokenizer, EOS)
    model = architectures.build_target(architectures.target_config(size.target, tokenizer), 0)
    loss = partial(architectures.target_loss, mtp_weight=1.0)
    result = train(model, loss, tokens, schedule, name="t", seed=0, log=lambda _: None, **kwargs)
    return model, result


def test_mtp_head_alone_leaves_the_target_as_it_was(built):
    model, _ = _target_run(built, SIZES["test"].target_schedule, max_steps=2)
    before = dict(tree_flatten(model.parameters()))
    model.target.freeze()
    tokens = corpus.token_stream(corpus.training_documents(20_000), built / "tokenizer", EOS)
    result = train(model, architectures.mtp_loss, tokens, SIZES["test"].mtp_schedule,
                   name="m", seed=0, log=lambda _: None, max_steps=3)
    assert result.steps == 3 and len(result.final_loss) == 1
    after = dict(tree_flatten(model.parameters()))
    same = {n: mx.array_equal(before[n], after[n]).item() for n in before}
    assert all(v for n, v in same.items() if not n.startswith("mtp."))
    assert not all(v for n, v in same.items() if n.startswith("mtp."))


def test_bfloat16_compute_keeps_float32_weights(built):
    model, result = _target_run(built, SIZES["test"].target_schedule,
                                compute_dtype=mx.bfloat16, max_steps=3)
    assert result.steps == 3 and all(math.isfinite(v) for v in result.final_loss)
    assert {v.dtype for _, v in tree_flatten(model.parameters())} == {mx.float32}


def test_time_budget_fits_the_step_count(built):
    schedule = dataclasses.replace(SIZES["test"].target_schedule, max_steps=10_000,
                                   time_budget_s=1.5)
    _, result = _target_run(built, schedule)
    assert 6 <= result.steps < 10_000 and result.seconds < 6


@pytest.mark.parametrize("args, message", [
    (["--max-steps", "0"], "--max-steps must be >= 1"),
    (["--time-budget", "-1"], "--time-budget must be > 0"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--distill-count", "-2"], "--distill-count must be >= 1"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, args, message):
    code = main(["make-models", "--size", "test", "--out", str(tmp_path / "m"), *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.splitlines()) == 1


def test_existing_output_is_refused(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("mine")
    assert main(["make-models", "--size", "test", "--out", str(tmp_path)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_unknown_size_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["make-models", "--size", "huge", "--out", str(tmp_path / "m")])
    assert exit_.value.code == 2
    assert len(capsys.readouterr().err.splitlines()) == 1


def test_models_for_builds_once_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    calls = []

    def fake_build(size, out, **_):
        calls.append(out)
        (out / "manifest.json").write_text("{}")
        return {}

    monkeypatch.setattr(make_models, "build", fake_build)
    path = make_models.models_for("test")
    assert path == tmp_path / "exo-spec" / "models" / f"test-v{make_models.VERSION}"
    assert make_models.models_for("test") == path and len(calls) == 1
    assert calls[0] != path and (path / "manifest.json").is_file()  # built aside, renamed


def test_interrupted_build_leaves_no_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))

    def failing_build(size, out, **_):
        (out / "half-written").write_text("")
        raise KeyboardInterrupt

    monkeypatch.setattr(make_models, "build", failing_build)
    with pytest.raises(KeyboardInterrupt):
        make_models.models_for("test")
    assert list((tmp_path / "exo-spec" / "models").iterdir()) == []


def test_continuations_in_batches_equal_one_batch(built):
    size = SIZES["test"]
    tokenizer = built / "tokenizer"
    tokens = corpus.token_stream(corpus.training_documents(20_000), tokenizer, EOS)
    model = architectures.build_target(architectures.target_config(size.target, tokenizer), 0)
    kwargs = dict(count=5, prompt_len=8, new_tokens=6, seed=3, separator=0)
    whole = distill.greedy_continuations(model.target, tokens, batch_size=5, **kwargs)
    batched = distill.greedy_continuations(model.target, tokens, batch_size=2, **kwargs)
    assert whole.shape == (5 * (8 + 6 + 1),)
    np.testing.assert_array_equal(batched, whole)


def test_dense_target_and_drafter_are_a_pair_mlx_lm_speculates_with(built, tmp_path):
    out = tmp_path / "bench.json"
    assert main(["bench", "--model", str(built / "dense-target"), "--draft-model",
                 str(built / "drafter"), "--prompts", str(built / "prompts.json"), "--ks", "2",
                 "--max-tokens", "8", "--repeats", "1", "--num-prompts", "1",
                 "--warmup-tokens", "0", "--json", str(out)]) == 0
    rows = {(r["row"], r["k"]): r for r in json.loads(out.read_text())["rows"]}
    assert rows[("mlx-lm speculative", "2")]["error"] is None
    assert all(r["same_output"] is True for r in rows.values())
