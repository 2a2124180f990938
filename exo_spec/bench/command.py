"""``exo-spec bench``: the CLI around rows, runners and report."""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
from pathlib import Path

import mlx.core as mx

from ..models.load import QUANTIZE_BITS, ModelLoadError
from . import report
from .inputs import gather
from .rows import SINGLE, group_rows, single_rows


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


def _log(line: str) -> None:
    print(f"bench: {line}", file=sys.stderr, flush=True)


def run(args) -> int:
    try:
        ks, group_ks = _check(args)
        inputs = gather(args)
    except (ValueError, ModelLoadError, OSError) as e:
        print(f"exo-spec bench: error: {e}", file=sys.stderr)
        return 2
    rows = [] if args.only_groups else single_rows(inputs, ks)
    if args.local_ranks:
        rows += group_rows(inputs, args.local_ranks, args.group_prompts, group_ks,
                           args.parallel, tuple(args.group_proposers.split(",")),
                           args.warmup_tokens)
    _log(f"{len(rows)} rows, {len(inputs.prompts)} prompts, {args.max_tokens} tokens, "
         f"{args.repeats} repeats on {mx.default_device()}")
    if args.warmup_tokens:  # MLX builds its kernels on first use
        for row in rows:
            if row.group == SINGLE:  # group launches warm up inside (--warmup-tokens)
                row.run(args.warmup_tokens, row.prompts[:1])
                mx.synchronize()
    eos = set(inputs.target.tokenizer.eos_token_ids)
    group_repeats = args.group_repeats or args.repeats
    for i in range(max(args.repeats, group_repeats)):
        _log(f"repeat {i + 1}/{max(args.repeats, group_repeats)}")
        for row in rows:
            if i >= (args.repeats if row.group == SINGLE else group_repeats):
                continue
            run_ = row.run(args.max_tokens)
            if run_:
                row.runs.append(run_)
            mx.synchronize()
        if args.json:  # after every repeat, so a run cut short still leaves its figures
            _write(args, inputs, rows, report.summarize(rows, eos), done=False)
    results = report.summarize(rows, eos)
    desc = inputs.describe()
    t = desc["target"]
    bits = "".join(f" {b}-bit" for b in t["quantized_bits"])
    print(f"target {t['model_type']} {t['parameters'] / 1e6:.1f}M {t['dtype']}{bits}"
          + (f", drafter {desc['drafter']['parameters'] / 1e6:.1f}M" if desc["drafter"] else "")
          + f"; {len(inputs.prompts)} prompts, max_tokens={args.max_tokens}, "
          f"repeats={args.repeats} (median), greedy, device={mx.default_device()}")
    print(report.table(results))
    print(report.checks_text(report.checks(results)))
    if args.json:
        _write(args, inputs, rows, results, done=True)
    return 0


def _write(args, inputs, rows, results: list[dict], done: bool) -> None:
    doc = {
        "command": ["exo-spec", *sys.argv[1:]],
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "complete": done,
        "device": str(mx.default_device()),
        "cuda": bool(getattr(mx, "cuda", None) and mx.cuda.is_available()),
        "platform": f"{platform.system()} {platform.machine()}",
        "mlx": mx.__version__,
        "mlx_lm": _version("mlx_lm"),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                     if k != "run"},
        "models": inputs.describe(),
        "rows": results,
        "checks": report.checks(results),
        "reference_tokens": [p.tokens for p in rows[0].runs[0].prompts]
        if rows and rows[0].runs else None,
    }
    args.json.write_text(json.dumps(doc, indent=1))


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except (ImportError, AttributeError):
        return None
