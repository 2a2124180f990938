"""The longest stall running rows of a ``BatchDecoder`` see while a long prompt joins.

``--rows`` sequences decode (plainly, or with ``--drafter``, k = 2); then a prompt of
``--prompt-tokens`` tokens is added and read ``--chunks`` columns per step (one value
at least as long as the prompt: read in one step, as without interleaving). Every
step the running rows emit; a step's wall time is how long they waited for it.
Prints, per chunk size, the median step before the join, the longest step while
the prompt was read, and the steps it took to join. Synthetic llama models
(``exo_spec.models.synthetic``, random weights) of ``--hidden-size`` and ``--layers``:

    python benchmarks/batch_join_stall.py
    python benchmarks/batch_join_stall.py --chunks 4096 512 64 --drafter
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import mlx.core as mx

from exo_spec.engine.batch import BatchDecoder, BatchRequest
from exo_spec.models import synthetic
from exo_spec.models.load import load


def models(out: Path, hidden_size: int, layers: int, drafter: bool):
    tokenizer = out / "tokenizer"
    synthetic.write_tokenizer(tokenizer)
    target = synthetic.write_llama(out / "target", tokenizer, hidden_size=hidden_size,
                                   num_hidden_layers=layers, intermediate_size=2 * hidden_size,
                                   num_attention_heads=max(hidden_size // 64, 1),
                                   num_key_value_heads=max(hidden_size // 128, 1), seed=0)
    small = synthetic.write_llama(out / "drafter", tokenizer, hidden_size=64,
                                  num_hidden_layers=1, seed=1) if drafter else None
    return load(str(target)).model, small and load(str(small)).model


def stall(target, drafter, chunk: int, rows: int, prompt_tokens: int) -> tuple[float, float, int]:
    """(median step before the join, longest step until it joined, steps it took)."""
    decoder = BatchDecoder(target, drafter, prefill_chunk=chunk)
    k = 2 if drafter is not None else None
    for r in range(rows):
        decoder.add(BatchRequest([5 + r, 17, 42, 99], 10_000, num_draft=k))
    before = []
    for _ in range(8):
        start = time.perf_counter()
        decoder.step()
        before.append(time.perf_counter() - start)
    joining = decoder.add(BatchRequest([(7 * i) % 400 + 3 for i in range(prompt_tokens)], 4,
                                       num_draft=k))
    longest, steps = 0.0, 0
    while True:
        start = time.perf_counter()
        out = decoder.step()
        longest = max(longest, time.perf_counter() - start)
        steps += 1
        assert sum(e.sequence != joining for e in out) == rows  # every running row emitted
        if any(e.sequence == joining for e in out):
            return statistics.median(before[2:]), longest, steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--prompt-tokens", type=int, default=2000)
    parser.add_argument("--chunks", type=int, nargs="+", default=[2000, 512, 128, 32])
    parser.add_argument("--hidden-size", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--drafter", action="store_true", help="a drafter model, k = 2")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as out:
        target, drafter = models(Path(out), args.hidden_size, args.layers, args.drafter)
        run(args, target, drafter)


def run(args, target, drafter) -> None:
    print(f"{mx.default_device()}: {args.rows} running rows, a {args.prompt_tokens}-token "
          f"prompt joins (hidden {args.hidden_size}, {args.layers} layers"
          f"{', drafter k = 2' if drafter else ''})")
    print(f"{'chunk':>6} {'step before (ms)':>17} {'longest stall (ms)':>19} {'steps to join':>14}")
    stall(target, drafter, args.chunks[0], args.rows, 64)  # warm-up
    for chunk in args.chunks:
        before, longest, steps = stall(target, drafter, chunk, args.rows, args.prompt_tokens)
        print(f"{chunk:>6} {before * 1e3:>17.1f} {longest * 1e3:>19.1f} {steps:>14}")


if __name__ == "__main__":
    main()
