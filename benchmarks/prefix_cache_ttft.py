"""Time to first token of a conversation's second turn, with the prefix cache and without.

Turn 1 is about ``--tokens`` tokens of real text (the Python standard library's own
sources, as ``exo_spec.train.corpus`` reads them) and its reply of ``--reply`` tokens;
turn 2 re-sends both and adds a short new message. Without the cache
turn 2 prefills all of it; with it (``JobSeries`` with a ``PrefixCache``, as a worker's
placement decodes) turn 2 starts from turn 1's stored caches and prefills only the reply
and the new message. Prints the median TTFT of each over ``--repeats`` (interleaved, after
one warm-up of each), their ratio, and whether both decodes of turn 2 gave the same
tokens (greedy, so they must).

Without ``--model`` it writes a synthetic llama (``exo_spec.models.synthetic``, random
weights, a BPE tokenizer trained on the stdlib) of ``--hidden-size`` and ``--layers``,
or with ``--synthetic qwen3_5`` a GatedDeltaNet hybrid with an MTP head:

    python benchmarks/prefix_cache_ttft.py                      # CPU-sized synthetic llama
    python benchmarks/prefix_cache_ttft.py --synthetic qwen3_5 --spec mtp
    python benchmarks/prefix_cache_ttft.py --model DIR/target --draft-model DIR/drafter
    python benchmarks/prefix_cache_ttft.py --model mlx-community/Qwen3-8B-4bit --spec none
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from exo_spec.engine import Sampling
from exo_spec.engine.prefix_cache import PrefixCache
from exo_spec.job_series import JobSeries
from exo_spec.model_set import ModelSet, load_models
from exo_spec.spec_mode import SpecMode
from exo_spec.train.corpus import training_documents

NEW_MESSAGE = "\n\nNow explain what the code above does, function by function.\n"


def synthetic_model(kind: str, out: Path, hidden_size: int, layers: int) -> Path:
    from exo_spec.models import synthetic

    tokenizer = out / "tokenizer"
    synthetic.write_tokenizer(tokenizer)
    if kind == "qwen3_5":
        return synthetic.write_qwen3_5(out / "qwen3_5", tokenizer, seed=2)
    return synthetic.write_llama(out / "llama", tokenizer, hidden_size=hidden_size,
                                 num_hidden_layers=layers, intermediate_size=2 * hidden_size,
                                 num_attention_heads=max(hidden_size // 64, 1),
                                 num_key_value_heads=max(hidden_size // 128, 1), seed=0)


def stdlib_tokens(models: ModelSet, count: int) -> list[int]:
    """The first ``count`` tokens of the stdlib's sources, in the corpus's order."""
    tokenizer = models.target.tokenizer
    tokens: list[int] = []
    for text in training_documents(max_chars=count * 8):
        tokens += tokenizer.encode(text)
        if len(tokens) >= count:
            return tokens[:count]
    raise SystemExit(f"the stdlib sources give only {len(tokens)} tokens")


def decode(series: JobSeries, models: ModelSet, prompt: list[int], max_tokens: int,
           num_draft: int | None):
    """(tokens, stats) of one job."""
    decoder = series.new_decoder(models, sampling=Sampling(), num_draft=num_draft)
    tokens = [t for chunk in decoder.generate(prompt, max_tokens) for t in chunk]
    return tokens, decoder.stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a checkpoint (default: write a synthetic one)")
    parser.add_argument("--draft-model")
    parser.add_argument("--spec", default="auto", choices=[m.value for m in SpecMode])
    parser.add_argument("--num-draft", type=int, help="fixed k (default: adaptive)")
    parser.add_argument("--synthetic", default="llama", choices=["llama", "qwen3_5"])
    parser.add_argument("--hidden-size", type=int, default=256, help="synthetic llama's")
    parser.add_argument("--layers", type=int, default=4, help="synthetic llama's")
    parser.add_argument("--tokens", type=int, default=4000, help="turn 1's prompt")
    parser.add_argument("--reply", type=int, default=64, help="turn 1's reply, in tokens")
    parser.add_argument("--max-tokens", type=int, default=8, help="turn 2's reply")
    parser.add_argument("--prefix-cache-mb", type=float, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.model:
        run(args, args.model)
        return
    with tempfile.TemporaryDirectory(prefix="exo-spec-prefix-bench-") as tmp:
        run(args, str(synthetic_model(args.synthetic, Path(tmp), args.hidden_size, args.layers)))


def run(args, model: str) -> None:
    models = load_models(model, args.draft_model, SpecMode(args.spec))
    turn1 = stdlib_tokens(models, args.tokens)
    reply, _ = decode(JobSeries(), models, turn1, args.reply, args.num_draft)
    turn2 = turn1 + reply + models.target.tokenizer.encode(NEW_MESSAGE)
    print(f"model {model} ({models.mode}), turn 1: {len(turn1)} prompt tokens and a reply of "
          f"{len(reply)}, turn 2: {len(turn2)} prompt tokens")

    plain, cached = JobSeries(), JobSeries(PrefixCache(int(args.prefix_cache_mb * 2**20)))
    runs: dict[str, list[float]] = {"without": [], "with": []}
    outputs: dict[str, list[int]] = {}
    # Repeats are interleaved, so that a machine speeding up or slowing down moves both
    # alike; the first of each is warm-up. Each cached turn 2 follows its own turn 1.
    for repeat in range(args.repeats + 1):
        tokens, stats = decode(plain, models, turn2, args.max_tokens, args.num_draft)
        assert stats.cached_prompt_tokens == 0
        outputs["without"] = tokens
        if repeat:
            runs["without"].append(stats.ttft_s)
        cached.prefix_cache.clear()
        decode(cached, models, turn1, args.reply, args.num_draft)
        tokens, stats = decode(cached, models, turn2, args.max_tokens, args.num_draft)
        outputs["with"] = tokens
        if repeat:
            runs["with"].append(stats.ttft_s)
        cached_tokens = stats.cached_prompt_tokens

    without, with_cache = (statistics.median(runs[k]) for k in ("without", "with"))
    print(f"turn 2 TTFT without the prefix cache: {without * 1000:9.1f} ms "
          f"(prefills {len(turn2)} tokens)")
    print(f"turn 2 TTFT with the prefix cache:    {with_cache * 1000:9.1f} ms "
          f"(prefills {len(turn2) - cached_tokens}, {cached_tokens} cached)")
    print(f"ratio: {without / with_cache:.1f}x lower; the same tokens: "
          f"{outputs['with'] == outputs['without']}")
    each = {k: ", ".join(f"{t * 1000:.1f}" for t in v) for k, v in runs.items()}
    print(f"each repeat: without {each['without']} ms; with {each['with']} ms")


if __name__ == "__main__":
    main()
