"""How long the ``exo-spec`` command takes to start: ``--help``, every subcommand's
``--help``, and ``exo-spec nodes`` against a port nothing listens on (it starts,
dials, and reports UNAVAILABLE). Subcommands import what they run only when they
run it, so none of these should load MLX-LM (``exo_spec.commands``).

    python benchmarks/cli_startup.py [--runs 5]

Prints the median and the slowest of the runs for each command, in seconds.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time

COMMANDS = [
    [],
    *([name] for name in ("demo", "generate", "serve", "coordinator", "worker", "nodes",
                          "jobs", "bench", "make-models")),
]


def seconds(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    exe = shutil.which("exo-spec") or sys.exit("exo-spec is not on PATH: pip install -e .")
    cases = [[exe, *c, "--help"] for c in COMMANDS]
    cases.append([exe, "nodes", "--coordinator", "127.0.0.1:1"])
    print(f"{'command':<48} {'median':>7} {'max':>7}")
    for argv in cases:
        runs = [seconds(argv) for _ in range(args.runs)]
        print(f"{' '.join(['exo-spec', *argv[1:]]):<48} {statistics.median(runs):7.3f} "
              f"{max(runs):7.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
