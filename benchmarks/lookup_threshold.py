"""Which prompt-lookup matches should replace a model proposer's draft.

    exo-spec make-models --size demo --out DIR
    python benchmarks/lookup_threshold.py DIR [--ks 2,3,4] [--tokens 128]

Greedy, fixed k, on DIR's first 4 held-out prompts and the bench's edit task
(``bench.inputs.EDIT_TASK``): tokens per round and acceptance of the lookup alone,
of each model proposer (DIR's MTP head, DIR/drafter) alone, and of each beside the
lookup with its copy taken from a match of at least 1, 2 or 3 tokens
(``PromptLookup.combined_min_n``). Acceptance and tokens per round at a fixed k do
not depend on timing, so the figures repeat on any machine. Cited by
``engine/prompt_lookup.py COMBINED_MIN_N`` and docs/GENERATE.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from exo_spec.bench.inputs import EDIT_TASK
from exo_spec.engine import CachedModel, DraftModel, FixedDraftLength, Mtp, SpecDecoder
from exo_spec.engine.prompt_lookup import PromptLookup
from exo_spec.models.load import load
from exo_spec.models.mtp import load_mtp


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("models", type=Path, help="what `exo-spec make-models` wrote")
    parser.add_argument("--ks", default="2,3,4")
    parser.add_argument("--tokens", type=int, default=128)
    args = parser.parse_args()
    target = load(str(args.models / "target"))
    drafter = load(str(args.models / "drafter")).model
    head = load_mtp(target.path, target.model)
    prompts = {"held-out": json.loads((args.models / "prompts.json").read_text())[:4],
               "edit": [EDIT_TASK]}
    proposers = {"mtp": lambda: Mtp(head, target.model), "drafter": lambda: DraftModel(drafter),
                 None: lambda: None}

    def measure(proposer: str | None, min_n: int | None, k: int) -> str:
        cells = []
        for name, texts in prompts.items():
            drafted = accepted = rounds = decoded = 0
            for text in texts:
                lookup = None if min_n is None else PromptLookup(combined_min_n=min_n)
                decoder = SpecDecoder(CachedModel(target.model), proposers[proposer](),
                                      draft_length=FixedDraftLength(k), lookup=lookup)
                for _ in decoder.generate(target.tokenizer.encode(text), args.tokens):
                    pass
                s = decoder.stats
                drafted, accepted = drafted + s.drafted, accepted + s.accepted
                rounds, decoded = rounds + s.rounds, decoded + s.generation_tokens - 1
            cells.append(f"{name} {decoded / rounds:.2f} ({100 * accepted / drafted:.0f}%)")
        return ", ".join(cells)

    for k in map(int, args.ks.split(",")):
        print(f"k={k}: tokens/round (acceptance)")
        print(f"  lookup alone          {measure(None, 1, k)}")
        for proposer in ("mtp", "drafter"):
            print(f"  {proposer:<8} alone        {measure(proposer, None, k)}")
            for min_n in (1, 2, 3):
                print(f"  {proposer:<8} + lookup {min_n}   {measure(proposer, min_n, k)}")


if __name__ == "__main__":
    main()
