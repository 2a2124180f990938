"""InspectModel: what placing a model needs, read from its config, tokenizer and
weight file sizes. Weights are only ever loaded lazily here (no tensor is read).

Models and drafters (a model card's too) are found only where the worker's
``model_sources.ModelSources`` allow. Statuses: NOT_FOUND when the model or a drafter
is not there (the message begins "model M not found" or "drafter D not found");
INVALID_ARGUMENT for a path outside the node's model directories, a proposer request
that contradicts itself, or a checkpoint that cannot be used, found here before any
runner starts: a config that is not a JSON object, lacks model_type (or names one
mlx-lm lacks), gives a size that is not an integer or that its weight files disagree
with (``models.checkpoint_sizes``), weight files missing or cut short, no tokenizer
files, a drafter whose vocabulary differs; FAILED_PRECONDITION for a proposer the
model or placement cannot run (MTP without MTP heads, a Gemma 4 assistant or a model
whose layers cannot be split, across nodes); RESOURCE_EXHAUSTED (``check_fits``) for
a rank whose weights exceed the node's memory budget.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from grpc import StatusCode

from ..group.pipeline import split_refusal
from ..models.dflash import is_dflash
from ..models.gemma4_assistant import is_assistant
from ..models.load import (
    ModelLoadError,
    check_checkpoint,
    check_model_type,
    check_same_vocabulary,
    check_tokenizer,
    context_length,
    load,
    text_config,
)
from ..models.mtp import mtp_layer_count
from ..proposer_choice import assistant_across_ranks, choose_proposer, dflash_across_ranks
from ..spec_mode import ConflictingRequest, ProposerKind, SpecMode, check_request, no_mtp_heads
from ..status import StatusError
from ..v1 import worker_pb2
from .model_sources import ModelSources


def checked(path: Path, *, drafter: bool = False) -> dict:
    """``path``'s config, once the checkpoint's files pass ``check_checkpoint`` (a
    Gemma 4 assistant or a DFlash drafter may come without a tokenizer: it reads the
    target's); INVALID_ARGUMENT otherwise."""
    try:
        config = check_checkpoint(path, tokenizer=False)
        if not (drafter and (is_assistant(config) or is_dflash(config))):
            check_tokenizer(path)
            check_model_type(path, config)
        return config
    except ModelLoadError as e:
        raise StatusError(StatusCode.INVALID_ARGUMENT, str(e)) from None


def weight_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.glob("*.safetensors"))


@dataclass(frozen=True)
class ModelFacts:
    """What InspectModel answers (``worker_pb2.ModelInfo``), and where the checkpoints
    are on this node (what a runner loads)."""

    mode: ProposerKind
    draft_model: str | None
    num_layers: int
    weight_bytes: int
    draft_bytes: int
    context_length: int  # 0 when the config does not say
    split_refusal: str  # why the layers cannot span nodes ("" when they can)
    path: Path
    draft_path: Path | None

    def to_proto(self) -> worker_pb2.ModelInfo:
        return worker_pb2.ModelInfo(
            mode=self.mode, draft_model=self.draft_model or "", num_layers=self.num_layers,
            weight_bytes=self.weight_bytes, draft_bytes=self.draft_bytes,
            context_length=self.context_length, split_refusal=self.split_refusal)


def check_fits(facts: ModelFacts, layers: range, rank: int, memory_bytes: int) -> None:
    """RESOURCE_EXHAUSTED when a rank's weights (its layers' share of the model's, and on
    rank 0 the drafter's) exceed the node's memory budget: such a load never starts a
    runner, whatever the caller planned."""
    share = facts.weight_bytes * len(layers) // max(facts.num_layers, len(layers), 1)
    need = share + (facts.draft_bytes if rank == 0 else 0)
    if need > memory_bytes:
        raise StatusError(StatusCode.RESOURCE_EXHAUSTED,
                          f"rank {rank}'s weights ({need / 2**30:.1f} GiB for layers "
                          f"{layers.start}-{layers.stop - 1}) exceed this node's memory budget "
                          f"of {memory_bytes / 2**30:.1f} GiB")


def inspect_model(model: str, draft_model: str | None, spec: SpecMode, node_id: str,
                  *, sources: ModelSources, ranks: int = 1) -> ModelFacts:
    """``ranks`` > 1: the placement spans that many nodes (no assistants there yet)."""
    if not model:
        raise StatusError(StatusCode.INVALID_ARGUMENT, "no model given")

    def drafter_dir(name: str) -> Path:
        return sources.locate(name, node_id, "drafter")

    path = sources.locate(model, node_id)
    config = checked(path)
    text = text_config(config)
    try:
        check_request(spec, draft_model, None)
    except ConflictingRequest as e:
        raise StatusError(StatusCode.INVALID_ARGUMENT, str(e)) from None
    if spec.wants_mtp and mtp_layer_count(path) == 0:
        raise StatusError(StatusCode.FAILED_PRECONDITION,
                          f"SPEC_MODE_{spec.name}: {no_mtp_heads(model)} (model_type "
                          f"{config.get('model_type')})")
    draft_path = drafter_dir(draft_model) if draft_model else None
    if draft_path:
        checked(draft_path, drafter=True)
    try:  # a model card's drafter is located as a named one is: never fetched unasked
        mode, drafter = choose_proposer(model, path, draft_model, spec, drafter_dir)
    except ModelLoadError as e:
        raise StatusError(StatusCode.INVALID_ARGUMENT, str(e)) from None
    if drafter and draft_path is None:
        draft_path = drafter_dir(drafter)
        checked(draft_path, drafter=True)
    if mode == ProposerKind.ASSISTANT and ranks > 1:
        raise StatusError(StatusCode.FAILED_PRECONDITION, assistant_across_ranks(drafter))
    if mode == ProposerKind.DFLASH and ranks > 1:
        raise StatusError(StatusCode.FAILED_PRECONDITION, dflash_across_ranks(drafter))
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
        path=path,
        draft_path=draft_path,
    )
