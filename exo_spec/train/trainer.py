"""The training loop: AdamW steps (compiled, except on CUDA) on random windows of a token stream.

Parameters stay float32; with a lower ``compute_dtype`` (bf16 on a GPU) the loss
reads a cast copy, so the gradients and the optimizer update stay in float32.
The step count is the schedule's ``max_steps`` or, with a time budget, as many
steps as the measured speed says fit (capped by ``max_steps``), refitted as the
run goes so the learning-rate schedule still decays to its end within the budget.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_map

from ..engine.cuda import on_cuda
from .sizes import Schedule

CALIBRATION_STEPS = 5  # timed after the first (compiling) step, to size a time budget


@dataclass
class TrainResult:
    steps: int
    seconds: float
    tokens: int
    first_loss: list[float]  # the loss function's outputs at step 1 ...
    final_loss: list[float]  # ... and averaged over the last steps
    losses: list[float] = field(default_factory=list)  # total loss per step


def batches(tokens: np.ndarray, batch_size: int, seq_len: int, seed: int):
    """Endless random windows of ``seq_len + 1`` tokens, seeded."""
    rng = np.random.default_rng(seed)
    width = seq_len + 1
    if len(tokens) < width:
        raise ValueError(f"corpus of {len(tokens)} tokens is shorter than one window ({width})")
    offsets = np.arange(width)
    while True:
        starts = rng.integers(0, len(tokens) - width + 1, size=batch_size)
        yield mx.array(tokens[starts[:, None] + offsets])


def learning_rate(step: int, total: int, s: Schedule) -> float:
    warmup = min(s.warmup_steps, max(1, total // 5))  # a short budgeted run still peaks
    if step < warmup:
        return s.lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    floor = s.lr * s.final_lr_fraction
    return floor + (s.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def _train_step(model: nn.Module, loss_fn: Callable, optimizer: optim.Optimizer,
                compute_dtype: mx.Dtype):
    master = {"params": model.trainable_parameters()}
    # The optimizer's state must exist before the first call: state that appears
    # inside the compiled function changes its inputs and compiles it a second time.
    optimizer.init(master["params"])

    def loss_of(params, tokens):
        model.update(tree_map(lambda p: p.astype(compute_dtype), params))
        outputs = loss_fn(model, tokens)
        return outputs[0].astype(mx.float32), outputs

    grad_fn = mx.value_and_grad(loss_of)
    state = [master, optimizer.state]

    def step(tokens):
        (_, outputs), grads = grad_fn(master["params"], tokens)
        grads, _ = optim.clip_grad_norm(grads, 1.0)
        master["params"] = optimizer.apply_gradients(grads, master["params"])
        return mx.stack([o.astype(mx.float32) for o in outputs])

    if on_cuda():
        # Compiling fuses elementwise ops into kernels that MLX's CUDA backend builds
        # with NVRTC: for the bench target over a minute before the first step, where
        # an uncompiled step takes a fraction of a second.
        return step, master
    # The model is an input too: a compiled function takes arrays it is not given for
    # constants, and with a frozen target that made the first step take seconds.
    return mx.compile(step, inputs=[*state, model], outputs=state), master


def train(
    model: nn.Module,
    loss_fn: Callable,
    tokens: np.ndarray,
    schedule: Schedule,
    *,
    name: str,
    seed: int,
    compute_dtype: mx.Dtype = mx.float32,
    max_steps: int | None = None,
    time_budget_s: float | None = None,
    log_every: int | None = None,
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
) -> TrainResult:
    """Train ``model`` in place on ``loss_fn(model, windows) -> (loss, *parts)``."""
    cap = total = min(schedule.max_steps, max_steps or schedule.max_steps)
    budget = time_budget_s if time_budget_s is not None else schedule.time_budget_s
    optimizer = optim.AdamW(learning_rate=schedule.lr, weight_decay=schedule.weight_decay)
    step_fn, master = _train_step(model, loss_fn, optimizer, compute_dtype)
    data = batches(tokens, schedule.batch_size, schedule.seq_len, seed)
    per_step = schedule.batch_size * schedule.seq_len
    every = log_every or max(1, total // 20)
    losses, recent = [], []
    first = None
    start = time.perf_counter()
    timed_from = None
    step = 0
    while step < total:
        optimizer.learning_rate = mx.array(learning_rate(step, total, schedule))
        out = step_fn(next(data))
        mx.eval(out, master, optimizer.state)
        values = out.tolist()
        step += 1
        if first is None:
            first, timed_from = values, time.perf_counter()
            log(f"{name}: step 1 (builds its kernels) took {timed_from - start:.1f}s")
        losses.append(values[0])
        recent = (recent + [values])[-max(1, min(20, total // 10)):]
        now = time.perf_counter()
        if budget is not None and step > CALIBRATION_STEPS and (
            step == 1 + CALIBRATION_STEPS or step % every == 0 or now - start > budget
        ):
            # Refit to the budget as the speed settles; the schedule follows the new total.
            step_s = (now - timed_from) / (step - 1)
            fits = step + int((budget - (now - start)) / step_s)
            total = max(step, min(cap, fits))
            if step == 1 + CALIBRATION_STEPS:
                every = log_every or max(1, total // 20)
        if step % every == 0 or step == total:
            # The first step compiles; speeds are measured from its end.
            step_s = (now - timed_from) / max(1, step - 1)
            rate = per_step / step_s if step > 1 else 0.0
            eta = (total - step) * step_s
            parts = " ".join(f"{v:.3f}" for v in values)
            log(f"{name}: step {step}/{total}  loss {parts}  {rate:,.0f} tok/s  "
                f"ETA {eta:.0f}s")
    model.update(master["params"])
    mx.eval(model.parameters())
    final = [sum(v[i] for v in recent) / len(recent) for i in range(len(recent[0]))]
    return TrainResult(steps=step, seconds=time.perf_counter() - start,
                       tokens=step * per_step, first_loss=first, final_loss=final,
                       losses=losses)
