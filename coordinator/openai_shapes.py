"""OpenAI's request and response shapes, and the ``GenerateRequest`` a request is.

``chat_request`` and ``completion_request`` read a JSON body into a
``GenerateRequest`` (plus how to answer it: streamed or not, with usage, with
logprobs) and check only what the proto cannot carry: JSON types, OpenAI's own
rules (``n`` is 1, no tools), fields that must be positive. Every value the proto
does carry is checked where every request is, ``api.job_request``, so both front
doors refuse the same requests with the same words. A bad field is a ``FieldError``:
INVALID_ARGUMENT naming the field.

``ChatShape`` and ``CompletionShape`` write the responses: ``chat.completion`` and
``chat.completion.chunk``, ``text_completion`` (whole and streamed), with
``usage`` and its ``speculation`` extension.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from grpc import StatusCode

from .. import __version__
from ..spec_mode import SpecMode
from ..status import StatusError
from ..v1 import common_pb2, inference_pb2

UINT32 = 2**32
INT64 = 2**63
# Fields of ours beside OpenAI's, as mlx-lm's server names them.
PENALTY_SIZES = ("presence_context_size", "frequency_context_size", "repetition_context_size")
SPECULATION_KEYS = ("mode", "num_draft", "draft_model")
ROLES = {"developer": "system"}  # OpenAI's newer name for the system role
FINISH_REASONS = {"stop": "stop", "length": "length"}
CUT_SHORT = "length"  # any other reason ("cancelled"): the output was cut before its end
SYSTEM_FINGERPRINT = f"exo-spec-{__version__}"


class FieldError(StatusError):
    """A request field of the wrong type or value: INVALID_ARGUMENT, naming ``param``."""

    def __init__(self, param: str, message: str):
        super().__init__(StatusCode.INVALID_ARGUMENT, message)
        self.param = param


@dataclass(frozen=True)
class Defaults:
    """What a request that names no model gets (``exo-spec serve``): ``model``, and
    ``draft_model`` for it when the request names no proposer of its own."""

    model: str = ""
    draft_model: str = ""


@dataclass(frozen=True)
class Parsed:
    """An OpenAI request as the job it runs and the way it is answered."""

    request: inference_pb2.GenerateRequest
    stream: bool
    include_usage: bool  # stream_options.include_usage: a last chunk with the usage
    logprobs: bool
    top_logprobs: int


# -- reading a body ------------------------------------------------------------------------


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _is_integer(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) or \
        isinstance(v, float) and v.is_integer()


def _check_unicode(value: Any, where: str = "") -> None:
    """FieldError for a string (or object key) that is not Unicode text: JSON may
    escape a lone surrogate ("\\ud800"), which no UTF-8 string field can carry."""
    def bad(text: str) -> bool:
        try:
            text.encode()
        except UnicodeEncodeError:
            return True
        return False

    if isinstance(value, str) and bad(value):
        raise FieldError(where or None, f"{where or 'the request'} is not valid Unicode text "
                                        "(a lone surrogate escape?)")
    if isinstance(value, list):
        for i, item in enumerate(value):
            _check_unicode(item, f"{where}[{i}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            name = f"{where}.{key}" if where else key
            if bad(key):
                raise FieldError(where or None, f"a key of {where or 'the request body'} is "
                                                "not valid Unicode text (a lone surrogate "
                                                "escape?)")
            _check_unicode(item, name)


class _Body:
    """A JSON object's fields, each read with its expected type (null is absent)."""

    def __init__(self, body: Any, prefix: str = ""):
        if not isinstance(body, dict):
            raise FieldError(prefix.rstrip(".") or None,
                             f"{prefix.rstrip('.') or 'the request body'} must be a JSON "
                             f"object, got {_kind(body)}")
        if not prefix:
            _check_unicode(body)
        self.body, self.prefix = body, prefix

    def get(self, name: str, ok, what: str) -> Any:
        value = self.body.get(name)
        if value is not None and not ok(value):
            raise FieldError(self.prefix + name,
                             f"{self.prefix}{name} must be {what}, got {_kind(value)}")
        return value

    def number(self, name: str) -> float | None:
        return self.get(name, _is_number, "a number")

    def integer(self, name: str, low: int = 0, high: int = UINT32) -> int | None:
        value = self.get(name, _is_integer, "an integer")
        if value is None:
            return None
        if not low <= value < high:
            bound = f"from {low} to {high - 1}" if high < UINT32 or value >= high \
                else f">= {low}"
            raise FieldError(self.prefix + name,
                             f"{self.prefix}{name} must be an integer {bound}, got {value}")
        return int(value)

    def boolean(self, name: str) -> bool:
        return bool(self.get(name, lambda v: isinstance(v, bool), "a boolean"))

    def string(self, name: str) -> str:
        return self.get(name, lambda v: isinstance(v, str), "a string") or ""

    def object(self, name: str) -> _Body | None:
        value = self.get(name, lambda v: isinstance(v, dict), "an object")
        return None if value is None else _Body(value, f"{self.prefix}{name}.")

    def refuse(self, name: str, unless=lambda v: v is None, why: str = "is not supported"):
        if name in self.body and not unless(self.body[name]):
            raise FieldError(self.prefix + name, f"{self.prefix}{name} {why}")


