"""Why a pass of width > 1 over a growing KV cache is slow on MLX's CUDA backend.

    python benchmarks/cuda_verify_width.py [--json OUT] [--quick]

Timed with a host sync after every call (mx.eval); medians in ms.

A. ``mx.fast.scaled_dot_product_attention`` alone, as mlx-lm calls it: keys
   sliced from a preallocated buffer (like ``KVCache``), query widths 1..5,
   float32 and bfloat16. "grow": the key length grows by one every call (a
   verify loop); "same": the same key length again; "padded": the whole buffer
   with an additive mask, so the key shape never changes.
B. A bfloat16 llama-shaped model (random weights): passes over a cache that
   keeps one token per pass (feed w, trim w - 1), for verify widths 1, 2, 3, 5
   and for the varying widths of a proposer catching up after plain steps.
C. mlx-lm ``generate_step`` and ``speculative_generate_step`` (k=2) on a bf16
   target/drafter pair: tok/s of a first and a second pass over one prompt.

B and C run twice, in subprocesses with MLX_CUDA_USE_CUDNN_SDPA=1 (MLX's
default) and =0 (MLX reads the variable once per process). This script does
not import exo_spec, which sets that variable itself on CUDA.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import mlx.core as mx
from mlx_lm.models import llama
from mlx_lm.models.cache import make_prompt_cache


def ms(f, n: int) -> list[float]:
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        mx.eval(f(i))
        out.append(1000 * (time.perf_counter() - t0))
    return out


def med(xs: list[float]) -> float:
    return round(statistics.median(xs), 3)


def sdpa_calls(q, buf_k, buf_v, base: int):
    """The three ways of calling attention that part A times, for one width."""
    w, D, size = q.shape[2], q.shape[-1], buf_k.shape[2]
    mask = None if w == 1 else "causal"

    def grow(i):
        L = base + i
        return mx.fast.scaled_dot_product_attention(
            q, buf_k[..., :L, :], buf_v[..., :L, :], scale=D**-0.5, mask=mask)

    def same(i):
        return mx.fast.scaled_dot_product_attention(
            q, buf_k[..., :base, :], buf_v[..., :base, :], scale=D**-0.5, mask=mask)

    def padded(i):
        off = base + 100 + i - w  # tokens before this pass
        keep = mx.arange(off, off + w)[:, None] >= mx.arange(size)[None]
        m = mx.where(keep, 0.0, -mx.inf).astype(q.dtype)
        return mx.fast.scaled_dot_product_attention(q, buf_k, buf_v, scale=D**-0.5, mask=m)

    return grow, same, padded


def part_a(quick: bool) -> list[dict]:
    B, Hq, Hkv, D, size = 1, 16, 4, 128, 2048
    n = 12 if quick else 24
    rows = []
    for dtype in (mx.float32, mx.bfloat16):
        buf_k = mx.random.normal((B, Hkv, size, D)).astype(dtype)
        buf_v = mx.random.normal((B, Hkv, size, D)).astype(dtype)
        mx.eval(buf_k, buf_v)
        for w in (1, 2, 3, 4, 5):
            q = mx.random.normal((B, Hq, w, D)).astype(dtype)
            # key lengths no earlier case used, so nothing was warmed for them
            base = 600 + 60 * w + (0 if dtype == mx.float32 else 400)
            grow, same, padded = sdpa_calls(q, buf_k, buf_v, base)
            ms(same, 2)  # warm the same-length case (and kernels in general)
            row = {"part": "A", "dtype": str(dtype).split(".")[-1], "width": w,
                   "grow_ms": med(ms(grow, n)), "same_ms": med(ms(same, n)),
                   "padded_ms": med(ms(padded, n)) if w > 1 else None}
            rows.append(row)
            print(row, flush=True)
    return rows


def model_args(hidden=2048, layers=8, vocab=8192) -> llama.ModelArgs:
    return llama.ModelArgs(model_type="llama", hidden_size=hidden, num_hidden_layers=layers,
                           intermediate_size=4 * hidden, num_attention_heads=hidden // 128,
                           num_key_value_heads=4, rms_norm_eps=1e-5, vocab_size=vocab,
                           rope_theta=10000.0, tie_word_embeddings=False)


TINY = False  # --tiny: a small model, to check the script itself on a CPU


def make_model(seed: int, **kw) -> llama.Model:
    mx.random.seed(seed)
    if TINY:
        kw = {"hidden": 512, "layers": 2}
    m = llama.Model(model_args(**kw))
    m.set_dtype(mx.bfloat16)
    mx.eval(m.parameters())
    return m


# Widths of passes over a cache that keeps one token per pass: verify rounds (2..5),
# and proposer catch-ups after plain steps (up to 2 * MAX_CATCH_UP rows).
WIDTHS = {"w1": [1], "w2": [2], "w3": [3], "w5": [5], "catch-up 6..64": [6, 9, 17, 33, 64, 12]}


def part_b(quick: bool) -> list[dict]:
    model = make_model(0)
    rounds = 16 if quick else 40
    rows = []
    for name, widths in WIDTHS.items():
        cache = make_prompt_cache(model)
        prompt = mx.random.randint(0, 8192, (1, 300 + 37 * len(rows)))
        mx.eval(model(prompt, cache=cache))

        def step(i, widths=widths, cache=cache):
            w = widths[i % len(widths)]
            out = model(mx.random.randint(0, 8192, (1, w)), cache=cache)
            mx.eval(out)
            for c in cache:
                c.trim(w - 1)
            return out

        times = ms(step, rounds + 4)[4:]
        row = {"part": "B", "widths": name, "ms_per_pass": med(times),
               "max_ms": round(max(times), 1)}
        rows.append(row)
        print(row, flush=True)
    return rows


def part_c(quick: bool) -> list[dict]:
    from mlx_lm.generate import generate_step, speculative_generate_step

    target = make_model(0)
    drafter = make_model(1, hidden=512, layers=2)
    prompt = mx.random.randint(0, 8192, (200,)).astype(mx.uint32)
    n = 48 if quick else 96
    rows = []

    def run(name, make):
        for attempt in ("first", "second"):
            gen = make()
            next(gen)
            t0 = time.perf_counter()
            count = 1 + sum(1 for _ in gen)
            tps = (count - 1) / (time.perf_counter() - t0)
            row = {"part": "C", "row": name, "pass": attempt, "tok_s": round(tps, 1)}
            rows.append(row)
            print(row, flush=True)

    run("mlx-lm generate_step", lambda: generate_step(prompt, target, max_tokens=n))
    run("mlx-lm speculative k=2", lambda: speculative_generate_step(
        prompt, target, drafter, num_draft_tokens=2, max_tokens=n))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--parts-bc", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    global TINY
    TINY = args.tiny
    if args.parts_bc:  # a subprocess: MLX reads MLX_CUDA_USE_CUDNN_SDPA once
        print(json.dumps(part_b(args.quick) + part_c(args.quick)))
        return
    print(f"device={mx.default_device()} mlx={mx.__version__} "
          f"cuda={getattr(mx, 'cuda', None) and mx.cuda.is_available()}", flush=True)
    rows = part_a(args.quick)
    for cudnn in ("1", "0"):
        env = {**os.environ, "MLX_CUDA_USE_CUDNN_SDPA": cudnn}
        proc = subprocess.run([sys.executable, __file__, "--parts-bc"]
                              + (["--quick"] if args.quick else [])
                              + (["--tiny"] if args.tiny else []),
                              env=env, capture_output=True, text=True, timeout=400)
        if proc.returncode:
            print(proc.stderr[-2000:], flush=True)
            continue
        for r in json.loads(proc.stdout.strip().splitlines()[-1]):
            r["cudnn_sdpa"] = cudnn
            rows.append(r)
            print(r, flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    print("\nA: sdpa ms per call (grow: key length +1 per call; same: repeated length)")
    for r in rows:
        if r["part"] == "A":
            print(f"  {r['dtype']:<8} q_len={r['width']}  grow {r['grow_ms']:>8.3f}  "
                  f"same {r['same_ms']:>7.3f}  padded {r['padded_ms']}")
    print("B: bf16 llama 2048x8, ms per pass (median, max), cache +1 token per pass")
    for r in rows:
        if r["part"] == "B":
            print(f"  cuDNN SDPA {r['cudnn_sdpa']}  {r['widths']:<16} {r['ms_per_pass']:>8.3f} "
                  f"{r['max_ms']:>8.1f}")
    print("C: mlx-lm tok/s")
    for r in rows:
        if r["part"] == "C":
            print(f"  cuDNN SDPA {r['cudnn_sdpa']}  {r['row']:<26} {r['pass']:<7} "
                  f"{r['tok_s']:>8.1f}")


if __name__ == "__main__":
    main()
