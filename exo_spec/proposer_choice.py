"""Which proposer a job runs, decided from the request and the checkpoint before
anything heavy loads (the vocabulary is ``spec_mode``'s)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .models import dflash, gemma4_assistant
from .models.cards import default_drafter
from .models.load import ModelLoadError, read_config, resolve
from .models.mtp import mtp_layer_count
from .spec_mode import ProposerKind, SpecMode, check_request, no_mtp_heads


def choose_proposer(model: str, path: Path, draft_model: str | None, spec: SpecMode,
                    locate: Callable[[str], Path] = resolve) -> tuple[ProposerKind, str | None]:
    """``(kind, drafter)``: drafter is the draft model to load, the one named or, when
    none is and the checkpoint has no MTP heads, its model card's. ``ModelLoadError``
    when ``spec`` asks for MTP heads the checkpoint lacks. ``locate`` finds the drafter's
    directory (a worker's finds only what its model sources allow). The kind is the
    model proposer's: a prompt lookup (``spec.lookup``) drafts beside it, or alone
    where it is NONE."""
    check_request(spec, draft_model, None)
    has_mtp = mtp_layer_count(path) > 0
    if spec.wants_mtp:
        if not has_mtp:
            raise ModelLoadError(no_mtp_heads(str(path)))
        return ProposerKind.MTP, None
    if spec == SpecMode.NONE or (spec == SpecMode.LOOKUP and draft_model is None):
        return ProposerKind.NONE, None
    if draft_model is None and not has_mtp:
        draft_model = default_drafter(model, path)
    if draft_model is None:
        return (ProposerKind.MTP if has_mtp else ProposerKind.NONE), None
    config = read_config(locate(draft_model))
    if gemma4_assistant.is_assistant(config):
        return ProposerKind.ASSISTANT, draft_model
    if dflash.is_dflash(config):
        return ProposerKind.DFLASH, draft_model
    return ProposerKind.DRAFT, draft_model


def assistant_across_ranks(drafter: str) -> str:
    return f"Gemma 4 assistant {drafter} reads the target's K/V: not supported across ranks yet"


def dflash_across_ranks(drafter: str) -> str:
    return (f"DFlash drafter {drafter} reads the outputs of target layers that a group "
            "spreads over its ranks: not supported across ranks yet")


def choose_group_proposer(model: str, path: Path, draft_model: str | None,
                          spec: SpecMode) -> tuple[ProposerKind, str | None]:
    """``choose_proposer`` for rank 0 of a group: a Gemma 4 assistant, which reads the
    target's K/V, and a DFlash drafter, which reads several target layers' outputs,
    cannot span ranks (``ModelLoadError``)."""
    kind, drafter = choose_proposer(model, path, draft_model, spec)
    if kind == ProposerKind.ASSISTANT:
        raise ModelLoadError(assistant_across_ranks(drafter))
    if kind == ProposerKind.DFLASH:
        raise ModelLoadError(dflash_across_ranks(drafter))
    return kind, drafter
