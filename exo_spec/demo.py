"""The demo (``exo-spec demo``): the whole product on this machine, offline, no flags.

It makes the demo models the first time (trained from the Python standard
library, cached under the user's cache dir), starts a coordinator and two
workers on 127.0.0.1, and runs a held-out prompt pipelined across both workers:
first speculatively with the target's own MTP head, then plainly for
comparison. Each placement is loaded and warmed up by a short untimed job
first, so that neither row pays for loading or first-run work. The text streams
as rounds are accepted; a table of both runs ends it.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from .client import Client, no_result, stats_dict
from .local_cluster import ClusterError, LocalCluster
from .spec_mode import SpecMode
from .status import StatusError
from .train.make_models import models_for

ROWS = (("speculative (MTP)", SpecMode.AUTO), ("plain", SpecMode.NONE))
WARMUP_TOKENS = 16


def _say(line: str) -> None:
    print(f"[demo] {line}", file=sys.stderr, flush=True)


def run(args) -> int:
    try:
        models, prompt = _inputs(args)
    except (ValueError, OSError) as e:
        print(f"exo-spec demo: error: {e}", file=sys.stderr)
        return 2
    try:
        _say(f"starting a coordinator and {args.workers} workers on 127.0.0.1")
        cluster = LocalCluster(args.workers, model_dirs=[models])
        with cluster as address, Client(address, key=cluster.key) as client:
            _say(f"coordinator at {address}; workers: "
                 + ", ".join(f"{n.id} ({n.backend})" for n in client.nodes()))
            for name, spec in ROWS:
                _job(client, models, prompt, f"{name} warm-up", spec, args.workers,
                     WARMUP_TOKENS, echo=False)
            print(prompt, end="", flush=True)
            results = [(name, _job(client, models, prompt, name, spec, args.workers,
                                   args.max_tokens, echo=i == 0))
                       for i, (name, spec) in enumerate(ROWS)]
    except (OSError, ClusterError, StatusError) as e:
        said = e.line() if isinstance(e, StatusError) else e
        print(f"exo-spec demo: error: {said}", file=sys.stderr)
        return 1
    return 0 if _table(results, args.workers) else 1


def _inputs(args) -> tuple[Path, str]:
    if args.max_tokens <= 0 or args.workers < 1:
        raise ValueError("--max-tokens and --workers must be >= 1")
    if args.models is None:
        _say("preparing the demo models (trained once, then cached)")
    models = (args.models or models_for("demo")).expanduser()
    if not (models / "target").is_dir():
        raise ValueError(f"{models} holds no target/: make it with exo-spec make-models")
    return models, args.prompt or json.loads((models / "prompts.json").read_text())[0]


def _job(client: Client, models: Path, prompt: str, name: str, spec: SpecMode, workers: int,
         max_tokens: int, echo: bool) -> dict:
    started = time.monotonic()
    for event in client.generate(str(models / "target"), prompt, spec=spec,
                                 max_tokens=max_tokens, ignore_chat_template=True,
                                 nodes=workers):
        if event.HasField("progress"):
            _say(f"{name}: {event.progress.message}")
        elif event.HasField("tokens") and echo:
            print(event.tokens.text, end="", flush=True)
        elif event.HasField("finished"):
            if echo:
                print(flush=True)
            stats = stats_dict(event.finished.stats)
            _say(f"{name}: {stats['generation_tokens']} tokens in "
                 f"{time.monotonic() - started:.1f}s")
            return {**stats, "tokens": list(event.finished.token_ids)}
    raise no_result()


def _table(results: list[tuple[str, dict]], workers: int) -> bool:
    """Print the rows; whether every row emitted the same tokens."""
    plain = results[-1][1]["decode_tps"] or 1.0
    print(f"\n{'decode across ' + str(workers) + ' workers':<28} {'tok/s':>8} {'speedup':>8} "
          f"{'accepted':>9} {'tokens/round':>13}")
    for name, s in results:
        accepted = f"{100 * s['acceptance_rate']:.0f}%" if s["drafted"] else "-"
        print(f"{name:<28} {s['decode_tps']:>8.1f} {s['decode_tps'] / plain:>7.2f}x "
              f"{accepted:>9} {s['tokens_per_round']:>13.2f}")
    same = all(s["tokens"] == results[-1][1]["tokens"] for _, s in results)
    print("outputs: identical token for token (speculation is lossless)" if same else
          "outputs: DIFFER between rows: this is a bug, please report it")
    return same
