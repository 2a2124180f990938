"""Decode speed of plain and speculative decoding, exo-spec beside mlx-lm.

    python benchmarks/engine_bench.py [--size tiny|large] [--max-tokens N] [--repeats R]
                                      [--json OUT] [--work DIR]

Writes random-weight checkpoints with ``exo_spec.models.synthetic`` (``tiny``: the
test fixtures; ``large``: ~25M-parameter targets), then, in one process and on
the same target, prompt and token count, times greedy decoding for every row:
mlx-lm ``generate_step`` and ``speculative_generate_step``, and exo-spec's
``SpecDecoder`` plain, with the drafter and with the checkpoint's MTP head.
Decode time runs from the first token the consumer receives to the last one, the
same for every row; every row is warmed up with a short run and the repeats are interleaved.
Random weights accept almost nothing, so the speculative rows show overhead.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten
from mlx_lm.generate import generate_step, speculative_generate_step

from exo_spec.models import synthetic
from exo_spec.models.load import LoadedModel, load
from exo_spec.session import Models, make_decoder
from exo_spec.spec import Sampling, SpecDecoder

SIZES = {  # per size: target llama, drafter llama, hybrid qwen3_5 with MTP (writer kwargs)
    "tiny": {
        "llama": {"seed": 0},
        "drafter": {"hidden_size": 32, "num_hidden_layers": 1, "seed": 1},
        "qwen3_5": {"seed": 2},
    },
    "large": {  # ~25M-parameter targets: every row runs in minutes on two CPU cores
        "llama": {"hidden_size": 512, "num_hidden_layers": 8, "num_attention_heads": 8,
                  "num_key_value_heads": 2, "intermediate_size": 1536, "seed": 0},
        "drafter": {"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
                    "num_key_value_heads": 1, "intermediate_size": 384, "seed": 1},
        "qwen3_5": {"hidden_size": 512, "num_hidden_layers": 8, "seed": 2},
    },
}
DEFAULTS = {"tiny": (128, 5), "large": (48, 3)}  # per size: max tokens, repeats
PROMPT_CHARS = 400
WARMUP_TOKENS = 16  # enough for every row to run speculative rounds
KS = (1, 2, 3, 4)


@dataclass
class Run:
    tokens: list[int]
    decode_s: float
    tokens_per_round: float
    drafted: int = 0
    accepted: int = 0


@dataclass
class Row:
    group: str
    name: str
    k: str  # the fixed draft length, "auto" when adaptive, "-" without a proposer
    run: Callable[[int], Run]  # max tokens -> one timed generation
    runs: list[Run]


def checkpoint(root: Path, kind: str, tokenizer: Path, kwargs: dict) -> Path:
    """The checkpoint for ``kind`` with ``kwargs``, written unless already cached."""
    name = kind + "".join(f"-{k}{v}" for k, v in sorted(kwargs.items()))
    out = root / name
    if not (out / "model.safetensors").is_file():
        writer = synthetic.write_qwen3_5 if kind == "qwen3_5" else synthetic.write_llama
        writer(out, tokenizer, **kwargs)
    return out


def timed(chunks: Iterator[list[int]]) -> tuple[list[int], float]:
    """All tokens, and the seconds from receiving the first one to receiving the last."""
    tokens = list(next(chunks))
    start = time.perf_counter()
    for chunk in chunks:
        tokens += chunk
    return tokens, time.perf_counter() - start


def mlx_plain(model, prompt: mx.array, max_tokens: int) -> Run:
    steps = generate_step(prompt, model, max_tokens=max_tokens)
    tokens, seconds = timed([t] for t, _ in steps)
    return Run(tokens, seconds, 1.0)


def mlx_spec(model, drafter, k: int, prompt: mx.array, max_tokens: int) -> Run:
    flags: list[bool] = []  # per token: did it come from the drafter

    def chunks() -> Iterator[list[int]]:
        steps = speculative_generate_step(
            prompt, model, drafter, num_draft_tokens=k, max_tokens=max_tokens
        )
        for token, _, from_draft in steps:
            flags.append(from_draft)
            yield [token]

    tokens, seconds = timed(chunks())
    rounds = drafted = 0
    new_round = True
    for i, from_draft in enumerate(flags):
        if new_round:  # mlx-lm drafts min(k, tokens left) at the start of every round
            rounds += 1
            drafted += min(k, max_tokens - i)
        new_round = not from_draft
    return Run(tokens, seconds, len(tokens) / rounds, drafted, sum(flags))


def exo(models: Models, num_draft: int | None, prompt: list[int], max_tokens: int) -> Run:
    decoder: SpecDecoder = make_decoder(models, sampling=Sampling(), num_draft=num_draft)
    decoder.eos = set()  # fixed-length runs: mlx-lm's step functions do not stop at EOS either
    tokens, seconds = timed(decoder.generate(prompt, max_tokens))
    s = decoder.stats
    return Run(tokens, seconds, s.tokens_per_round, s.drafted, s.accepted)


def rows_for(group: str, target: LoadedModel, drafter: LoadedModel | None, mtp: bool,
             prompt: list[int]) -> list[Row]:
    p = mx.array(prompt, dtype=mx.uint32)

    def row(name: str, k: str, run: Callable[[int], Run]) -> Row:
        return Row(group, name, k, run, [])

    rows = [
        row("mlx-lm generate_step", "-", lambda n: mlx_plain(target.model, p, n)),
        row("exo-spec plain", "-", lambda n: exo(Models(target, None, "none"), None, prompt, n)),
    ]
    if drafter:
        models = Models(target, drafter, "draft")
        rows += [row("mlx-lm speculative", str(k),
                     lambda n, k=k: mlx_spec(target.model, drafter.model, k, p, n)) for k in KS]
        rows += [row("exo-spec drafter", str(k), lambda n, k=k: exo(models, k, prompt, n))
                 for k in KS]
        rows.append(row("exo-spec drafter", "auto", lambda n: exo(models, None, prompt, n)))
    if mtp:
        models = Models(target, None, "mtp")
        rows += [row("exo-spec mtp", str(k), lambda n, k=k: exo(models, k, prompt, n))
                 for k in KS]
        rows.append(row("exo-spec mtp", "auto", lambda n: exo(models, None, prompt, n)))
    return rows


def params(m: LoadedModel) -> str:
    return f"{sum(v.size for _, v in tree_flatten(m.model.parameters())) / 1e6:.1f}M"


def tps(run: Run) -> float:
    return (len(run.tokens) - 1) / run.decode_s


def summarize(row: Row, base: Row) -> dict:
    speeds = sorted(tps(r) for r in row.runs)
    median = statistics.median(speeds)
    last = row.runs[-1]
    return {
        "group": row.group,
        "row": row.name,
        "k": row.k,
        "decode_tps": round(median, 2),
        "spread_pct": round(100 * (speeds[-1] - speeds[0]) / median, 1),
        "acceptance": round(last.accepted / last.drafted, 3) if last.drafted else None,
        "tokens_per_round": round(last.tokens_per_round, 2),
        "vs_mlx_plain": round(median / statistics.median(tps(r) for r in base.runs), 3),
        "same_output": all(r.tokens == base.runs[0].tokens for r in row.runs),
    }


def print_table(title: str, results: list[dict]) -> None:
    print(f"\n{title}")
    header = f"{'row':<22} {'k':>4} {'tok/s':>8} {'spread':>7} {'accept':>7} " \
             f"{'tok/rnd':>7} {'vs mlx':>7}  output"
    print(header)
    print("-" * len(header))
    for r in results:
        accept = "-" if r["acceptance"] is None else f"{100 * r['acceptance']:.0f}%"
        same = "same" if r["same_output"] else "DIFFERS"
        print(f"{r['row']:<22} {r['k']:>4} {r['decode_tps']:>8.1f} {r['spread_pct']:>6.1f}% "
              f"{accept:>7} {r['tokens_per_round']:>7.2f} {r['vs_mlx_plain']:>7.3f}  {same}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="tiny")
    ap.add_argument("--max-tokens", type=int, help="default: 128 tiny, 48 large")
    ap.add_argument("--repeats", type=int, help="default: 5 tiny, 3 large")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--work", type=Path, default=Path.home() / ".cache/exo-spec/bench",
                    help="where the checkpoints are written (reused across runs)")
    args = ap.parse_args()
    max_tokens, repeats = DEFAULTS[args.size]
    max_tokens, repeats = args.max_tokens or max_tokens, args.repeats or repeats

    tokenizer = args.work / "tokenizer"
    if not (tokenizer / "tokenizer.json").is_file():
        synthetic.write_tokenizer(tokenizer)
    sizes = SIZES[args.size]
    llama, drafter, qwen = (load(str(checkpoint(args.work, kind, tokenizer, sizes[kind])))
                            for kind in ("llama", "drafter", "qwen3_5"))
    prompt = llama.tokenizer.encode(synthetic.corpus_text()[:PROMPT_CHARS])
    groups = {
        f"llama {params(llama)} + drafter {params(drafter)}": (llama, drafter, False),
        f"qwen3_5 hybrid {params(qwen)} + its MTP head": (qwen, None, True),
    }
    rows = [row for group, (target, draft, mtp) in groups.items()
            for row in rows_for(group, target, draft, mtp, prompt)]
    for row in rows:  # warm-up: MLX builds its kernels on first use
        row.run(WARMUP_TOKENS)
        mx.synchronize()
    for i in range(repeats):
        print(f"repeat {i + 1}/{repeats}", file=sys.stderr)
        for row in rows:
            row.runs.append(row.run(max_tokens))
            mx.synchronize()

    print(f"size={args.size} prompt={len(prompt)} tokens max_tokens={max_tokens} "
          f"repeats={repeats} device={mx.default_device()} greedy")
    results = []
    for group in groups:
        group_rows = [r for r in rows if r.group == group]
        table = [summarize(r, group_rows[0]) for r in group_rows]
        print_table(group, table)
        results += table
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
