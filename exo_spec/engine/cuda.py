"""What exo-spec changes on MLX's CUDA backend, and why.

Attention. MLX sends half-precision attention with more than one query row to
cuDNN and builds one cuDNN graph per exact (query shape, key shape, strides).
mlx-lm's KV caches hand attention the keys cut to the current length, so every
verify round, every replay after a rejection and every proposer catch-up is a
shape never seen before: a graph build that takes many times as long as the
whole round (benchmarks/cuda_verify_width.py measures both). Without
cuDNN, MLX runs its own kernels, which take any length: a vector kernel for up
to 3 query rows, matmul + softmax beyond. ``configure()`` turns cuDNN attention
off (``MLX_CUDA_USE_CUDNN_SDPA=0``) on a CUDA machine unless that variable is
set already. MLX reads it once, at the first attention call of the process, so
this runs when ``exo_spec.engine`` is imported, before any model runs; it applies
to everything in the process, mlx-lm's own decoding too.

Quantized weights. MLX multiplies up to 7 rows by 4- or 8-bit weights with a
kernel it ships, and 8 rows or more (affine, group size 64, as mlx-community
checkpoints are) with a CUTLASS kernel it compiles with NVRTC on first use, one
per row tile of 16, 32 and 64 rows: tens of seconds each, then kept under
``/tmp/mlx/<version>/ptx`` (``MLX_PTX_CACHE_DIR``). Compiled on first use, they
would stall a job for that long the first time a proposer catches up on 8 or more
tokens; ``build_quantized_kernels`` compiles them while the model loads instead.
"""

from __future__ import annotations

import os
import sys
import time

import mlx.core as mx
import mlx.nn as nn

# One width in each of MLX's row tiles of quantized matmul (16, 32, 64 rows).
QMM_TILE_ROWS = (8, 17, 33)
QUANTIZED = (nn.QuantizedLinear, nn.QuantizedEmbedding)

CUDNN_SDPA = "MLX_CUDA_USE_CUDNN_SDPA"


def on_cuda() -> bool:
    """Whether MLX runs on its CUDA backend here."""
    cuda = getattr(mx, "cuda", None)
    return bool(cuda and cuda.is_available() and mx.default_device() == mx.gpu)


def build_quantized_kernels(model: nn.Module) -> None:
    """On CUDA, run ``model`` once per row tile on a scratch cache so MLX compiles its
    quantized matmul kernels now, not in the middle of a job. Elsewhere, and for a
    model without quantized layers, nothing."""
    if not on_cuda() or not any(isinstance(m, QUANTIZED) for m in model.modules()):
        return
    # Here, not at the top: every command imports this module, and the cluster's
    # client commands must not pay for importing mlx-lm.
    from mlx_lm.models.cache import make_prompt_cache

    for i, rows in enumerate(QMM_TILE_ROWS, 1):
        start = time.perf_counter()
        mx.eval(model(mx.zeros((1, rows), dtype=mx.uint32), cache=make_prompt_cache(model)))
        seconds = time.perf_counter() - start
        if seconds > 1.0:  # built now, not found on disk: say so, one line per tile
            print(f"exo-spec: built MLX's CUDA kernels for quantized weights, row tile "
                  f"{i}/{len(QMM_TILE_ROWS)}, in {seconds:.0f}s (kept for later runs on this "
                  f"machine)", file=sys.stderr, flush=True)


def configure() -> None:
    if on_cuda():
        os.environ.setdefault(CUDNN_SDPA, "0")
