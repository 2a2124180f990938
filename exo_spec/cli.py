"""The ``exo-spec`` command."""

from __future__ import annotations

import argparse
import sys

from . import demo, generate, remote
from .bench import command as bench
from .coordinator import main as coordinator
from .train import make_models
from .worker import main as worker


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage dump
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="exo-spec", description="Speculative LLM inference on MLX.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    demo.add_parser(sub)
    generate.add_parser(sub)
    coordinator.add_parser(sub)
    remote.add_parsers(sub)
    bench.add_parser(sub)
    make_models.add_parser(sub)
    worker.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
