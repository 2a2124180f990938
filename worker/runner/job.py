"""One job inside a runner: encode the prompt, decode round by round, stream frames.

The frames (``exo_spec.frames``) a job sends back, each with its ``job_id``:
``tokens`` (one per accepted round), then ``finished`` (finish_reason "stop",
"length" or "cancelled", the whole text and token ids, the stats), or instead an
``error`` with a gRPC status name. Cancellation is a flag the worker's cancel
frame sets; the loop reads it between rounds, a Python check with no host sync.
"""

from __future__ import annotations

from collections.abc import Callable

import mlx.core as mx
from mlx_lm.tokenizer_utils import TokenizerWrapper

from ...engine import Sampling
from ...prompt import encode_prompt
from ..refusal import Refusal
from .targets import Target


def prepare(job: dict, target: Target) -> tuple[list[int], Sampling]:
    """The prompt's token ids and the sampling settings; INVALID_ARGUMENT if unusable."""
    try:
        sampling = Sampling(**job["sampling"])
    except ValueError as e:
        raise Refusal("INVALID_ARGUMENT", str(e)) from None
    prompt = encode_prompt(target.tokenizer, job["prompt"], not job["ignore_chat_template"])
    if not prompt:
        raise Refusal("INVALID_ARGUMENT", "the prompt is empty")
    if target.context_length and len(prompt) > target.context_length:
        raise Refusal("INVALID_ARGUMENT",
                      f"the prompt is {len(prompt)} tokens, longer than the model's "
                      f"context of {target.context_length}")
    if job["max_tokens"] < 1:
        raise Refusal("INVALID_ARGUMENT", f"max_tokens must be > 0, got {job['max_tokens']}")
    return prompt, sampling


def run_job(job: dict, target: Target, send: Callable[[dict], None],
            cancelled: Callable[[], bool]) -> None:
    job_id = job["job_id"]
    try:
        prompt, sampling = prepare(job, target)
    except Refusal as e:
        send({"type": "error", "job_id": job_id, "code": e.code, "message": e.message})
        return
    tokenizer = target.tokenizer
    tokens: list[int] = []
    if cancelled():  # cancelled while it waited behind another job
        send(_finished(job_id, "cancelled", tokenizer, tokens, {}))
        return
    decoder = target.decoder(sampling, job["num_draft"])
    if job["seed"] is not None:
        mx.random.seed(job["seed"])
    detok = tokenizer.detokenizer
    detok.reset()
    reason = None
    for chunk in decoder.generate(prompt, job["max_tokens"]):
        tokens.extend(chunk)
        for t in chunk:
            detok.add_token(t)
        send({"type": "tokens", "job_id": job_id, "token_ids": chunk,
              "text": detok.last_segment})
        if cancelled():
            reason = "cancelled"
            break
    detok.finalize()
    if detok.last_segment:  # bytes held back for a character the last round did not finish
        send({"type": "tokens", "job_id": job_id, "token_ids": [],
              "text": detok.last_segment})
    reason = reason or decoder.finish.reason
    stats = {**decoder.stats.to_dict(), **target.extra_stats(decoder)}
    send(_finished(job_id, reason, tokenizer, tokens, stats))


def _finished(job_id: str, reason: str, tokenizer: TokenizerWrapper, tokens: list[int],
              stats: dict) -> dict:
    return {"type": "finished", "job_id": job_id, "finish_reason": reason,
            "text": tokenizer.decode(tokens), "token_ids": tokens, "stats": stats}
