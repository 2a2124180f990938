"""What exo-spec changes on MLX's CUDA backend, and why.

Attention. MLX sends half-precision attention with more than one query row to
cuDNN and builds one cuDNN graph per exact (query shape, key shape, strides).
mlx-lm's KV caches hand attention the keys cut to the current length, so every
verify round, every replay after a rejection and every proposer catch-up is a
shape never seen before: a graph build of ~40 ms on an H100 where a whole round
takes a few ms (benchmarks/cuda_verify_width.py; docs/BENCHMARKS.md). Without
cuDNN, MLX runs its own kernels, which take any length: a vector kernel for up
to 3 query rows, matmul + softmax beyond. ``configure()`` turns cuDNN attention
off (``MLX_CUDA_USE_CUDNN_SDPA=0``) on a CUDA machine unless that variable is
set already. MLX reads it once, at the first attention call of the process, so
this runs when ``exo_spec.spec`` is imported, before any model runs; it applies
to everything in the process, mlx-lm's own decoding too.
"""

from __future__ import annotations

import os

import mlx.core as mx

CUDNN_SDPA = "MLX_CUDA_USE_CUDNN_SDPA"


def on_cuda() -> bool:
    """Whether MLX runs on its CUDA backend here."""
    cuda = getattr(mx, "cuda", None)
    return bool(cuda and cuda.is_available() and mx.default_device() == mx.gpu)


def configure() -> None:
    if on_cuda():
        os.environ.setdefault(CUDNN_SDPA, "0")
