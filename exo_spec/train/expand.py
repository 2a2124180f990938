"""Enlarge a trained checkpoint without changing what it computes.

A small trained model decodes in the host-bound regime on a GPU: each step's kernels
read a few hundred megabytes and the step's time is the host building its graph. A
model of tens of billions of parameters on a Mac is the opposite: every pass is bound
by weight reads. ``expand`` turns the first into the second while keeping the trained
model's function, so outputs, acceptance and the drafters' quality stay real and only
the bytes each pass reads grow:

- **Wider MLPs** (``mlp_factor``): each SwiGLU MLP's intermediate neurons are repeated
  ``mlp_factor`` times (gate and up rows tiled) and the down projection's columns for
  the copies are zero, so the copies add exactly nothing to the output. The MTP head's
  MLP is widened too, since it is built from the same config.
- **More layers** (``extra_layers``): copies of trained layers, appended after them,
  whose output projections (attention's ``o_proj``, GatedDeltaNet's ``out_proj``, the
  MLP's ``down_proj``) are zero: each adds nothing to the residual stream, but its
  weights are read and its attention or recurrent state is computed and cached as any
  layer's. A hybrid keeps its layer pattern (copies of the same layer type).

A zero projection stays exactly zero when quantized (an all-zero group has scale and
bias zero), and adding zero is exact, so the deeper model's residual stream is the
trained one's bit for bit; the wider MLP reduces over more (zero) terms, which may
round differently on hardware whose kernels tile by width.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import mlx.core as mx

from ..models.load import read_config, text_config

_LAYER = re.compile(r"^(.*?layers\.)(\d+)\.(.*)$")
_OUTPUT_PROJECTIONS = ("self_attn.o_proj.weight", "linear_attn.out_proj.weight",
                       "mlp.down_proj.weight")


def expand(src: Path, out: Path, *, mlp_factor: int = 1, extra_layers: int = 0) -> Path:
    """Write ``src`` enlarged into ``out`` (config, weights, tokenizer files)."""
    if mlp_factor < 1 or extra_layers < 0:
        raise ValueError("mlp_factor must be 1 or more and extra_layers 0 or more")
    config = read_config(src)
    if "quantization" in config:
        raise ValueError(f"{src} is quantized; expand its float checkpoint and quantize after")
    text = text_config(config)
    layers = text["num_hidden_layers"]
    interval = text.get("full_attention_interval", 1)
    if layers % interval or extra_layers % interval:
        raise ValueError(f"layer counts must be multiples of the layer pattern ({interval})")
    weights: dict[str, mx.array] = {}
    for file in sorted(src.glob("*.safetensors")):
        weights.update(mx.load(str(file)))

    trunk = {k: v for k, v in weights.items() if not k.startswith("mtp.")}
    enlarged = {k: v for k, v in weights.items() if k.startswith("mtp.")}
    for name, value in trunk.items():
        enlarged[name] = value
        found = _LAYER.match(name)
        if found is None:
            continue
        prefix, index, rest = found.group(1), int(found.group(2)), found.group(3)
        for copy in range(index + layers, layers + extra_layers, layers):
            enlarged[f"{prefix}{copy}.{rest}"] = (
                mx.zeros_like(value) if rest in _OUTPUT_PROJECTIONS else value)
    if mlp_factor > 1:
        enlarged = {k: _widen(k, v, mlp_factor) for k, v in enlarged.items()}

    text["num_hidden_layers"] = layers + extra_layers
    text["intermediate_size"] = text["intermediate_size"] * mlp_factor
    config["exo_spec_expansion"] = {"from": str(src), "mlp_factor": mlp_factor,
                                    "extra_layers": extra_layers}
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    mx.save_safetensors(str(out / "model.safetensors"), enlarged, metadata={"format": "mlx"})
    for file in src.iterdir():
        if file.name.startswith("tokenizer") or file.name == "special_tokens_map.json":
            (out / file.name).write_bytes(file.read_bytes())
    return out


def _widen(name: str, value: mx.array, factor: int) -> mx.array:
    if name.endswith(("mlp.gate_proj.weight", "mlp.up_proj.weight")):
        return mx.concatenate([value] * factor, axis=0)
    if name.endswith("mlp.down_proj.weight"):
        zeros = mx.zeros((value.shape[0], value.shape[1] * (factor - 1)), dtype=value.dtype)
        return mx.concatenate([value, zeros], axis=1)
    return value


def weight_bytes(path: Path) -> int:
    """Bytes of the checkpoint's weight files: what a pass over every layer reads."""
    return sum(f.stat().st_size for f in path.glob("*.safetensors"))
