"""Host time of each piece of a round: building the lazy graph, launching it
(``mx.async_eval``) and waiting for it (``mx.eval``), on an 8-layer hybrid of the
bench target's width with random bf16 weights (with ``--quantize 8`` its linear
layers in 8 bits, as ``exo-spec bench --quantize 8`` runs them). On a GPU running
a small model the device finishes soon after the launch returns, so these are
what a round costs. Figures: docs/BENCHMARKS.md.

    python benchmarks/round_host_time.py [--quantize 4|8] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import mlx.core as mx

from exo_spec.decoder_factory import make_decoder
from exo_spec.engine import Sampling
from exo_spec.engine.verify import verify_greedy
from exo_spec.model_set import load_models
from exo_spec.models import synthetic
from exo_spec.models.quantize import QUANTIZE_BITS, quantize
from exo_spec.spec_mode import SpecMode

from host_timing import host_ms

REPEATS, WARMUP = 60, 10


def _target_pieces(target, width: int, report) -> None:
    fed = mx.array(list(range(5, 5 + width)), dtype=mx.uint32)

    def trim():
        for c in target.cache:
            if c.is_trimmable():
                c.trim(width)

    def captured():
        target.begin_round(width)
        return list(target(fed, hidden=True))

    report(f"target, {width} positions", host_ms(lambda: [mx.argmax(target(fed)[0], -1)], trim))
    report(f"target, {width} positions, captured",
           host_ms(captured, lambda: target.end_round(fed, 0)))


def _measure(decoder, k: int, report) -> None:
    target, mtp = decoder.target, decoder.proposer
    prompt = mx.array(list(range(3, 200)), dtype=mx.uint32)
    _, hidden = target.prefill(prompt, hidden=True)
    mtp.prefill(mx.concatenate([prompt, mx.array([5], dtype=mx.uint32)]), hidden)
    if k == 1:
        for width in (1, 2, 4):
            _target_pieces(target, width, report)
        drafts = mx.array([1, 2, 3], dtype=mx.uint32)
        report("verify_greedy, k=3",
               host_ms(lambda: list(verify_greedy(mx.zeros((4, 8192)), drafts)), lambda: None))
    kept = mx.array(list(range(5, 6 + k)), dtype=mx.uint32)

    def propose():
        mtp.commit(k, kept, mx.zeros((k + 1, hidden.shape[-1]), dtype=mx.bfloat16))
        return [mtp.propose(k, Sampling())[0]]

    report(f"MTP: feed {k + 1} pairs, draft {k}", host_ms(propose, lambda: None))
    last = mx.array([7], dtype=mx.uint32)
    samples = []
    for i in range(REPEATS):
        t0 = time.perf_counter()
        current = decoder._start_round(last, k)
        t1 = time.perf_counter()
        decoder._end_round(current, None)
        if i >= WARMUP:
            samples.append((t1 - t0, time.perf_counter() - t1))
    report(f"whole round, k={k}", {
        "start_ms": round(1e3 * statistics.median(s[0] for s in samples), 3),
        "read_and_settle_ms": round(1e3 * statistics.median(s[1] for s in samples), 3)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quantize", type=int, choices=QUANTIZE_BITS)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp())
    synthetic.write_tokenizer(root / "tokenizer")
    path = synthetic.write_qwen3_5(root / "target", root / "tokenizer", num_hidden_layers=8,
                                   hidden_size=1024)
    models = load_models(str(path), spec=SpecMode.MTP)
    models.target.model.set_dtype(mx.bfloat16)
    models.mtp.set_dtype(mx.bfloat16)
    quantize(models.target.model, args.quantize)  # after the cast: scales in bf16
    quantize(models.mtp, args.quantize)
    results = {}

    def report(name: str, figures: dict) -> None:
        results[name] = figures
        print(f"{name:40s} " + "  ".join(f"{k} {v:7.3f}" for k, v in figures.items()), flush=True)

    for k in (1, 3):
        _measure(make_decoder(models, sampling=Sampling(), num_draft=k), k, report)
    if args.json:
        args.json.write_text(json.dumps({"device": str(mx.default_device()),
                                         "quantize": args.quantize, **results},
                                        indent=1))


if __name__ == "__main__":
    main()
