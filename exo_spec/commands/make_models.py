"""``exo-spec make-models``: train the demo, bench or test models offline
(``train.make_models``)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from ..train.sizes import SIZES, Size


def add_parser(sub) -> None:
    p = sub.add_parser("make-models", help="train a target with MTP head and drafters offline "
                                           "from the Python standard library")
    p.add_argument("--size", required=True, choices=list(SIZES))
    p.add_argument("--out", required=True, type=Path, help="directory to create")
    p.add_argument("--seed", type=int)
    p.add_argument("--max-steps", type=int, help=argparse.SUPPRESS)
    p.add_argument("--time-budget", type=float, help=argparse.SUPPRESS)
    # Smoke tests of a size on a machine too slow for it: a few steps of small batches.
    p.add_argument("--batch-size", type=int, help=argparse.SUPPRESS)
    p.add_argument("--distill-count", type=int, help=argparse.SUPPRESS)
    p.set_defaults(run=run)


def _overridden(size: Size, batch_size: int | None, distill_count: int | None) -> Size:
    if batch_size:
        def smaller(schedule):
            return schedule and dataclasses.replace(schedule, batch_size=batch_size)

        size = dataclasses.replace(
            size,
            target_schedule=smaller(size.target_schedule),
            drafter_schedule=smaller(size.drafter_schedule),
            dense_target_schedule=smaller(size.dense_target_schedule),
        )
    if distill_count:
        size = dataclasses.replace(size, distill_count=distill_count)
    return size


def run(args) -> int:
    out = args.out.expanduser()
    try:
        if args.seed is not None and not 0 <= args.seed < 2**63:  # MLX's and numpy's keys
            raise ValueError(f"--seed must be from 0 to {2**63 - 1}, got {args.seed}")
        if args.max_steps is not None and args.max_steps < 1:
            raise ValueError(f"--max-steps must be >= 1, got {args.max_steps}")
        if args.time_budget is not None and args.time_budget <= 0:
            raise ValueError(f"--time-budget must be > 0, got {args.time_budget}")
        for flag in ("batch_size", "distill_count"):
            if (value := getattr(args, flag)) is not None and value < 1:
                raise ValueError(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
        if out.exists() and not (out.is_dir() and not any(out.iterdir())):
            raise ValueError(f"{out} already exists; choose a new --out")
        size = _overridden(SIZES[args.size], args.batch_size, args.distill_count)
        start = time.perf_counter()
        from ..train.make_models import build_atomically

        manifest = build_atomically(size, out, seed=args.seed,
                                    max_steps=args.max_steps, time_budget_s=args.time_budget)
    except (ValueError, OSError) as e:
        print(f"exo-spec make-models: error: {e}", file=sys.stderr)
        return 2
    loss = {name: manifest[name]["final_loss"] for name in ("target", "drafter")}
    print(f"make-models: wrote {out} (target loss {loss['target'][1]:.3f}, MTP "
          f"{loss['target'][2]:.3f}, drafter {loss['drafter'][0]:.3f}) in "
          f"{time.perf_counter() - start:.0f}s", file=sys.stderr)
    return 0
