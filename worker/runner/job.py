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

Resuming (``Job.generated``: what the job emitted on a placement that was lost): the
prompt is encoded as at first (a chat template applied once, to the request) and the
emitted tokens follow it as the decoder's prompt. The job goes on as if it had
generated them here: the penalties' history is prompt then tokens either way, they
count toward the token budget, and they pass through ``OutputText`` first, unsent, so
the detokenizer and the stop-string matcher hold what they held when the text before
was streamed. Only what follows is sent; ``Finished`` has the whole output, its stats
count the emitted tokens in generation_tokens and resumed_tokens, prompt_tokens is
the request's prompt, and the rates are this decoder's. Greedy decoding continues
with the tokens an uninterrupted run emits; sampled decoding draws the rest afresh
(a seed seeds the resumed draws, not a replay of the lost ones).

A ``JobStream`` is one job's output wherever it decodes: alone (``decode_alone``), in
a batch with other jobs (``batch``), or alone first and then in a batch, when
``decode_alone``'s ``move`` says so between two rounds. Moving is resuming without
the loss: the batch goes on from the prompt and the tokens emitted, the stream and its
matcher as they were; ``Finished``'s stats count both decoders' rounds and drafts.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from contextlib import closing

import mlx.core as mx
from grpc import StatusCode

from ...engine.logprobs import TokenLogprob
from ...engine.stats import Stats
from ...prompt import encode_messages, encode_prompt
from ...sampling import mlx_seed
from ...status import StatusError
from ...stop_strings import OutputText
from ..messages import Finished, Job, Logprob, RunnerMessage, Tokens
from .targets import GroupLeader, Local, Target

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
    """Decode ``job`` alone, from start to end."""
    stream = JobStream(job, target)
    if not stream.end_early(cancelled(), send):
        decode_alone(stream, target, send, cancelled)


class JobStream:
    """One job's output as it streams, wherever it decodes (alone, or in a batch:
    ``runner.batch``): the prompt, the token budget, the tokens and text so far."""

    def __init__(self, job: Job, target: Target):
        """StatusError when the model cannot take the job (see ``prompt_ids``,
        ``Job.token_budget``)."""
        self.job = job
        self.prompt = prompt_ids(job, target)
        self.max_tokens = job.token_budget(len(self.prompt), target.context_length)
        self.tokens = list(job.generated)
        # Its own copy: jobs in a batch stream at once, and mlx-lm builds one per tokenizer.
        self.output = OutputText(copy.copy(target.tokenizer.detokenizer), job.stop)
        self.output.add(self.tokens)  # streamed before the job resumed here
        self.decode = target.tokenizer.decode
        self.carried: Stats | None = None  # a decoder's that it left for a batch
        self.batch_size = 1  # the most jobs it decoded together with

    @property
    def left(self) -> int:
        """Tokens it may still generate."""
        return self.max_tokens - len(self.tokens)

    def end_early(self, cancelled: bool, send: Send) -> bool:
        """Finish a job cancelled while it waited, or one that ended where it was lost,
        at once; whether it was one."""
        if cancelled:
            send(Finished(self.job.job_id, "cancelled", self.output.text, self.tokens, {}))
            return True
        if self.output.stopped or not self.left:
            send(self.result("stop" if self.output.stopped else "length", {}))
            return True
        return False

    def add(self, chunk: list[int], send: Send, logprobs: Sequence[Logprob] = ()) -> list[int]:
        """Stream one round's tokens, cut at a stop string; those kept."""
        kept, text = self.output.add(chunk)
        self.tokens.extend(kept)
        send(Tokens(self.job.job_id, kept, text, list(logprobs[: len(kept)])))
        return kept

    def finish(self, reason: str, stats: dict, send: Send) -> None:
        if tail := self.output.finish():  # bytes held back for a character, text for a stop
            send(Tokens(self.job.job_id, [], tail))
        send(self.result(reason, stats))

    def result(self, reason: str, stats: dict) -> Finished:
        """The job's ``Finished``: its whole output, its stats counting every token of
        it (the rates stay the decoder's)."""
        job = self.job
        text = self.output.text if self.output.stopped else self.decode(self.tokens)
        if self.output.stopped or job.generated:
            stats["generation_tokens"] = len(self.tokens)
        if job.generated:
            stats.update(prompt_tokens=len(self.prompt), resumed_tokens=len(job.generated),
                         cached_prompt_tokens=min(stats.get("cached_prompt_tokens", 0),
                                                  len(self.prompt)))
        return Finished(job.job_id, reason, text, self.tokens, stats)


def decode_alone(stream: JobStream, target: Target, send: Send, cancelled: Callable[[], bool],
                 move: Callable[[], bool] = lambda: False) -> bool:
    """Decode the job on a decoder of its own until it ends, or until ``move()`` says
    between two rounds that it should go on in a batch (``runner.batch``): then it
    stops there, unfinished, its decoder's stats in ``stream.carried``. Whether it
    moved."""
    job = stream.job
    try:
        decoder = target.decoder(job.sampling, job.num_draft, penalties=job.penalties,
                                 logprobs=job.top_logprobs)
    except ValueError as e:  # a logit bias on a token outside the vocabulary
        raise StatusError(StatusCode.INVALID_ARGUMENT, str(e)) from None
    if job.seed is not None:
        mx.random.seed(mlx_seed(job.seed))  # negative seeds too
    reason, start = None, len(stream.tokens)
    with closing(decoder.generate(stream.prompt + stream.tokens, stream.left)) as rounds:
        for chunk in rounds:
            first = len(stream.tokens) - start  # the decoder's logprobs: one per token
            logprobs = named_logprobs(decoder.logprobs[first : first + len(chunk)], target) \
                if job.top_logprobs is not None else ()
            stream.add(chunk, send, logprobs)
            if stream.output.stopped:
                reason = "stop"
                break
            if cancelled():
                reason = "cancelled"
                break
            if decoder.finish is None and move():
                stream.carried = decoder.stats
                return True
    stats = {**decoder.stats.to_dict(), **target.extra_stats(decoder), "batch_size": 1}
    stream.finish(reason or decoder.finish.reason, stats, send)
    return False


def job_failure(e: Exception, target: Local | GroupLeader) -> StatusError:
    """What a job that failed inside the runner is told (and, with it, the coordinator)."""
    if isinstance(target, Local):
        return StatusError(StatusCode.INTERNAL, f"{type(e).__name__}: {e}")
    if isinstance(e, RuntimeError):  # the ring backend's "peer was lost"
        return StatusError(StatusCode.UNAVAILABLE, f"a rank of the group is gone: {e}")
    # Its ranks may now disagree on where they are: the group stops, and the placement
    # with it (UNAVAILABLE: the coordinator places the model again).
    return StatusError(StatusCode.UNAVAILABLE, f"{type(e).__name__}: {e} (the group is stopped)")


def named_logprobs(entries: Sequence[TokenLogprob], target: Target) -> list[Logprob]:
    """A decoder's logprobs of emitted tokens, as the runner sends them: with each
    token's bytes."""
    name = target.token_bytes
    return [Logprob(e.token_id, e.logprob, name(e.token_id),
                    [Logprob(t, lp, name(t)) for t, lp in e.top])
            for e in entries]
