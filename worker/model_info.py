"""InspectModel: what placing a model needs, read from its config, tokenizer and
weight file sizes. Weights are only ever loaded lazily here (no tensor is read).

Statuses: NOT_FOUND when the model or a drafter is neither a local path nor a
Hugging Face id this node can fetch (the message begins "model M not found" or
"drafter D not found"); INVALID_ARGUMENT for a proposer request that contradicts
itself, or a checkpoint that cannot be used, found here before any runner starts: a
config that is not a JSON object, lacks model_type (or names one mlx-lm lacks) or
gives a size that is not an integer, weight files missing or cut short, no tokenizer
files, a drafter whose vocabulary differs; FAILED_PRECONDITION for a proposer
the model or placement cannot run (MTP without MTP heads, a Gemma 4 assistant
or a model whose layers cannot be split, across nodes).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from grpc import StatusCode

from ..group.pipeline import split_refusal
from ..models.cards import default_drafter
from ..models.gemma4_assistant import is_assistant
from ..models.load import (
    ModelLoadError,
    check_checkpoint,
    check_model_type,
    check_same_vocabulary,
    check_tokenizer,
    context_length,
    exists,
    load,
    resolve,
    text_config,
)
from ..models.mtp import mtp_layer_count
from ..proposer_choice import assistant_across_ranks, choose_proposer
from ..spec_mode import ConflictingRequest, ProposerKind, SpecMode, check_request, no_mtp_heads
from ..status import StatusError
from ..v1 import worker_pb2


def local_dir(model: str, node_id: str, what: str = "model") -> Path:
    """The local directory of ``model``; NOT_FOUND naming it (``what``: "model" or
    "drafter") and this node."""
    try:
        return resolve(model)
    except ModelLoadError as e:
        if exists(model):  # there, but not a checkpoint
            raise StatusError(StatusCode.INVALID_ARGUMENT, f"{e} (node {node_id})") from None
        reason = str(e).splitlines()[0]  # the hub's errors run over several lines
        raise StatusError(StatusCode.NOT_FOUND,
                          f"{what} {model} not found on node {node_id}: {reason}") from None


def checked(path: Path, *, drafter: bool = False) -> dict:
    """``path``'s config, once the checkpoint's files pass ``check_checkpoint`` (a
    Gemma 4 assistant drafter may come without a tokenizer: it reads the target's);
    INVALID_ARGUMENT otherwise."""
    try:
        config = check_checkpoint(path, tokenizer=False)
        if not (drafter and is_assistant(config)):
            check_tokenizer(path)
            check_model_type(path, config)
        return config
    except ModelLoadError as e:
        raise StatusError(StatusCode.INVALID_ARGUMENT, str(e)) from None


def weight_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.glob("*.safetensors"))


@dataclass(frozen=True)
class ModelFacts:
    """What InspectModel answers (``worker_pb2.ModelInfo``)."""

    mode: ProposerKind
    draft_model: str | None
    num_layers: int
    weight_bytes: int
    draft_bytes: int
    context_length: int  # 0 when the config does not say
    split_refusal: str  # why the layers cannot span nodes ("" when they can)

    def to_proto(self) -> worker_pb2.ModelInfo:
        return worker_pb2.ModelInfo(
            mode=self.mode, draft_model=self.draft_model or "", num_layers=self.num_layers,
            weight_bytes=self.weight_bytes, draft_bytes=self.draft_bytes,
            context_length=self.context_length, split_refusal=self.split_refusal)


def inspect_model(model: str, draft_model: str | None, spec: SpecMode, node_id: str,
                  *, ranks: int = 1) -> ModelFacts:
    """``ranks`` > 1: the placement spans that many nodes (no assistants there yet)."""
    if not model:
        raise StatusError(StatusCode.INVALID_ARGUMENT, "no model given")
    path = local_dir(model, node_id)
    config = checked(path)
    text = text_config(config)
    try:
        check_request(spec, draft_model, None)
    except ConflictingRequest as e:
        raise StatusError(StatusCode.INVALID_ARGUMENT, str(e)) from None
    if spec == SpecMode.MTP and mtp_layer_count(path) == 0:
        raise StatusError(StatusCode.FAILED_PRECONDITION,
                          f"SPEC_MODE_MTP: {no_mtp_heads(model)} (model_type "
                          f"{config.get('model_type')})")
    draft_path = local_dir(draft_model, node_id, "drafter") if draft_model else None
    if draft_path:
        checked(draft_path, drafter=True)
    try:
        mode, drafter = choose_proposer(model, path, draft_model, spec)
    except ModelLoadError as e:
        card_drafter = None if draft_model else default_drafter(model, path)
        if card_drafter:  # NOT_FOUND when the card's drafter failed
            local_dir(card_drafter, node_id, "drafter")
        raise StatusError(StatusCode.INVALID_ARGUMENT, str(e)) from None
    if drafter and draft_path is None:
        draft_path = local_dir(drafter, node_id, "drafter")
        checked(draft_path, drafter=True)
    if mode == ProposerKind.ASSISTANT and ranks > 1:
        raise StatusError(StatusCode.FAILED_PRECONDITION, assistant_across_ranks(drafter))
    cannot_split = split_refusal(config)
    if cannot_split and ranks > 1:
        raise StatusError(StatusCode.FAILED_PRECONDITION, f"{model}: {cannot_split}")
    if mode == ProposerKind.DRAFT:
        try:
            check_same_vocabulary(load(str(path), lazy=True), load(str(draft_path), lazy=True))
        except ModelLoadError as e:
            raise StatusError(StatusCode.INVALID_ARGUMENT, str(e)) from None
    return ModelFacts(
        mode=mode,
        draft_model=drafter,
        num_layers=text.get("num_hidden_layers") or 0,
        weight_bytes=weight_bytes(path),
        draft_bytes=weight_bytes(draft_path) if draft_path else 0,
        context_length=context_length(config),
        split_refusal=cannot_split,
    )
