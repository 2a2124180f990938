"""What adaptive k costs with a useless drafter, step by step.

    python benchmarks/adaptive_probe.py [--large] [--tokens N] [--repeats R]

Random-weight llama target and drafter from exo_spec.models.synthetic (bf16 with
--large: a 97M target, hidden 1024 and 8 layers, and a 2-layer drafter), a
200-token prompt, greedy. Plain decoding and adaptive k with the drafter run
interleaved after one untimed run each; for every adaptive run it prints the
plain steps (count, median, sum) and each speculative round with its position
and time, so the probes and what they cost can be read off directly.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import mlx.core as mx

from exo_spec.decoder_factory import make_decoder
from exo_spec.engine import Sampling
from exo_spec.model_set import ModelSet
from exo_spec.models import synthetic
from exo_spec.models.load import load
from exo_spec.spec_mode import ProposerKind

PROMPT = list(range(5, 205))


def write_pair(root: Path, large: bool) -> tuple[Path, Path]:
    tok = root / "tokenizer"
    synthetic.write_tokenizer(tok)
    if large:
        target = dict(hidden_size=1024, num_hidden_layers=8, num_attention_heads=16,
                      num_key_value_heads=4, intermediate_size=3072)
        drafter = dict(hidden_size=256, num_hidden_layers=2, intermediate_size=512)
    else:
        target, drafter = {}, dict(hidden_size=32, num_hidden_layers=1, intermediate_size=64)
    return (synthetic.write_llama(root / "target", tok, seed=1, **target),
            synthetic.write_llama(root / "drafter", tok, seed=2, **drafter))


def decode(models: ModelSet, tokens: int, rounds: list | None = None) -> float:
    """Decode seconds; ``rounds`` gets (k, accepted, seconds) of every step."""
    decoder = make_decoder(models, sampling=Sampling())
    decoder.eos = set()
    if rounds is not None:
        observe = decoder.draft_length.observe

        def logged(k, accepted, seconds):
            rounds.append((k, accepted, seconds))
            observe(k, accepted, seconds)

        decoder.draft_length.observe = logged
    for _ in decoder.generate(PROMPT, tokens):
        pass
    return decoder.stats.decode_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large", action="store_true")
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        target_path, drafter_path = write_pair(Path(tmp), args.large)
        target, drafter = load(str(target_path)), load(str(drafter_path))
    if args.large:
        target.model.set_dtype(mx.bfloat16)
        drafter.model.set_dtype(mx.bfloat16)
    plain = ModelSet(target, None, ProposerKind.NONE)
    useless = ModelSet(target, drafter, ProposerKind.DRAFT)
    decode(plain, args.tokens)
    decode(useless, args.tokens)
    times: dict[str, list[float]] = {"plain": [], "adaptive, useless drafter": []}
    logs = []
    for _ in range(args.repeats):
        times["plain"].append(decode(plain, args.tokens))
        logs.append([])
        times["adaptive, useless drafter"].append(decode(useless, args.tokens, logs[-1]))
    for name, seconds in times.items():
        print(f"{name}: decode ms {[round(s * 1e3, 1) for s in seconds]}, "
              f"{args.tokens / statistics.median(seconds):.1f} tok/s (median)")
    for i, log in enumerate(logs):
        steps = [s for k, _, s in log if k == 0 and s is not None]  # None: not a sample
        untimed = sum(1 for k, _, s in log if k == 0 and s is None)
        rounds = [(at, k, s) for at, (k, _, s) in enumerate(log) if k]
        print(f"repeat {i}: {len(steps)} timed plain steps (and {untimed} untimed), median "
              f"{statistics.median(steps) * 1e3:.2f} ms, sum {sum(steps) * 1e3:.1f} ms; "
              f"{len(rounds)} rounds, "
              f"{sum(s for *_, s in rounds) * 1e3:.1f} ms: "
              + ", ".join(f"@{at} k={k} {s * 1e3:.1f} ms" for at, k, s in rounds))


if __name__ == "__main__":
    main()
