"""What a worker and its runners say to each other, and the WorkerControl protos they
come from and turn into.

A runner starts with a ``LoadConfig`` (its one argument, as JSON), then talks to its
worker in frames (``exo_spec.frames``): the worker sends ``Job`` and ``Cancel``; the
runner answers ``Progress`` then ``Ready`` (or an ``Error``) while it loads, and
``Tokens`` then ``Finished`` (or an ``Error``) for each job, with the job's id. A
frame is a message's fields plus a ``type`` tag, the class name in lower case;
enums travel by name (a status code as ``StatusError`` reads it back), a nested
dataclass as a map, a list of dataclasses as a list of maps, a map with integer keys
(``Penalties.logit_bias``) as a list of pairs (msgpack reads back string keys only).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from enum import Enum, EnumType
from functools import cache
from types import UnionType
from typing import Any, Union, get_args, get_origin, get_type_hints

from grpc import StatusCode

from ..decode_request import prompt_or_messages, stop_strings, top_logprobs
from ..frames import FrameError
from ..sampling import Penalties, Sampling
from ..spec_mode import ProposerKind, SpecMode
from ..status import StatusError
from ..v1 import common_pb2, worker_pb2

DEFAULT_MAX_TOKENS = 256  # Decode.max_tokens 0, when RunJobRequest.default_max_tokens is 0


@dataclass(frozen=True)
class LoadConfig:
    """What a runner loads: its command line's one argument."""

    model: str
    draft_model: str | None
    spec: SpecMode
    split: list[int] | None  # layers per rank; None splits them evenly
    ranks: int
    group_timeout_s: float  # see ``runner.watchdog``
    prefix_cache_bytes: int = 0  # its PrefixCache's bound (a group: rank 0's share; 0: none)
    max_batch: int = 1  # the most jobs one node's runner decodes together (``runner.batch``)
    kv_budget_bytes: int = 0  # what their caches may take together (0: no bound)

    def to_json(self) -> str:
        return json.dumps(_plain(self))

    @classmethod
    def from_json(cls, text: str) -> LoadConfig:
        return _typed(cls, json.loads(text))


# -- from the worker ----------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """Decode one request; the runner queues it behind the jobs before it."""

    job_id: str
    prompt: str  # empty with messages
    max_tokens: int  # 0: the rest of the context, at most default_max_tokens
    sampling: Sampling
    seed: int | None
    num_draft: int | None  # None: adaptive
    ignore_chat_template: bool
    messages: list[dict[str, str]] | None = None  # a conversation (role, content) instead
    stop: list[str] = field(default_factory=list)
    penalties: Penalties = field(default_factory=Penalties)
    top_logprobs: int | None = None  # None: no logprobs; else alternatives per token
    default_max_tokens: int = DEFAULT_MAX_TOKENS
    # Resuming: what the job emitted on a placement that was lost (``runner.job``)
    generated: list[int] = field(default_factory=list)

    @classmethod
    def from_proto(cls, job_id: str, decode: common_pb2.Decode,
                   default_max_tokens: int = 0, generated: Sequence[int] = ()) -> Job:
        """INVALID_ARGUMENT for a request out of range (sampling, penalties, stop
        strings, top_logprobs, prompt and messages): the worker's edge checks them, so
        the runner takes them as they come. ``default_max_tokens``: the request's, 0
        meaning ``DEFAULT_MAX_TOKENS``; ``generated``: the tokens to resume after."""
        s = decode.sampling
        try:
            prompt, messages = prompt_or_messages(decode)
            sampling = Sampling.from_proto(s)
            penalties = Penalties.from_proto(decode.penalties)
            stop = stop_strings(decode)
            top = top_logprobs(decode)
        except ValueError as e:
            raise StatusError(StatusCode.INVALID_ARGUMENT, str(e)) from None
        return cls(
            job_id=job_id,
            prompt=prompt,
            max_tokens=decode.max_tokens,
            sampling=sampling,
            seed=s.seed if s.HasField("seed") else None,
            num_draft=decode.num_draft or None,
            ignore_chat_template=decode.ignore_chat_template,
            messages=messages,
            stop=stop,
            penalties=penalties,
            top_logprobs=top,
            default_max_tokens=default_max_tokens or DEFAULT_MAX_TOKENS,
            generated=list(generated),
        )

    def token_budget(self, prompt_tokens: int, context_length: int) -> int:
        """How many tokens the job may generate after a prompt of ``prompt_tokens``:
        ``max_tokens``, or when 0 the rest of the context, at most
        ``default_max_tokens``. OUT_OF_RANGE when the prompt leaves no room in the
        context, or ``max_tokens`` more than it leaves. A context of 0 is unknown: then
        nothing is checked."""
        if not context_length:
            return self.max_tokens or self.default_max_tokens
        if prompt_tokens > context_length:
            raise StatusError(StatusCode.OUT_OF_RANGE,
                              f"the prompt is {prompt_tokens} tokens, longer than the "
                              f"model's context of {context_length}")
        room = context_length - prompt_tokens
        if not room:
            raise StatusError(StatusCode.OUT_OF_RANGE,
                              f"the prompt is {prompt_tokens} tokens, all of the model's "
                              "context: no room to generate")
        if self.max_tokens > room:
            raise StatusError(StatusCode.OUT_OF_RANGE,
                              f"max_tokens {self.max_tokens} and the prompt's "
                              f"{prompt_tokens} tokens exceed the model's context of "
                              f"{context_length}")
        return self.max_tokens or min(room, self.default_max_tokens)


