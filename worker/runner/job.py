"""One job inside a runner: encode the prompt, decode round by round, stream messages.

What a job sends back (``worker.messages``), each with its ``job_id``: ``Tokens``
(one per accepted round), then ``Finished`` (finish_reason "stop", "length" or
"cancelled", the whole text and token ids, the stats). A prompt the model cannot
take is a ``StatusError`` before any round. Cancellation is a flag the worker's
``Cancel`` sets; the loop reads it between rounds, a Python check with no host sync.
"""

from __future__ import annotations

from collections.abc import Callable

import mlx.core as mx
from grpc import StatusCode

from ...prompt import encode_prompt
from ...status import StatusError
from ..messages import Finished, Job, RunnerMessage, Tokens
from .targets import Target

Send = Callable[[RunnerMessage], None]  # to the worker; any thread may call it


def prompt_ids(job: Job, target: Target) -> list[int]:
    """The prompt's token ids; INVALID_ARGUMENT when the model cannot take them."""
    prompt = encode_prompt(target.tokenizer, job.prompt, not job.ignore_chat_template)
    if not prompt:
        raise StatusError(StatusCode.INVALID_ARGUMENT, "the prompt is empty")
    if target.context_length and len(prompt) > target.context_length:
        raise StatusError(StatusCode.INVALID_ARGUMENT,
                          f"the prompt is {len(prompt)} tokens, longer than the model's "
                          f"context of {target.context_length}")
    return prompt


def run_job(job: Job, target: Target, send: Send, cancelled: Callable[[], bool]) -> None:
    prompt = prompt_ids(job, target)
    if cancelled():  # cancelled while it waited behind another job
        send(Finished(job.job_id, "cancelled", "", [], {}))
        return
    decoder = target.decoder(job.sampling, job.num_draft)
    if job.seed is not None:
        mx.random.seed(job.seed)
    tokens: list[int] = []
    detok = target.tokenizer.detokenizer
    detok.reset()
    reason = None
    for chunk in decoder.generate(prompt, job.max_tokens):
        tokens.extend(chunk)
        for t in chunk:
            detok.add_token(t)
        send(Tokens(job.job_id, chunk, detok.last_segment))
        if cancelled():
            reason = "cancelled"
            break
    detok.finalize()
    if detok.last_segment:  # bytes held back for a character the last round did not finish
        send(Tokens(job.job_id, [], detok.last_segment))
    stats = {**decoder.stats.to_dict(), **target.extra_stats(decoder)}
    send(Finished(job.job_id, reason or decoder.finish.reason,
                  target.tokenizer.decode(tokens), tokens, stats))
