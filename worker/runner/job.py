"""One job inside a runner: encode the prompt, decode round by round, stream messages.

What a job sends back (``worker.messages``), each with its ``job_id``: ``Tokens``
(one per accepted round, with each token's logprobs when asked), then ``Finished``
(finish_reason "stop", "length" or "cancelled", the whole text and token ids, the
stats). A job the model cannot take is a ``StatusError`` before any round:
INVALID_ARGUMENT for an empty prompt, messages the model has no chat template for or
a logit bias outside its vocabulary, OUT_OF_RANGE for a prompt that does not fit in
its context with max_tokens (``Job.token_budget``). Cancellation is a flag the
worker's ``Cancel`` sets; the loop reads it between rounds, a Python check with no
host sync.

Stop strings (``exo_spec.stop_strings``): the text shown never includes the match nor
a prefix of a stop string that may still complete. When one completes inside a round
the job ends at once, finish_reason "stop"; its token ids run up to and including the
token that completed the match, its text stops before the match. Its stats count
those tokens as generation_tokens; the rates (tokens per round, decode tok/s, drafts)
are the decoder's, over every token it decoded.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import closing

import mlx.core as mx
from grpc import StatusCode

from ...prompt import encode_messages, encode_prompt
from ...sampling import mlx_seed
from ...status import StatusError
from ...stop_strings import OutputText
from ..messages import Finished, Job, Logprob, RunnerMessage, Tokens
from .targets import Target

Send = Callable[[RunnerMessage], None]  # to the worker; any thread may call it


def prompt_ids(job: Job, target: Target) -> list[int]:
    """The prompt's token ids; INVALID_ARGUMENT when the model cannot take them."""
    if job.messages is not None:
        prompt = encode_messages(target.tokenizer, job.messages)
    else:
        prompt = encode_prompt(target.tokenizer, job.prompt, not job.ignore_chat_template)
    if not prompt:
        raise StatusError(StatusCode.INVALID_ARGUMENT, "the prompt is empty")
    return prompt


def run_job(job: Job, target: Target, send: Send, cancelled: Callable[[], bool]) -> None:
    prompt = prompt_ids(job, target)
    max_tokens = job.token_budget(len(prompt), target.context_length)
    if cancelled():  # cancelled while it waited behind another job
        send(Finished(job.job_id, "cancelled", "", [], {}))
        return
    try:
        decoder = target.decoder(job.sampling, job.num_draft, penalties=job.penalties,
                                 logprobs=job.top_logprobs)
    except ValueError as e:  # a logit bias on a token outside the vocabulary
        raise StatusError(StatusCode.INVALID_ARGUMENT, str(e)) from None
    if job.seed is not None:
        mx.random.seed(mlx_seed(job.seed))  # negative seeds too
    tokens: list[int] = []
    output = OutputText(target.tokenizer.detokenizer, job.stop)
    reason = None
    with closing(decoder.generate(prompt, max_tokens)) as rounds:
        for chunk in rounds:
            kept, text = output.add(chunk)
            logprobs = _logprobs(decoder, len(tokens), len(kept), target) \
                if job.top_logprobs is not None else []
            tokens.extend(kept)
            send(Tokens(job.job_id, kept, text, logprobs))
            if output.stopped:
                break
            if cancelled():
                reason = "cancelled"
                break
    if tail := output.finish():  # bytes held back for a character, text for a stop string
        send(Tokens(job.job_id, [], tail))
    if output.stopped:
        reason, text = "stop", output.text
    else:
        text = target.tokenizer.decode(tokens)
    stats = {**decoder.stats.to_dict(), **target.extra_stats(decoder)}
    if output.stopped:  # the tokens of the output; the rates stay the decoder's
        stats["generation_tokens"] = len(tokens)
    send(Finished(job.job_id, reason or decoder.finish.reason, text, tokens, stats))


def _logprobs(decoder, start: int, count: int, target: Target) -> list[Logprob]:
    """The logprobs of emitted tokens ``start`` to ``start + count`` (the decoder keeps
    one per emitted token), with each token's bytes."""
    name = target.token_bytes
    return [Logprob(e.token_id, e.logprob, name(e.token_id),
                    [Logprob(t, lp, name(t)) for t, lp in e.top])
            for e in decoder.logprobs[start : start + count]]