@dataclass(frozen=True)
class Cancel:
    """Stop the job between two rounds (it then finishes as "cancelled")."""

    job_id: str


# -- from the runner ----------------------------------------------------------------


@dataclass(frozen=True)
class Progress:
    """A step of the load, for the coordinator to show."""

    text: str

    def to_proto(self) -> worker_pb2.LoadEvent:
        return worker_pb2.LoadEvent(progress=self.text)


@dataclass(frozen=True)
class Ready:
    """The runner holds its weights (and, with several ranks, so does every rank)."""

    mode: ProposerKind  # NONE on ranks other than 0: only rank 0 holds a proposer
    batch_capacity: int = 1  # the most jobs it decodes together (1: one at a time)

    def to_proto(self) -> worker_pb2.LoadEvent:
        return worker_pb2.LoadEvent(ready_mode=self.mode, batch_capacity=self.batch_capacity)


@dataclass(frozen=True)
class Logprob:
    """A token's log-probability at its position, its own bytes (maybe part of a
    character), and the likeliest tokens there, likeliest first."""

    token_id: int
    logprob: float
    token: bytes
    top: list[Logprob] = field(default_factory=list)

    def to_proto(self) -> common_pb2.TokenLogprob:
        return common_pb2.TokenLogprob(token_id=self.token_id, logprob=self.logprob,
                                       token=self.token, top=[t.to_proto() for t in self.top])


@dataclass(frozen=True)
class Tokens:
    """The tokens one round accepted."""

    job_id: str
    token_ids: list[int]
    text: str  # what these tokens complete (may be empty mid-character)
    logprobs: list[Logprob] = field(default_factory=list)  # with top_logprobs: one per id

    def to_proto(self) -> worker_pb2.RunEvent:
        return worker_pb2.RunEvent(tokens=common_pb2.TokenChunk(
            token_ids=self.token_ids, text=self.text,
            logprobs=[lp.to_proto() for lp in self.logprobs]))


@dataclass(frozen=True)
class Finished:
    job_id: str
    finish_reason: str  # "stop", "length" or "cancelled"
    text: str
    token_ids: list[int]
    stats: dict[str, Any]  # the decoder's, and the target's (ranks, traffic)

    def to_proto(self) -> worker_pb2.RunEvent:
        known = common_pb2.Stats.DESCRIPTOR.fields_by_name
        stats = {k: v for k, v in self.stats.items() if k in known and v is not None}
        return worker_pb2.RunEvent(finished=common_pb2.Finished(
            finish_reason=self.finish_reason, text=self.text, token_ids=self.token_ids,
            stats=common_pb2.Stats(**stats)))


@dataclass(frozen=True)
class Error:
    """A job that failed, or with no job id, a load that failed or a runner going away."""

    code: StatusCode
    message: str
    job_id: str | None = None

    @classmethod
    def of(cls, e: StatusError, job_id: str | None = None) -> Error:
        return cls(e.code, e.message, job_id)

    def status(self) -> StatusError:
        return StatusError(self.code, self.message)


WorkerMessage = Job | Cancel
RunnerMessage = Progress | Ready | Tokens | Finished | Error
_KINDS = {kind.__name__.lower(): kind for kind in (Job, Cancel, Progress, Ready, Tokens,
                                                   Finished, Error)}


def to_frame(message: WorkerMessage | RunnerMessage) -> dict:
    return {"type": type(message).__name__.lower(), **_plain(message)}


def from_frame(frame: Any) -> WorkerMessage | RunnerMessage:
    """FrameError for a frame that holds no message."""
    tag = frame.get("type") if isinstance(frame, dict) else None
    if tag not in _KINDS:
        raise FrameError(f"a frame of no known type: {str(frame)[:200]}")
    try:
        return _typed(_KINDS[tag], {k: v for k, v in frame.items() if k != "type"})
    except (KeyError, TypeError, ValueError) as e:
        raise FrameError(f"a {tag} frame that does not say what one says: {e}") from None


def _plain(value: Any) -> Any:
    """A dataclass as a map of what msgpack and JSON carry."""
    if is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict) and not all(isinstance(k, str) for k in value):
        return [[k, _plain(v)] for k, v in value.items()]
    return value.name if isinstance(value, Enum) else value


def _typed(kind: type, values: dict) -> Any:
    """The inverse of ``_plain``, led by the field types of ``kind``."""
    types = _field_types(kind)
    return kind(**{name: _value(types[name], value) for name, value in values.items()})


def _value(kind: Any, value: Any) -> Any:
    if value is None:
        return None
    origin = get_origin(kind)
    if origin in (Union, UnionType):  # X | None
        (kind,) = [k for k in get_args(kind) if k is not type(None)]
        return _value(kind, value)
    if origin is list:
        return [_value(get_args(kind)[0], v) for v in value]
    if origin is dict and isinstance(value, list):  # pairs, for integer keys
        return {k: _value(get_args(kind)[1], v) for k, v in value}
    if is_dataclass(kind):
        return _typed(kind, value)
    if isinstance(kind, EnumType):
        return kind[value]
    return value


@cache
def _field_types(kind: type) -> dict[str, Any]:
    return get_type_hints(kind)
