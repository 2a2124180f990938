"""What a decode forward costs the host when ``mx.compile`` traces it whole, beside
the same forward as mlx-lm runs it (the graph built op by op in Python each time).

    python benchmarks/compiled_step.py [--quantize 8] [--json OUT]

The bench target's architecture (make-models ``--size bench``: a qwen3_5 hybrid
of four GatedDeltaNet and four attention layers, 1024 wide) with random bf16
weights and a 512-token vocabulary, a 197-token prompt in its caches, widths
1..4. mlx-lm's caches keep their offsets as Python ints, which a trace bakes in,
so the compiled forward here takes every cache array as an input and is replayed
at one position: it measures what a compiled decode step would cost, not a way
to decode. Both are checked to pick
the same tokens. Figures: docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import mlx.core as mx
from mlx_lm.models.cache import KVCache, make_prompt_cache

from exo_spec.models import synthetic
from exo_spec.models.quantize import QUANTIZE_BITS, quantize
from exo_spec.train import architectures
from exo_spec.train.sizes import SIZES

from host_timing import host_ms

REPEATS, WARMUP = 80, 20

PROMPT = list(range(3, 200))


def cache_arrays(cache: list) -> list[mx.array]:
    arrays = []
    for c in cache:
        arrays += [c.keys, c.values] if isinstance(c, KVCache) else list(c.cache)
    return arrays


def traced_forward(model, cache: list):
    """The forward as a function of (tokens, *cache arrays), with the caches' current
    offsets fixed, returning the argmax tokens and the updated arrays."""
    offsets = [c.offset if isinstance(c, KVCache) else None for c in cache]

    def forward(tokens: mx.array, *arrays: mx.array) -> list[mx.array]:
        fresh, it = make_prompt_cache(model), iter(arrays)
        for c, offset in zip(fresh, offsets, strict=True):
            if isinstance(c, KVCache):
                c.keys, c.values, c.offset = next(it), next(it), offset
            else:
                c.cache = [next(it), next(it)]
        return [mx.argmax(model(tokens, cache=fresh)[0], -1), *cache_arrays(fresh)]

    return forward


def measure(model, cache: list, width: int) -> dict:
    """One width: the forward as mlx-lm runs it on the live caches (rewound after each
    run), and compiled (a fresh trace per width, as its input shapes differ)."""
    tokens = mx.array([list(range(5, 5 + width))], dtype=mx.uint32)
    forward = traced_forward(model, cache)
    compiled = mx.compile(forward)
    arrays = cache_arrays(cache)
    start = time.perf_counter()
    picked = compiled(tokens, *arrays)[0]
    mx.eval(picked)
    first_ms = 1e3 * (time.perf_counter() - start)
    if not mx.array_equal(picked, forward(tokens, *arrays)[0]).item():
        raise SystemExit(f"width {width}: the compiled forward picked other tokens")
    recurrent = [None if isinstance(c, KVCache) else list(c.cache) for c in cache]

    def rewind():
        for c, saved in zip(cache, recurrent, strict=True):
            if saved is None:
                c.trim(width)
            else:
                c.cache = list(saved)

    row = {
        "as_mlx_lm": host_ms(lambda: [mx.argmax(model(tokens, cache=cache)[0], -1)], rewind,
                             repeats=REPEATS, warmup=WARMUP),
        "compiled": host_ms(lambda: compiled(tokens, *arrays)[:1],
                            repeats=REPEATS, warmup=WARMUP),
        "compiled_first_call_ms": round(first_ms, 1),
    }
    print(f"width {width}: host {row['as_mlx_lm']['host_ms']:.3f} ms as mlx-lm builds it, "
          f"{row['compiled']['host_ms']:.3f} ms compiled (first call {first_ms:.0f} ms)",
          flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quantize", type=int, choices=QUANTIZE_BITS)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    tokenizer = Path(tempfile.mkdtemp()) / "tokenizer"
    synthetic.write_tokenizer(tokenizer)
    config = architectures.target_config(SIZES["bench"].target, tokenizer)
    model = architectures.build_target(config, seed=0).target
    model.set_dtype(mx.bfloat16)
    quantize(model, args.quantize)

    cache = make_prompt_cache(model)
    mx.eval(model(mx.array([PROMPT], dtype=mx.uint32), cache=cache))
    results = {width: measure(model, cache, width) for width in (1, 2, 3, 4)}
    if args.json:
        args.json.write_text(json.dumps({"device": str(mx.default_device()),
                                         "quantize": args.quantize, "widths": results},
                                        indent=1))


if __name__ == "__main__":
    main()
