"""Starting the next round ahead of reading the current one: forced on, forced off
and as the engine decides (``RoundPipelining``), for the MTP head of a make-models
target. Prints decode tok/s, tokens per round and the rounds started ahead and
taken back (median tok/s over repeats, of the last repeat otherwise). Figures:
docs/BENCHMARKS.md.

    python benchmarks/pipelining.py DIR [--ks 1,2] [--max-tokens 256] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from exo_spec.decoder_factory import make_decoder
from exo_spec.engine import Sampling
from exo_spec.engine.pipelining import RoundPipelining
from exo_spec.model_set import load_models
from exo_spec.prompt import encode_prompt
from exo_spec.spec_mode import SpecMode

POLICIES = {"on": True, "off": False, "measured": None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", type=Path, help="what `exo-spec make-models --out` wrote")
    parser.add_argument("--ks", default="1,2")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    models = load_models(str(args.models / "target"), spec=SpecMode.MTP)
    text = json.loads((args.models / "prompts.json").read_text())[0]
    prompt = encode_prompt(models.target.tokenizer, text, chat_template=False)
    runs = {(k, name): [] for k in map(int, args.ks.split(",")) for name in POLICIES}
    # Repeats are interleaved across rows, so that a machine speeding up or slowing
    # down over the run moves every row alike; the first round of all is warm-up.
    for repeat in range(args.repeats + 1):
        for (k, name), decoders in runs.items():
            decoder = make_decoder(models, sampling=Sampling(), num_draft=k)
            decoder.pipelining = RoundPipelining(forced=POLICIES[name])
            decoder.eos = set()
            for _ in decoder.generate(prompt, args.max_tokens):
                pass
            if repeat:
                decoders.append(decoder)
    for (k, name), decoders in runs.items():
        last = decoders[-1]
        tps = statistics.median(d.stats.decode_tps for d in decoders)
        print(f"MTP k={k} ahead {name:8s} {tps:7.1f} tok/s  "
              f"{last.stats.tokens_per_round:.2f} tokens/round  "
              f"{last.rounds_pipelined} started ahead, {last.rounds_taken_back} taken back")

if __name__ == "__main__":
    main()
