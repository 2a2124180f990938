"""Loading: body/head split, MTP weights in their published layouts, drafter pairing."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from exo_spec.decoder_factory import make_decoder
from exo_spec.engine import Sampling
from exo_spec.model_set import load_models
from exo_spec.models.heads import body_and_head
from exo_spec.models.load import ModelLoadError, check_same_vocabulary, load
from exo_spec.models.mtp import load_mtp, mtp_layer_count

from decoders import loaded


@pytest.mark.parametrize("name", ["llama", "qwen3_5", "deepseek_v3"])
def test_body_and_head_reproduce_the_model(checkpoints, name):
    model = loaded(getattr(checkpoints, name)).model
    tokens = mx.array([[3, 40, 7, 300]])
    body, head = body_and_head(model)
    np.testing.assert_allclose(np.array(head(body(tokens))), np.array(model(tokens)),
                               rtol=1e-5, atol=1e-5)


def test_qwen3_5_mtp_norms_are_converted_from_offsets(checkpoints):
    target = loaded(checkpoints.qwen3_5).model
    mtp = load_mtp(checkpoints.qwen3_5, target)
    # Published checkpoints store RMSNorm weights as offsets around 0; loaded, they sit near 1.
    for norm in (mtp.norm, mtp.pre_fc_norm_hidden, mtp.layers[0].input_layernorm):
        assert abs(float(norm.weight.mean()) - 1.0) < 0.1
    assert mtp_layer_count(checkpoints.qwen3_5) == 1


def test_deepseek_v3_trunk_loads_without_its_mtp_layer(checkpoints):
    # mlx-lm only drops layer 61; any other depth would fail a strict load.
    target = load(str(checkpoints.deepseek_v3)).model
    assert len(target.model.layers) == 2
    mtp = load_mtp(checkpoints.deepseek_v3, target)
    assert mtp_layer_count(checkpoints.deepseek_v3) == 1
    assert mtp.layers[0].mlp.switch_mlp.gate_proj.weight.shape[0] == 4  # experts restacked


def test_checkpoint_without_mtp(checkpoints):
    assert mtp_layer_count(checkpoints.llama) == 0
    with pytest.raises(ModelLoadError, match="no MTP weights"):
        load_mtp(checkpoints.llama, loaded(checkpoints.llama).model)


def test_foreign_drafter_is_refused_naming_both(checkpoints):
    with pytest.raises(ModelLoadError) as err:
        check_same_vocabulary(loaded(checkpoints.llama), loaded(checkpoints.foreign_drafter))
    assert str(checkpoints.llama) in str(err.value)
    assert str(checkpoints.foreign_drafter) in str(err.value)
    check_same_vocabulary(loaded(checkpoints.llama), loaded(checkpoints.drafter))


def test_every_job_reuses_the_mtp_head_read_at_load(checkpoints):
    models = load_models(str(checkpoints.qwen3_5))
    assert models.mode == "mtp"
    first, second = (make_decoder(models, sampling=Sampling()) for _ in range(2))
    assert first.proposer.mtp is models.mtp is second.proposer.mtp
    assert first.proposer.cache is not second.proposer.cache
