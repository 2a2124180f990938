import datetime

from exo_spec.v1 import common_pb2 as _common_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetInfoRequest(_message.Message):
    __slots__ = ("coordinator_id",)
    COORDINATOR_ID_FIELD_NUMBER: _ClassVar[int]
    coordinator_id: str
    def __init__(self, coordinator_id: _Optional[str] = ...) -> None: ...

class Lease(_message.Message):
    __slots__ = ("holder", "until")
    HOLDER_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    holder: str
    until: _timestamp_pb2.Timestamp
    def __init__(self, holder: _Optional[str] = ..., until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class WorkerInfo(_message.Message):
    __slots__ = ("node_id", "version", "host", "port", "memory_bytes", "chip", "backend", "placement_ids", "lease", "instance_id")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    CHIP_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_IDS_FIELD_NUMBER: _ClassVar[int]
    LEASE_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    version: str
    host: str
    port: int
    memory_bytes: int
    chip: str
    backend: str
    placement_ids: _containers.RepeatedScalarFieldContainer[str]
    lease: Lease
    instance_id: str
    def __init__(self, node_id: _Optional[str] = ..., version: _Optional[str] = ..., host: _Optional[str] = ..., port: _Optional[int] = ..., memory_bytes: _Optional[int] = ..., chip: _Optional[str] = ..., backend: _Optional[str] = ..., placement_ids: _Optional[_Iterable[str]] = ..., lease: _Optional[_Union[Lease, _Mapping]] = ..., instance_id: _Optional[str] = ...) -> None: ...

class InspectModelRequest(_message.Message):
    __slots__ = ("model", "draft_model", "spec")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DRAFT_MODEL_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    model: str
    draft_model: str
    spec: _common_pb2.SpecMode
    def __init__(self, model: _Optional[str] = ..., draft_model: _Optional[str] = ..., spec: _Optional[_Union[_common_pb2.SpecMode, str]] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("mode", "draft_model", "num_layers", "weight_bytes", "draft_bytes", "context_length", "split_refusal")
    MODE_FIELD_NUMBER: _ClassVar[int]
    DRAFT_MODEL_FIELD_NUMBER: _ClassVar[int]
    NUM_LAYERS_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_BYTES_FIELD_NUMBER: _ClassVar[int]
    DRAFT_BYTES_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    SPLIT_REFUSAL_FIELD_NUMBER: _ClassVar[int]
    mode: str
    draft_model: str
    num_layers: int
    weight_bytes: int
    draft_bytes: int
    context_length: int
    split_refusal: str
    def __init__(self, mode: _Optional[str] = ..., draft_model: _Optional[str] = ..., num_layers: _Optional[int] = ..., weight_bytes: _Optional[int] = ..., draft_bytes: _Optional[int] = ..., context_length: _Optional[int] = ..., split_refusal: _Optional[str] = ...) -> None: ...

class ReservePortRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReservePortResponse(_message.Message):
    __slots__ = ("port",)
    PORT_FIELD_NUMBER: _ClassVar[int]
    port: int
    def __init__(self, port: _Optional[int] = ...) -> None: ...

class LoadPlacementRequest(_message.Message):
    __slots__ = ("placement_id", "model", "draft_model", "spec", "rank", "hosts", "split", "coordinator_id")
    PLACEMENT_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DRAFT_MODEL_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    HOSTS_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    COORDINATOR_ID_FIELD_NUMBER: _ClassVar[int]
    placement_id: str
    model: str
    draft_model: str
    spec: _common_pb2.SpecMode
    rank: int
    hosts: _containers.RepeatedScalarFieldContainer[str]
    split: _containers.RepeatedScalarFieldContainer[int]
    coordinator_id: str
    def __init__(self, placement_id: _Optional[str] = ..., model: _Optional[str] = ..., draft_model: _Optional[str] = ..., spec: _Optional[_Union[_common_pb2.SpecMode, str]] = ..., rank: _Optional[int] = ..., hosts: _Optional[_Iterable[str]] = ..., split: _Optional[_Iterable[int]] = ..., coordinator_id: _Optional[str] = ...) -> None: ...

class LoadEvent(_message.Message):
    __slots__ = ("progress", "ready_mode", "batch_capacity")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    READY_MODE_FIELD_NUMBER: _ClassVar[int]
    BATCH_CAPACITY_FIELD_NUMBER: _ClassVar[int]
    progress: str
    ready_mode: str
    batch_capacity: int
    def __init__(self, progress: _Optional[str] = ..., ready_mode: _Optional[str] = ..., batch_capacity: _Optional[int] = ...) -> None: ...

class RunJobRequest(_message.Message):
    __slots__ = ("placement_id", "job_id", "decode", "default_max_tokens", "coordinator_id", "generated_token_ids")
    PLACEMENT_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    DECODE_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COORDINATOR_ID_FIELD_NUMBER: _ClassVar[int]
    GENERATED_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    placement_id: str
    job_id: str
    decode: _common_pb2.Decode
    default_max_tokens: int
    coordinator_id: str
    generated_token_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, placement_id: _Optional[str] = ..., job_id: _Optional[str] = ..., decode: _Optional[_Union[_common_pb2.Decode, _Mapping]] = ..., default_max_tokens: _Optional[int] = ..., coordinator_id: _Optional[str] = ..., generated_token_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class RunEvent(_message.Message):
    __slots__ = ("tokens", "finished")
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    tokens: _common_pb2.TokenChunk
    finished: _common_pb2.Finished
    def __init__(self, tokens: _Optional[_Union[_common_pb2.TokenChunk, _Mapping]] = ..., finished: _Optional[_Union[_common_pb2.Finished, _Mapping]] = ...) -> None: ...

class ReleasePlacementRequest(_message.Message):
    __slots__ = ("placement_id", "coordinator_id")
    PLACEMENT_ID_FIELD_NUMBER: _ClassVar[int]
    COORDINATOR_ID_FIELD_NUMBER: _ClassVar[int]
    placement_id: str
    coordinator_id: str
    def __init__(self, placement_id: _Optional[str] = ..., coordinator_id: _Optional[str] = ...) -> None: ...

class ReleasePlacementResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class EndLeaseRequest(_message.Message):
    __slots__ = ("coordinator_id",)
    COORDINATOR_ID_FIELD_NUMBER: _ClassVar[int]
    coordinator_id: str
    def __init__(self, coordinator_id: _Optional[str] = ...) -> None: ...

class EndLeaseResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, models: _Optional[_Iterable[str]] = ...) -> None: ...