def _common(body: _Body, defaults: Defaults, *, chat: bool) -> inference_pb2.GenerateRequest:
    """The fields chat and completions share."""
    body.refuse("n", lambda v: v in (None, 1), "must be 1 (one choice per request)")
    model = body.string("model") or defaults.model
    request = inference_pb2.GenerateRequest(model=model)
    decode = request.decode
    decode.ignore_chat_template = not chat
    max_tokens = body.integer("max_completion_tokens", 1) if chat else None
    if max_tokens is None:
        max_tokens = body.integer("max_tokens", 1)
    decode.max_tokens = max_tokens or 0  # 0: the rest of the context, capped by the coordinator

    s = decode.sampling
    temperature = body.number("temperature")
    s.temperature = 1.0 if temperature is None else temperature  # OpenAI's default
    for name in ("top_p", "min_p"):
        if (value := body.number(name)) is not None:
            setattr(s, name, value)
    s.top_k = body.integer("top_k", -(2**31), 2**31) or 0
    if (seed := body.integer("seed", -INT64, INT64)) is not None:
        s.seed = seed

    stop = body.get("stop", lambda v: isinstance(v, str) or isinstance(v, list) and all(
        isinstance(x, str) for x in v), "a string or an array of strings")
    decode.stop.extend([stop] if isinstance(stop, str) else stop or [])

    p = decode.penalties
    for name in ("presence_penalty", "frequency_penalty", "repetition_penalty"):
        if (value := body.number(name)) is not None:
            setattr(p, name, value)
    for name in PENALTY_SIZES:
        setattr(p, name, body.integer(name, 1) or 0)
    bias = body.object("logit_bias")
    for key, value in (bias.body.items() if bias else ()):
        if not (key.isascii() and key.isdigit() and int(key) < UINT32):
            raise FieldError("logit_bias", f"logit_bias keys must be token ids, got {key!r}")
        if not _is_number(value) or not math.isfinite(value):
            raise FieldError("logit_bias", f"logit_bias[{key}] must be a finite number, "
                                           f"got {_kind(value)}")
        p.logit_bias[int(key)] = value

    spec = body.object("speculation") or _Body({}, "speculation.")
    if unknown := sorted(set(spec.body) - set(SPECULATION_KEYS)):
        raise FieldError(f"speculation.{unknown[0]}",
                         f"speculation has no field {unknown[0]!r} (it has "
                         f"{', '.join(SPECULATION_KEYS)})")
    mode = spec.string("mode") or SpecMode.AUTO
    if mode not in set(SpecMode):
        raise FieldError("speculation.mode", f"speculation.mode must be one of "
                                             f"{', '.join(SpecMode)}, got {mode!r}")
    request.spec = SpecMode(mode).to_proto()
    decode.num_draft = spec.integer("num_draft") or 0
    request.draft_model = spec.string("draft_model")
    if (not request.draft_model and mode == SpecMode.AUTO and defaults.draft_model
            and model == defaults.model):
        request.draft_model = defaults.draft_model
    request.nodes = body.integer("nodes") or 0
    return request


def _stream_options(body: _Body) -> tuple[bool, bool]:
    stream = body.boolean("stream")
    options = body.object("stream_options")
    return stream, stream and options is not None and options.boolean("include_usage")


