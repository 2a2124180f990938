"""mlx-lm's own non-speculative decode: the reference every parity test compares to."""

from __future__ import annotations

import contextlib
import io
from functools import cache
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.generate import generate_step
from mlx_lm.utils import load_model, quantize_model


def greedy_reference(model, prompt: list[int], max_tokens: int, **kwargs) -> list[int]:
    steps = generate_step(mx.array(prompt), model, max_tokens=max_tokens, **kwargs)
    return [token for token, _ in steps]


@cache
def quantized_by_mlx_lm(path: Path, bits: int) -> nn.Module:
    """The float checkpoint at ``path`` loaded and quantized by mlx-lm alone, as
    ``mlx_lm.convert -q --q-bits bits`` quantizes (group size 64): the target that
    ``--quantize bits`` decoding is compared with."""
    model, config = load_model(Path(path))
    with contextlib.redirect_stdout(io.StringIO()):  # its "[INFO] Quantized ..." line
        quantize_model(model, config, group_size=64, bits=bits)
    mx.eval(model.parameters())
    return model
