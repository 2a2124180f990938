"""How a request names its proposer, and what a placement resolves it to.

A request says what it wants with a ``SpecMode`` (automatic, the target's own MTP
heads, no speculation, or prompt lookup, alone or beside a drafter or the MTP heads)
and optionally a drafter; ``proposer_choice`` resolves
that against the checkpoint into a ``ProposerKind``. ``check_request`` refuses
settings that contradict each other, for the CLI, the gRPC API and the worker
alike, in the caller's own words. Nothing here imports MLX.
"""

from __future__ import annotations

from enum import StrEnum

from .v1 import common_pb2


class SpecMode(StrEnum):
    """What a request asks for (the proto's ``SpecMode``, the CLI's --mtp / --no-spec /
    --prompt-lookup)."""

    AUTO = "auto"  # the named drafter, else the checkpoint's MTP heads, else its card's drafter
    MTP = "mtp"  # the checkpoint's own MTP heads
    NONE = "none"  # plain decoding
    LOOKUP = "lookup"  # prompt lookup, beside the named drafter if there is one
    LOOKUP_MTP = "lookup_mtp"  # prompt lookup beside the checkpoint's own MTP heads

    @property
    def lookup(self) -> bool:
        """Whether rounds draft by prompt lookup first."""
        return self in (SpecMode.LOOKUP, SpecMode.LOOKUP_MTP)

    @property
    def wants_mtp(self) -> bool:
        """Whether the checkpoint must have MTP heads."""
        return self in (SpecMode.MTP, SpecMode.LOOKUP_MTP)

    @classmethod
    def from_proto(cls, value: int) -> SpecMode:
        """ValueError for a value the proto does not define."""
        if value not in common_pb2.SpecMode.values():
            raise ValueError(f"unknown spec mode {value}")
        return cls(common_pb2.SpecMode.Name(value).removeprefix("SPEC_MODE_").lower())

    def to_proto(self) -> int:
        return common_pb2.SpecMode.Value(f"SPEC_MODE_{self.name}")


class ProposerKind(StrEnum):
    """What a placement drafts with, once resolved (the stats' ``mode``)."""

    MTP = "mtp"
    DRAFT = "draft"  # a separate drafter model
    ASSISTANT = "assistant"  # a Gemma 4 assistant reading the target's K/V
    DFLASH = "dflash"  # a DFlash block drafter reading the target's layer outputs
    NONE = "none"


class ConflictingRequest(ValueError):
    """A request whose proposer settings contradict each other."""


def check_request(spec: SpecMode, draft_model: str | None, num_draft: int | None, *,
                  names: dict[str, str] | None = None) -> None:
    """``ConflictingRequest`` when the settings contradict each other; ``names`` gives the
    caller's words for "mtp", "none", "draft_model" and "num_draft" (flags or fields)."""
    said = {"mtp": f"SPEC_MODE_{spec.name}", "none": "SPEC_MODE_NONE",
            "draft_model": "a draft model", "num_draft": "num_draft", **(names or {})}
    if spec.wants_mtp and draft_model:
        raise ConflictingRequest(f"{said['mtp']} and {said['draft_model']} are exclusive: "
                                 "pick one proposer")
    if spec == SpecMode.NONE and draft_model:
        raise ConflictingRequest(f"{said['none']} and {said['draft_model']} contradict each other")
    if spec == SpecMode.NONE and num_draft:
        raise ConflictingRequest(f"{said['none']} and {said['num_draft']} contradict each other")


def no_mtp_heads(model: str) -> str:
    return f"{model} has no MTP heads (its checkpoint has no MTP weights)"