def chat_request(raw: Any, defaults: Defaults = Defaults()) -> Parsed:
    """A ``POST /v1/chat/completions`` body; FieldError when it is malformed."""
    body = _Body(raw)
    for name in ("tools", "functions"):
        body.refuse(name, lambda v: not v)
    body.refuse("tool_choice", lambda v: v in (None, "none", "auto"))
    body.refuse("response_format", lambda v: v is None or v == {"type": "text"},
                "is not supported (only {\"type\": \"text\"})")
    body.refuse("audio")
    request = _common(body, defaults, chat=True)
    messages = body.get("messages", lambda v: isinstance(v, list), "an array")
    if not messages:
        raise FieldError("messages", "messages must be a non-empty array")
    for i, raw_message in enumerate(messages):
        message = _Body(raw_message, f"messages[{i}].")
        role = message.string("role")
        if not role:
            raise FieldError(f"messages[{i}].role", f"messages[{i}].role is missing")
        request.decode.messages.add(role=ROLES.get(role, role),
                                    content=_content(message, i))
    logprobs = body.boolean("logprobs")
    top = body.integer("top_logprobs")
    if top and not logprobs:
        raise FieldError("top_logprobs", "top_logprobs needs logprobs: true")
    request.decode.logprobs, request.decode.top_logprobs = logprobs, top or 0
    stream, usage = _stream_options(body)
    return Parsed(request, stream, usage, logprobs, top or 0)


def _content(message: _Body, i: int) -> str:
    """A message's text: a string, or its text parts joined (as mlx-lm's server joins them)."""
    content = message.body.get("content")
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, list):
        raise FieldError(f"messages[{i}].content", f"messages[{i}].content must be a string "
                                                   f"or an array of parts, got {_kind(content)}")
    texts = []
    for j, part in enumerate(content):
        where = f"messages[{i}].content[{j}]"
        if not (isinstance(part, dict) and part.get("type") == "text"
                and isinstance(part.get("text"), str)):
            kind = part.get("type") if isinstance(part, dict) else _kind(part)
            raise FieldError(where, f"{where}: only text parts ({{\"type\": \"text\", "
                                    f"\"text\": ...}}) are supported, got {kind!r}")
        texts.append(part["text"])
    return "".join(texts)


def completion_request(raw: Any, defaults: Defaults = Defaults()) -> Parsed:
    """A ``POST /v1/completions`` body (a raw prompt: no chat template); FieldError
    when it is malformed."""
    body = _Body(raw)
    body.refuse("echo", lambda v: not v)
    body.refuse("suffix")
    body.refuse("best_of", lambda v: v in (None, 1), "must be 1")
    request = _common(body, defaults, chat=False)
    prompt = body.body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if prompt is not None and not isinstance(prompt, str):
        raise FieldError("prompt", "prompt must be a string (one prompt per request; token "
                                   f"ids are not supported), got {_kind(prompt)}")
    request.decode.prompt = prompt or ""
    top = body.integer("logprobs", 0, 21)  # the number of alternatives, as OpenAI's is
    request.decode.logprobs, request.decode.top_logprobs = top is not None, top or 0
    stream, usage = _stream_options(body)
    return Parsed(request, stream, usage, top is not None, top or 0)


# -- writing responses ---------------------------------------------------------------------


def finish_reason(reason: str) -> str:
    return FINISH_REASONS.get(reason, CUT_SHORT)


def _finite(x: float) -> float | None:
    """JSON has no NaN or infinity."""
    return x if math.isfinite(x) else None


def _logprob(x: float) -> float:
    return -9999.0 if math.isnan(x) else max(x, -9999.0)  # OpenAI's value for -inf


def usage(finished: common_pb2.Finished) -> dict:
    s = finished.stats
    completion = s.generation_tokens or len(finished.token_ids)
    return {
        "prompt_tokens": s.prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": s.prompt_tokens + completion,
        "prompt_tokens_details": {"cached_tokens": s.cached_prompt_tokens},
        "speculation": {
            "mode": s.mode, "num_draft": s.num_draft or None, "drafted": s.drafted,
            "accepted": s.accepted, "acceptance_rate": _finite(s.acceptance_rate),
            "tokens_per_round": _finite(s.tokens_per_round), "ttft_s": _finite(s.ttft_s),
            "prompt_tps": _finite(s.prompt_tps), "decode_tps": _finite(s.decode_tps),
            "ranks": s.ranks or 1,
        },
    }


