"""``--quantize``: the target, its MTP head and the drafter are quantized as they load
(group size 64, as mlx-lm quantizes), and greedy decoding still equals mlx-lm's own
decode of the target quantized by mlx-lm. Also which GPU each local rank is given."""

from __future__ import annotations

import json

import mlx.nn as nn
import pytest
from mlx_lm.models import cache as mlx_lm_cache

from exo_spec.cli import main
from exo_spec.decoder_factory import make_decoder
from exo_spec.engine import Sampling, cuda
from exo_spec.engine.cuda import on_cuda
from exo_spec.group.launch import cuda_devices, gpu_pin
from exo_spec.model_set import load_models
from exo_spec.models.load import load
from exo_spec.models.mtp import load_mtp
from exo_spec.models.synthetic_gemma4 import write_gemma4_assistant, write_gemma4_text
from exo_spec.prompt import encode_prompt
from exo_spec.spec_mode import SpecMode

from decoders import PROMPTS, assert_same_parameters, prompt_ids, run
from reference import greedy_reference, quantized_by_mlx_lm

MAX_TOKENS = 16


def _quantized_layers(model: nn.Module, bits: int) -> int:
    """How many layers ``model`` holds quantized to ``bits`` (group size 64), after
    checking that no float linear or embedding layer that could be is left."""
    count = 0
    for name, m in model.named_modules():
        if isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding)):
            assert (m.bits, m.group_size) == (bits, 64), name
            count += 1
        elif isinstance(m, (nn.Linear, nn.Embedding)):
            assert m.weight.shape[-1] % 64, f"{name} was left float"
    return count


@pytest.mark.parametrize("bits", [8, 4])
def test_mtp_on_a_target_quantized_as_it_loads(checkpoints, bits):
    path = checkpoints.qwen3_5
    models = load_models(str(path), bits=bits)
    assert models.mode == "mtp"
    reference = quantized_by_mlx_lm(path, bits)
    # Layer for layer what mlx-lm's own quantization of the float checkpoint holds.
    assert_same_parameters(models.target.model, reference)
    assert _quantized_layers(models.target.model, bits) > 0
    # The MTP head too: as nn.quantize leaves a float head with the same settings.
    float_mtp = load_mtp(path, load(str(path)).model)
    nn.quantize(float_mtp, group_size=64, bits=bits,
                class_predicate=lambda _, m: isinstance(m, (nn.Linear, nn.Embedding))
                and m.weight.shape[-1] % 64 == 0)
    assert_same_parameters(models.mtp, float_mtp)
    assert _quantized_layers(models.mtp, bits) >= 7  # fc, q/k/v/o, gate/up/down
    prompt = prompt_ids(path, PROMPTS[0])
    decoder = make_decoder(models, sampling=Sampling(), num_draft=2)
    assert run(decoder, prompt, MAX_TOKENS) == greedy_reference(reference, prompt, MAX_TOKENS)
    assert decoder.finish.reason == "length" and decoder.stats.drafted > 0


def test_quantized_kernels_are_built_as_a_model_loads(checkpoints, monkeypatch):
    """What load() runs on CUDA, run here by saying this is CUDA: one forward per row
    tile of MLX's quantized matmul, each on a scratch cache, for quantized models only;
    the loaded model then decodes as mlx-lm's quantized target does."""
    scratch_caches = []

    def make_prompt_cache(model):
        scratch_caches.append(model)
        return real_make_prompt_cache(model)

    real_make_prompt_cache = mlx_lm_cache.make_prompt_cache
    monkeypatch.setattr(cuda, "on_cuda", lambda: True)
    monkeypatch.setattr(mlx_lm_cache, "make_prompt_cache", make_prompt_cache)
    path = checkpoints.qwen3_5
    load(str(path))
    assert scratch_caches == []
    target = load(str(path), bits=8).model
    assert scratch_caches == [target] * len(cuda.QMM_TILE_ROWS)
    prompt = prompt_ids(path, PROMPTS[0])
    decoder = make_decoder(load_models(str(path), spec=SpecMode.NONE, bits=8), sampling=Sampling())
    reference = quantized_by_mlx_lm(path, 8)
    assert run(decoder, prompt, MAX_TOKENS) == greedy_reference(reference, prompt, MAX_TOKENS)


