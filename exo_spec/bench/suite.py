"""One bench: every row over interleaved repeats, then the table, the checks and
the JSON (``exo-spec bench`` parses the flags: ``commands.bench``)."""

from __future__ import annotations

import datetime
import json
import platform
import sys
from pathlib import Path

import mlx.core as mx

from ..models.load import ModelLoadError
from . import report
from .inputs import gather
from .rows import SINGLE, group_rows, single_rows


def _log(line: str) -> None:
    print(f"bench: {line}", file=sys.stderr, flush=True)


def run(args, ks: list[int], group_ks: list[str]) -> int:
    """``ks``, ``group_ks``: the draft lengths of single-machine and group rows."""
    try:
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
