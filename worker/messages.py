"""Between the WorkerControl protos and the runner's frames."""

from __future__ import annotations

from ..engine import Sampling
from ..v1 import common_pb2, worker_pb2
from .refusal import Refusal

DEFAULT_MAX_TOKENS = 256  # Decode.max_tokens 0


def job_frame(job_id: str, decode: common_pb2.Decode) -> dict:
    """The runner's job frame; INVALID_ARGUMENT for sampling values out of range."""
    s = decode.sampling
    sampling = {"temp": s.temperature, "top_p": s.top_p or 1.0, "top_k": s.top_k,
                "min_p": s.min_p}
    try:
        Sampling(**sampling)
    except ValueError as e:
        raise Refusal("INVALID_ARGUMENT", str(e)) from None
    return {
        "type": "job",
        "job_id": job_id,
        "prompt": decode.prompt,
        "max_tokens": decode.max_tokens or DEFAULT_MAX_TOKENS,
        "sampling": sampling,
        "seed": s.seed if s.HasField("seed") else None,
        "num_draft": decode.num_draft or None,
        "ignore_chat_template": decode.ignore_chat_template,
    }


def stats(values: dict) -> common_pb2.Stats:
    fields = common_pb2.Stats.DESCRIPTOR.fields_by_name
    return common_pb2.Stats(**{k: v for k, v in values.items() if k in fields and v is not None})


def run_event(frame: dict) -> worker_pb2.RunEvent:
    """A "tokens" or "finished" frame as the RunEvent the coordinator reads."""
    if frame["type"] == "tokens":
        return worker_pb2.RunEvent(tokens=common_pb2.TokenChunk(
            token_ids=frame["token_ids"], text=frame["text"]))
    return worker_pb2.RunEvent(finished=common_pb2.Finished(
        finish_reason=frame["finish_reason"], text=frame["text"],
        token_ids=frame["token_ids"], stats=stats(frame["stats"])))
