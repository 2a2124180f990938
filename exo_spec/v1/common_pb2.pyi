from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SpecMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SPEC_MODE_AUTO: _ClassVar[SpecMode]
    SPEC_MODE_MTP: _ClassVar[SpecMode]
    SPEC_MODE_NONE: _ClassVar[SpecMode]
SPEC_MODE_AUTO: SpecMode
SPEC_MODE_MTP: SpecMode
SPEC_MODE_NONE: SpecMode

class Sampling(_message.Message):
    __slots__ = ("temperature", "top_p", "top_k", "min_p", "seed")
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    MIN_P_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    temperature: float
    top_p: float
    top_k: int
    min_p: float
    seed: int
    def __init__(self, temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., top_k: _Optional[int] = ..., min_p: _Optional[float] = ..., seed: _Optional[int] = ...) -> None: ...

class Decode(_message.Message):
    __slots__ = ("prompt", "max_tokens", "sampling", "num_draft", "ignore_chat_template")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    NUM_DRAFT_FIELD_NUMBER: _ClassVar[int]
    IGNORE_CHAT_TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    max_tokens: int
    sampling: Sampling
    num_draft: int
    ignore_chat_template: bool
    def __init__(self, prompt: _Optional[str] = ..., max_tokens: _Optional[int] = ..., sampling: _Optional[_Union[Sampling, _Mapping]] = ..., num_draft: _Optional[int] = ..., ignore_chat_template: _Optional[bool] = ...) -> None: ...

class Stats(_message.Message):
    __slots__ = ("mode", "num_draft", "drafted", "accepted", "acceptance_rate", "tokens_per_round", "prompt_tokens", "generation_tokens", "ttft_s", "prompt_tps", "decode_tps", "ranks", "parallel", "bytes_per_round", "messages_per_round")
    MODE_FIELD_NUMBER: _ClassVar[int]
    NUM_DRAFT_FIELD_NUMBER: _ClassVar[int]
    DRAFTED_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    ACCEPTANCE_RATE_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_ROUND_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    GENERATION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TTFT_S_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TPS_FIELD_NUMBER: _ClassVar[int]
    DECODE_TPS_FIELD_NUMBER: _ClassVar[int]
    RANKS_FIELD_NUMBER: _ClassVar[int]
    PARALLEL_FIELD_NUMBER: _ClassVar[int]
    BYTES_PER_ROUND_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_PER_ROUND_FIELD_NUMBER: _ClassVar[int]
    mode: str
    num_draft: int
    drafted: int
    accepted: int
    acceptance_rate: float
    tokens_per_round: float
    prompt_tokens: int
    generation_tokens: int
    ttft_s: float
    prompt_tps: float
    decode_tps: float
    ranks: int
    parallel: str
    bytes_per_round: float
    messages_per_round: float
    def __init__(self, mode: _Optional[str] = ..., num_draft: _Optional[int] = ..., drafted: _Optional[int] = ..., accepted: _Optional[int] = ..., acceptance_rate: _Optional[float] = ..., tokens_per_round: _Optional[float] = ..., prompt_tokens: _Optional[int] = ..., generation_tokens: _Optional[int] = ..., ttft_s: _Optional[float] = ..., prompt_tps: _Optional[float] = ..., decode_tps: _Optional[float] = ..., ranks: _Optional[int] = ..., parallel: _Optional[str] = ..., bytes_per_round: _Optional[float] = ..., messages_per_round: _Optional[float] = ...) -> None: ...

class TokenChunk(_message.Message):
    __slots__ = ("token_ids", "text")
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    text: str
    def __init__(self, token_ids: _Optional[_Iterable[int]] = ..., text: _Optional[str] = ...) -> None: ...

class Finished(_message.Message):
    __slots__ = ("finish_reason", "text", "token_ids", "stats")
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    finish_reason: str
    text: str
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    stats: Stats
    def __init__(self, finish_reason: _Optional[str] = ..., text: _Optional[str] = ..., token_ids: _Optional[_Iterable[int]] = ..., stats: _Optional[_Union[Stats, _Mapping]] = ...) -> None: ...
