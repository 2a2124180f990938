"""The ``exo-spec`` command."""

from __future__ import annotations

import argparse
import importlib
import sys

# The module that defines and runs each subcommand (see ``commands``). Only the one
# named on the command line is imported.
COMMANDS = {
    "demo": "commands.demo",
    "generate": "commands.generate",
    "coordinator": "commands.coordinator",
    "nodes": "commands.cluster",
    "jobs": "commands.cluster",
    "bench": "commands.bench",
    "make-models": "commands.make_models",
    "worker": "commands.worker",
    "serve": "commands.serve",
    "key": "commands.key",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage dump
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser for ``command``, or for every command when it names none of them."""
    parser = _Parser(prog="exo-spec", description="Speculative LLM inference on MLX.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    modules = [COMMANDS[command]] if command in COMMANDS else COMMANDS.values()
    for name in dict.fromkeys(modules):
        importlib.import_module(f".{name}", __package__).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv[0] if argv else None).parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