def test_drafter_quantized_as_it_loads(checkpoints):
    """The 32-wide drafter keeps its narrow layers float; its 128-wide down_proj is
    quantized, and decoding with it still equals mlx-lm's."""
    path = checkpoints.llama
    models = load_models(str(path), str(checkpoints.drafter), bits=4)
    assert models.mode == "draft"
    assert _quantized_layers(models.drafter.model, 4) == 1  # its one layer's down_proj
    reference = quantized_by_mlx_lm(path, 4)
    assert_same_parameters(models.target.model, reference)
    prompt = prompt_ids(path, PROMPTS[1])
    decoder = make_decoder(models, sampling=Sampling(), num_draft=3)
    assert run(decoder, prompt, MAX_TOKENS) == greedy_reference(reference, prompt, MAX_TOKENS)
    assert decoder.stats.drafted > 0


def test_gemma4_assistant_quantized_as_it_loads(checkpoints, tmp_path):
    """A Gemma 4 target and its assistant, both quantized: the assistant reads the
    target's K/V and hidden state as before, and greedy output equals mlx-lm's."""
    target = write_gemma4_text(tmp_path / "target", checkpoints.tokenizer, seed=10)
    assistant = write_gemma4_assistant(tmp_path / "assistant", target, seed=11)
    models = load_models(str(target), str(assistant), bits=8)
    assert models.mode == "assistant"
    assert _quantized_layers(models.target.model, 8) > 0
    assert _quantized_layers(models.drafter.model, 8) > 0
    reference = quantized_by_mlx_lm(target, 8)
    prompt = encode_prompt(models.target.tokenizer, PROMPTS[0])
    decoder = make_decoder(models, sampling=Sampling(), num_draft=3)
    assert run(decoder, prompt, MAX_TOKENS) == greedy_reference(reference, prompt, MAX_TOKENS)
    assert decoder.stats.drafted > 0


def test_cli_generate_quantize(checkpoints, capsys):
    path = checkpoints.qwen3_5
    reference = quantized_by_mlx_lm(path, 8)
    assert main(["generate", "--json", "--model", str(path), "--prompt", PROMPTS[0],
                 "--max-tokens", "12", "--quantize", "8", "--num-draft", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    loaded = load(str(path))
    prompt = encode_prompt(loaded.tokenizer, PROMPTS[0])
    assert out["tokens"] == greedy_reference(reference, prompt, 12)
    assert out["tokens"] != greedy_reference(loaded.model, prompt, 12)  # float decodes otherwise
    assert out["stats"]["mode"] == "mtp" and out["stats"]["drafted"] > 0


def test_cli_refuses_other_bit_widths(checkpoints, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["generate", "--model", str(checkpoints.llama), "--prompt", "x",
              "--quantize", "3"])
    assert exit_.value.code == 2
    assert "--quantize: invalid choice: 3" in capsys.readouterr().err


@pytest.mark.parametrize("devices", [[], ["0"]])
def test_one_gpu_or_none_pins_nothing(devices):
    assert [gpu_pin(rank, devices) for rank in range(3)] == [{}, {}, {}]


def test_ranks_take_the_gpus_in_turn():
    assert [gpu_pin(rank, ["0", "1"]) for rank in range(3)] == [
        {"CUDA_VISIBLE_DEVICES": d} for d in ("0", "1", "0")]
    # Named as the launching process's CUDA_VISIBLE_DEVICES names them.
    assert gpu_pin(1, ["3", "5"]) == {"CUDA_VISIBLE_DEVICES": "5"}


def test_cuda_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert cuda_devices() == (["3", "5"] if on_cuda() else [])
    if not on_cuda():
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
        assert cuda_devices() == []
