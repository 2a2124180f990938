"""The function-preserving enlargement that gives the bench a bandwidth-bound target."""

from __future__ import annotations

import shutil

import mlx.core as mx
import pytest

from exo_spec.model_set import load_models
from exo_spec.models.load import read_config
from exo_spec.train.expand import expand, weight_bytes
from exo_spec.train.make_models import expand_models
from exo_spec.train.sizes import Expansion

from decoders import loaded, mtp_decoder, prompt_ids, run
from reference import greedy_reference


@pytest.fixture(scope="module")
def widened(checkpoints, tmp_path_factory):
    out = tmp_path_factory.mktemp("expanded")
    return {name: expand(getattr(checkpoints, name), out / name, mlp_factor=3, extra_layers=2)
            for name in ("llama", "qwen3_5")}


@pytest.mark.parametrize("name", ["llama", "qwen3_5"])
def test_expanded_model_computes_what_the_trained_one_does(checkpoints, widened, name):
    small, large = getattr(checkpoints, name), widened[name]
    config = read_config(large).get("text_config", read_config(large))
    assert config["num_hidden_layers"] == read_config(small).get(
        "text_config", read_config(small))["num_hidden_layers"] + 2
    assert weight_bytes(large) > 2 * weight_bytes(small)
    prompt = prompt_ids(small, "def main():\n    return")
    tokens = mx.array(prompt)[None]
    assert mx.array_equal(loaded(small).model(tokens), loaded(large).model(tokens))
    assert (greedy_reference(loaded(large).model, prompt, 24)
            == greedy_reference(loaded(small).model, prompt, 24))


@pytest.mark.parametrize("k", [2, None])
def test_mtp_decode_of_the_expanded_model_is_its_greedy_decode(widened, k):
    path = widened["qwen3_5"]
    prompt = prompt_ids(path, "class Queue:\n    def")
    assert run(mtp_decoder(path, k), prompt, 24) == greedy_reference(loaded(path).model,
                                                                     prompt, 24)


def test_expand_refuses_a_broken_layer_pattern(checkpoints, tmp_path):
    with pytest.raises(ValueError, match="layer pattern"):
        expand(checkpoints.qwen3_5, tmp_path / "odd", extra_layers=1)


def test_make_models_enlarges_the_trained_targets(trained, tmp_path):
    out = tmp_path / "models"
    shutil.copytree(trained.path, out)
    result = expand_models(out, Expansion(mlp_factor=2, extra_layers=2))
    for name in ("target", "dense-target"):
        assert result[name]["bytes"] > result[name]["trained_bytes"] \
            == weight_bytes(out / f"{name}-trained")
    models = load_models(str(out / "target"))  # its MTP head, widened with it, loads
    assert models.mode == "mtp"
    prompt = prompt_ids(out / "target", "def main():")
    assert (greedy_reference(models.target.model, prompt, 16)
            == greedy_reference(loaded(out / "target-trained").model, prompt, 16))
