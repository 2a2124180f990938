"""Starting the next round ahead of reading the current one: forced on, forced off
and as the engine decides (``RoundAhead``), for the MTP head of a make-models
target. Prints decode tok/s, tokens per round and the rounds started ahead and
taken back (median tok/s over repeats). Figures: docs/BENCHMARKS.md.

    python benchmarks/round_ahead.py DIR [--ks 1,2] [--max-tokens 256] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from exo_spec.session import encode_prompt, load_models, make_decoder
from exo_spec.spec import Sampling
from exo_spec.spec.round_ahead import RoundAhead

POLICIES = {"on": True, "off": False, "measured": None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", type=Path, help="what `exo-spec make-models --out` wrote")
    parser.add_argument("--ks", default="1,2")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    models = load_models(str(args.models / "target"), mtp=True)
    text = json.loads((args.models / "prompts.json").read_text())[0]
    prompt = encode_prompt(models.target.tokenizer, text, chat_template=False)
    for k in map(int, args.ks.split(",")):
        for name, forced in POLICIES.items():
            tps = []
            for _ in range(args.repeats + 1):  # the first run warms up
                decoder = make_decoder(models, sampling=Sampling(), num_draft=k)
                decoder.round_ahead = RoundAhead(forced=forced)
                decoder.eos = set()
                for _ in decoder.generate(prompt, args.max_tokens):
                    pass
                tps.append(decoder.stats.decode_tps)
            print(f"MTP k={k} ahead {name:8s} {statistics.median(tps[1:]):7.1f} tok/s  "
                  f"{decoder.stats.tokens_per_round:.2f} tokens/round  "
                  f"{decoder.rounds_ahead} started ahead, {decoder.rounds_taken_back} taken back",
                  flush=True)


if __name__ == "__main__":
    main()