def _token(t: common_pb2.TokenLogprob) -> dict:
    return {"token": t.token.decode("utf-8", errors="replace"), "logprob": _logprob(t.logprob),
            "bytes": list(t.token)}


class _Shape(ABC):
    """One response's envelope: its id, object names, creation time and model."""

    id_prefix = whole_object = chunk_object = ""

    def __init__(self, parsed: Parsed, job_id: str, created: float):
        self.parsed = parsed
        self.id = self.id_prefix + job_id
        self.created = int(created)
        self.model = parsed.request.model

    def _envelope(self, kind: str, choices: list, **extra) -> dict:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model,
                "system_fingerprint": SYSTEM_FINGERPRINT, "choices": choices, **extra}

    def _usage_field(self) -> dict:
        return {"usage": None} if self.parsed.include_usage else {}

    @abstractmethod
    def chunk(self, text: str, logprobs: list, finish: str | None = None) -> dict:
        """One streamed chunk: ``text`` and its tokens' logprobs, or the last one with
        its ``finish`` reason."""

    def first_chunks(self) -> list[dict]:
        return []

    def last_chunks(self, finished: common_pb2.Finished) -> list[dict]:
        chunks = [self.chunk("", [], finish_reason(finished.finish_reason))]
        if self.parsed.include_usage:
            chunks.append(self._envelope(self.chunk_object, [], usage=usage(finished)))
        return chunks


class ChatShape(_Shape):
    id_prefix, whole_object, chunk_object = "chatcmpl-", "chat.completion", \
        "chat.completion.chunk"

    def _logprobs(self, logprobs: list) -> dict | None:
        if not self.parsed.logprobs:
            return None
        return {"content": [{**_token(t), "top_logprobs": [_token(a) for a in t.top]}
                            for t in logprobs], "refusal": None}

    def response(self, finished: common_pb2.Finished, logprobs: list) -> dict:
        return self._envelope(self.whole_object, [{
            "index": 0,
            "message": {"role": "assistant", "content": finished.text, "refusal": None},
            "logprobs": self._logprobs(logprobs),
            "finish_reason": finish_reason(finished.finish_reason),
        }], usage=usage(finished))

    def first_chunks(self) -> list[dict]:
        return [self._chunk({"role": "assistant", "content": ""}, [], None)]

    def chunk(self, text: str, logprobs: list, finish: str | None = None) -> dict:
        return self._chunk({"content": text} if text or not finish else {}, logprobs, finish)

    def _chunk(self, delta: dict, logprobs: list, finish: str | None) -> dict:
        return self._envelope(self.chunk_object, [{
            "index": 0, "delta": delta,
            "logprobs": self._logprobs(logprobs) if logprobs else None,
            "finish_reason": finish}], **self._usage_field())


class CompletionShape(_Shape):
    id_prefix, whole_object, chunk_object = "cmpl-", "text_completion", "text_completion"

    def __init__(self, parsed: Parsed, job_id: str, created: float):
        super().__init__(parsed, job_id, created)
        self.offset = 0  # of the next token's text, for logprobs' text_offset

    def _logprobs(self, logprobs: list) -> dict | None:
        if not self.parsed.logprobs:
            return None
        tokens = [_token(t)["token"] for t in logprobs]
        offsets = []
        for token in tokens:
            offsets.append(self.offset)
            self.offset += len(token)
        return {"tokens": tokens, "token_logprobs": [_logprob(t.logprob) for t in logprobs],
                "top_logprobs": [{_token(a)["token"]: _logprob(a.logprob) for a in t.top}
                                 for t in logprobs] if self.parsed.top_logprobs else None,
                "text_offset": offsets}

    def response(self, finished: common_pb2.Finished, logprobs: list) -> dict:
        return self._envelope(self.whole_object, [{
            "index": 0, "text": finished.text, "logprobs": self._logprobs(logprobs),
            "finish_reason": finish_reason(finished.finish_reason),
        }], usage=usage(finished))

    def chunk(self, text: str, logprobs: list, finish: str | None = None) -> dict:
        return self._envelope(self.chunk_object, [{
            "index": 0, "text": text,
            "logprobs": self._logprobs(logprobs) if logprobs else None,
            "finish_reason": finish}], **self._usage_field())
