"""``exo-spec bench``: decode speed of plain and speculative decoding, exo-spec
beside mlx-lm (``bench.suite`` runs it)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..models.quantize import QUANTIZE_BITS


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="decode speed of plain and speculative decoding, "
                                     "exo-spec beside mlx-lm")
    p.add_argument("--models", help="what `exo-spec make-models --out DIR` wrote")
    p.add_argument("--model", help="the target (overrides DIR/target)")
    p.add_argument("--draft-model", help="the drafter (overrides DIR/drafter)")
    p.add_argument("--untrained-draft-model",
                   help="a drafter that does not fit (overrides DIR/untrained-drafter)")
    p.add_argument("--prompts", type=Path, help="JSON list of prompt strings "
                                                "(default DIR/prompts.json)")
    p.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    p.add_argument("--num-prompts", type=int, default=4, help="use the first N prompts")
    p.add_argument("--edit-task", action="store_true",
                   help="also decode an edit task: a file in the prompt, its rewrite with "
                        "one name changed in the output (where prompt lookup drafts well)")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3,
                   help="timed repeats per row, interleaved across rows")
    p.add_argument("--warmup-tokens", type=int, default=16,
                   help="untimed tokens first: once per single-machine row, and in every "
                        "group launch before its timed decode (0: none)")
    p.add_argument("--ks", default="1,2,3,4", help="fixed draft lengths to run")
    p.add_argument("--local-ranks", type=int,
                   help="also pipeline the target over N local processes")
    p.add_argument("--parallel", choices=("pipeline", "tensor"), default="pipeline",
                   help="with --local-ranks: layer ranges per rank, or mlx-lm's tensor sharding")
    p.add_argument("--group-prompts", type=int, default=2,
                   help="prompts per group repeat (each one is a launch)")
    p.add_argument("--group-repeats", type=int, help="timed repeats of group rows "
                                                      "(default: --repeats)")
    p.add_argument("--group-ks", default="auto",
                   help="draft lengths of the group's speculative rows (auto or numbers)")
    p.add_argument("--group-proposers", default="mtp,drafter",
                   help="speculative group rows: mtp, drafter or both")
    p.add_argument("--only-groups", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--quantize", type=int, choices=QUANTIZE_BITS, metavar="BITS",
                   help="quantize the models' linear and embedding layers to this many "
                        "bits (group size 64) as they load, for every row, group rows "
                        "included, as mlx-community checkpoints are")
    p.add_argument("--json", type=Path, help="write every figure here")
    p.set_defaults(run=run)


def _check(args) -> tuple[list[int], list[str]]:
    for name in ("max_tokens", "repeats", "num_prompts", "group_prompts", "group_repeats"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup_tokens < 0:
        raise ValueError("--warmup-tokens must be >= 0")
    if args.local_ranks is not None and args.local_ranks < 2:
        raise ValueError("--local-ranks must be >= 2")
    try:
        ks = [int(k) for k in args.ks.split(",") if k]
        group_ks = [k if k == "auto" else str(int(k)) for k in args.group_ks.split(",") if k]
    except ValueError:
        raise ValueError("--ks and --group-ks take numbers like 1,2,3 (and auto)") from None
    if any(k < 1 for k in ks) or any(k != "auto" and int(k) < 1 for k in group_ks):
        raise ValueError("draft lengths must be >= 1")
    return ks, group_ks


def run(args) -> int:
    try:
        ks, group_ks = _check(args)
    except ValueError as e:
        print(f"exo-spec bench: error: {e}", file=sys.stderr)
        return 2
    from ..bench import suite

    return suite.run(args, ks, group_ks)
