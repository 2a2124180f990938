"""The models one decoder needs, loaded once for every job: the target, and the
weights its proposer drafts with (a drafter, a Gemma 4 assistant, a DFlash block
drafter, or the target's own MTP head); and whether its rounds draft by prompt lookup
first, which needs no weights."""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn

from .models import dflash, gemma4_assistant
from .models.load import LoadedModel, check_same_vocabulary, load, resolve
from .models.mtp import load_mtp
from .models.quantize import quantize
from .proposer_choice import choose_proposer
from .spec_mode import ProposerKind, SpecMode

# Drafters that read the target's own states, each with its loader and pairing checks.
READS_THE_TARGET = {ProposerKind.ASSISTANT: gemma4_assistant.load_for,
                    ProposerKind.DFLASH: dflash.load_for}


@dataclass
class ModelSet:
    target: LoadedModel
    drafter: LoadedModel | None
    mode: ProposerKind
    mtp: nn.Module | None = None  # mode MTP: the target's MTP head
    lookup: bool = False  # prompt lookup drafts first (engine.prompt_lookup), beside mode

    @classmethod
    def of(cls, target: LoadedModel, drafter: LoadedModel | None, mode: ProposerKind,
           bits: int | None = None, lookup: bool = False) -> ModelSet:
        """The set for ``mode``, reading the target's MTP head (quantized to ``bits``, as
        the target was loaded) when it is MTP."""
        return cls(target, drafter, mode,
                   load_mtp(target.path, target.model, bits) if mode == ProposerKind.MTP
                   else None, lookup)


def load_models(model: str, draft_model: str | None = None, spec: SpecMode = SpecMode.AUTO,
                bits: int | None = None) -> ModelSet:
    """``bits``: quantize every model read here (see ``models.quantize``)."""
    target = load(model, bits=bits)
    mode, drafter_id = choose_proposer(model, target.path, draft_model, spec)
    if mode in READS_THE_TARGET:
        drafter = READS_THE_TARGET[mode](resolve(drafter_id), target)
        if bits:
            mx.eval(quantize(drafter.model, bits).parameters())
        return ModelSet(target, drafter, mode, lookup=spec.lookup)
    drafter = None
    if mode == ProposerKind.DRAFT:
        drafter = load(drafter_id, bits=bits)
        check_same_vocabulary(target, drafter)
    return ModelSet.of(target, drafter, mode, bits, spec.lookup)
