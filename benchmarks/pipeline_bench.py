"""Decode speed and traffic of one target over 2 local ranks, plain beside speculative.

    python benchmarks/pipeline_bench.py [--size tiny|large] [--max-tokens N] [--repeats R]
                                        [--ranks N] [--work DIR]

Uses engine_bench's random-weight checkpoints and runs ``exo-spec generate
--local-ranks N --json`` per row, pipelined and tensor-parallel: plain, with the
small drafter, with the target drafting for itself, and with the qwen3_5 target's
own MTP head (pipeline only). Reports the median decode tok/s and, per round and
per token, what the ranks sent each other (commands, hidden rows, token ids; not
a tensor-parallel model's own all_sums). Random weights accept almost nothing,
so the drafter and MTP rows show overhead and the traffic of a round, not a
speed-up.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from engine_bench import DEFAULTS, PROMPT_CHARS, SIZES, checkpoint

from exo_spec.models import synthetic

# parallel, target, proposer, its flags. "self k=2" drafts with the target itself:
# every draft is accepted, so it shows a round's traffic spread over k+1 tokens.
ROWS = [
    ("pipeline", "llama", "none", ["--no-spec"]),
    ("pipeline", "llama", "draft k=2", ["--draft-model", "{drafter}", "--num-draft", "2"]),
    ("pipeline", "llama", "self k=2", ["--draft-model", "{llama}", "--num-draft", "2"]),
    ("pipeline", "qwen3_5", "none", ["--no-spec"]),
    ("pipeline", "qwen3_5", "mtp k=2", ["--mtp", "--num-draft", "2"]),
    ("tensor", "llama", "none", ["--no-spec"]),
    ("tensor", "llama", "draft k=2", ["--draft-model", "{drafter}", "--num-draft", "2"]),
    ("tensor", "llama", "self k=2", ["--draft-model", "{llama}", "--num-draft", "2"]),
]


def generate(model: Path, flags: list[str], prompt: str, max_tokens: int, ranks: int,
             parallel: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "exo_spec.cli", "generate", "--json", "--ignore-chat-template",
         "--model", str(model), "--prompt", prompt, "--max-tokens", str(max_tokens),
         "--local-ranks", str(ranks), "--parallel", parallel, *flags],
        capture_output=True, text=True, timeout=600, check=True)
    return json.loads(proc.stdout)["stats"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="tiny")
    ap.add_argument("--max-tokens", type=int, help="default: 128 tiny, 48 large")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path.home() / ".cache/exo-spec/bench",
                    help="where the checkpoints are written (reused across runs)")
    args = ap.parse_args()
    max_tokens = args.max_tokens or DEFAULTS[args.size][0]
    tokenizer = args.work / "tokenizer"
    if not (tokenizer / "tokenizer.json").is_file():
        synthetic.write_tokenizer(tokenizer)
    paths = {kind: checkpoint(args.work, kind, tokenizer, kwargs)
             for kind, kwargs in SIZES[args.size].items()}
    prompt = synthetic.corpus_text()[:PROMPT_CHARS]

    print(f"size={args.size} ranks={args.ranks} max_tokens={max_tokens} "
          f"repeats={args.repeats} (median) greedy")
    print(f"{'parallel':<9} {'target':<8} {'proposer':<12} {'tok/s':>8} {'accept':>7} "
          f"{'tok/round':>9} {'B/round':>9} {'msg/round':>9} {'B/token':>9}")
    for parallel, target, proposer, flags in ROWS:
        flags = [f.format(**paths) for f in flags]
        runs = [generate(paths[target], flags, prompt, max_tokens, args.ranks, parallel)
                for _ in range(args.repeats)]
        s = runs[-1]
        print(f"{parallel:<9} {target:<8} {proposer:<12} "
              f"{statistics.median(r['decode_tps'] for r in runs):>8.1f} "
              f"{s['acceptance_rate']:>7.2f} {s['tokens_per_round']:>9.2f} "
              f"{s['bytes_per_round']:>9.0f} {s['messages_per_round']:>9.2f} "
              f"{s['bytes_per_round'] / s['tokens_per_round']:>9.0f}")


if __name__ == "__main__":
    main()
