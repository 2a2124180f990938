"""One prompt decoded one way: mlx-lm's step functions, exo-spec's engine in this
process, or a local group of ranks through the ``--local-ranks`` launcher.

Greedy throughout. In-process rows run to exactly ``max_tokens`` (mlx-lm's step
functions do not stop at EOS, so the engine's EOS set is emptied); a group run is
the real ``exo-spec generate`` and stops at EOS.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import mlx.core as mx
from mlx_lm.generate import generate_step, speculative_generate_step

from ..engine import Sampling
from ..job_series import JobSeries
from ..model_set import ModelSet
from .timing import PromptRun, timed

GROUP_TIMEOUT_S = 900.0


def mlx_plain(model, prompt: list[int], max_tokens: int) -> PromptRun:
    steps = generate_step(mx.array(prompt, dtype=mx.uint32), model, max_tokens=max_tokens)
    tokens, seconds = timed([t] for t, _ in steps)
    return PromptRun(tokens, seconds, rounds=len(tokens) - 1)


def mlx_spec(model, drafter, k: int, prompt: list[int], max_tokens: int) -> PromptRun:
    """mlx-lm's ``speculative_generate_step``; raises ValueError where mlx-lm refuses
    the target (caches it cannot trim, as in hybrid GatedDeltaNet models)."""
    flags: list[bool] = []  # per token: did it come from the drafter

    def chunks() -> Iterator[list[int]]:
        steps = speculative_generate_step(mx.array(prompt, dtype=mx.uint32), model, drafter,
                                          num_draft_tokens=k, max_tokens=max_tokens)
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
    return PromptRun(tokens, seconds, rounds, drafted, sum(flags))


def exo(jobs: JobSeries, models: ModelSet, num_draft: int | None, prompt: list[int],
        max_tokens: int) -> PromptRun:
    """One job of a row's ``jobs``: an adaptive row goes on with the policy of its jobs
    before, as a worker does."""
    decoder = jobs.new_decoder(models, sampling=Sampling(), num_draft=num_draft)
    decoder.eos = set()  # run to max_tokens, as mlx-lm's step functions do
    tokens, seconds = timed(decoder.generate(prompt, max_tokens))
    s = decoder.stats
    return PromptRun(tokens, seconds, s.rounds, s.drafted, s.accepted,
                     extra={"rounds_pipelined": decoder.rounds_pipelined,
                            "rounds_taken_back": decoder.rounds_taken_back,
                            "rounds_copied": decoder.rounds_copied})


def group(target: str, flags: list[str], prompt: str, max_tokens: int, ranks: int) -> PromptRun:
    """``exo-spec generate --local-ranks N --json`` in a subprocess; its own decode
    timing (first token to last, inside rank 0)."""
    cmd = [sys.executable, "-m", "exo_spec.cli", "generate", "--json", "--ignore-chat-template",
           "--model", target, "--prompt", prompt, "--max-tokens", str(max_tokens),
           "--local-ranks", str(ranks), *flags]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=GROUP_TIMEOUT_S)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"exo-spec generate --local-ranks {ranks} exited "
                           f"{proc.returncode}: {tail}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    s = out["stats"]
    decoded = max(s["generation_tokens"] - 1, 0)
    seconds = decoded / s["decode_tps"] if s["decode_tps"] else 0.0
    rounds = round(decoded / s["tokens_per_round"]) if s["tokens_per_round"] else 0
    return PromptRun(out["tokens"], seconds, rounds, s["drafted"], s["accepted"],
                     out["finish_reason"],
                     {k: s[k] for k in ("bytes_per_round", "messages_per_round") if k in s})
