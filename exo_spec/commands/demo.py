"""``exo-spec demo``: the whole product on this machine, offline (``exo_spec.demo``)."""

from __future__ import annotations

from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="run a speculative job across two local workers, offline")
    p.add_argument("--models", type=Path,
                   help="models made by `exo-spec make-models` (default: the cached demo models, "
                        "made on first use)")
    p.add_argument("--max-tokens", type=int, default=160)
    p.add_argument("--prompt", help="default: a held-out snippet of standard-library code")
    p.add_argument("--workers", type=int, default=2, help="local workers to pipeline across")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..demo import run

    return run(args)
