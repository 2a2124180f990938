"""First use of each forward width on a quantized model: on MLX's CUDA backend a
quantized matmul of 8 rows or more compiles a kernel with NVRTC, one per row tile.

    python benchmarks/cuda_quantized_widths.py [--prebuild] [--json OUT]

A random bfloat16 llama of the bench drafter's shape, quantized to 8 bits (group
size 64) as ``--quantize 8`` loads models, fed widths 1..40, 48 and 64 over a
100-token cache, each twice: the first use and again. ``--prebuild`` first runs
``exo_spec.engine.cuda.build_quantized_kernels`` (what loading a quantized model
does on CUDA), so the first uses should then cost what the second ones do. MLX
keeps compiled kernels under ``MLX_PTX_CACHE_DIR`` (default
``/tmp/mlx/<version>/ptx``): point it at an empty directory to see the cost a
fresh machine pays. Figures: docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models import llama
from mlx_lm.models.cache import make_prompt_cache

from exo_spec.engine.cuda import build_quantized_kernels

WIDTHS = [*range(1, 41), 48, 64]


def drafter_shaped_model() -> nn.Module:
    mx.random.seed(0)
    model = llama.Model(llama.ModelArgs(
        model_type="llama", hidden_size=384, num_hidden_layers=4, intermediate_size=1024,
        num_attention_heads=6, num_key_value_heads=2, rms_norm_eps=1e-5, vocab_size=8192,
        rope_theta=10000.0, tie_word_embeddings=False))
    model.set_dtype(mx.bfloat16)
    nn.quantize(model, group_size=64, bits=8)
    mx.eval(model.parameters())
    return model


def first_and_second_use(model: nn.Module) -> dict[int, tuple[float, float]]:
    cache = make_prompt_cache(model)
    mx.eval(model(mx.arange(100)[None], cache=cache))
    times: dict[int, list[float]] = {w: [] for w in WIDTHS}
    for _ in range(2):
        for width in WIDTHS:
            start = time.perf_counter()
            mx.eval(model(mx.arange(width)[None], cache=cache))
            times[width].append(1e3 * (time.perf_counter() - start))
            for c in cache:
                c.trim(width)
    return {w: (t[0], t[1]) for w, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prebuild", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    model = drafter_shaped_model()
    prebuild_s = None
    if args.prebuild:
        start = time.perf_counter()
        build_quantized_kernels(model)
        prebuild_s = time.perf_counter() - start
        print(f"build_quantized_kernels: {prebuild_s:.1f}s")
    widths = first_and_second_use(model)
    print("width  first use ms  second ms")
    for width, (first, second) in widths.items():
        print(f"{width:5d}  {first:12.1f}  {second:9.1f}")
    if args.json:
        args.json.write_text(json.dumps({"device": str(mx.default_device()),
                                         "prebuild_s": prebuild_s, "widths": widths}, indent=1))


if __name__ == "__main__":
    main()
