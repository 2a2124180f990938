"""Load one rank of a group: this rank's share of the target (a pipeline stage, or
tensor-parallel slices) and, on rank 0, the proposer's models.

The one-shot ``--local-ranks`` runner and the worker's long-lived runner both
start here. The proposer lives on rank 0, a drafter model or the checkpoint's
own MTP head. The MTP head reads the final hidden state, and in this pipeline
the last stage sends its hidden rows back to rank 0, which applies the head:
only rank 0 loads the MTP weights, and the round loop feeds
the head the normed hidden rows it already gets back, with no extra transfer.
In a tensor-parallel group every rank ends the pass with the whole hidden state,
so rank 0 drafts alone there too; mlx-lm's ``shard`` may split the lm_head over
the vocabulary, so rank 0's MTP reads the embedding and head from an unsharded,
lazily loaded copy of the target (only those weights are ever read from it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import mlx.core as mx

from ..engine import CachedModel
from ..model_set import ModelSet
from ..models.load import LoadedModel, check_same_vocabulary, load
from ..proposer_choice import choose_group_proposer
from ..spec_mode import ProposerKind, SpecMode
from .doorbell import Bell, Doorbell, leader_host
from .follower import follow
from .forward import PipelineForward, TensorForward
from .group_target import GroupTarget
from .pipeline import Stage, layer_count, layer_ranges
from .stage_cache import StageCache
from .tensor import shard
from .traffic import Traffic


@dataclass
class Rank:
    group: mx.distributed.Group
    target: LoadedModel
    models: ModelSet | None  # rank 0 only: the target and the proposer's models
    local: StageCache | CachedModel
    forward: PipelineForward | TensorForward
    traffic: Traffic
    parallel: str  # "pipeline" or "tensor"
    doorbell: Doorbell | None = None  # rank 0 of a long-lived group ...
    bell: Bell | None = None  # ... and its followers: see ``wait_off_ring``

    def wait_off_ring(self) -> None:
        """For a group that outlives its jobs: connect rank 0's doorbell to every
        follower, so that the followers can wait between jobs without spinning (every
        rank calls this at the same point)."""
        if self.group.rank() == 0:
            self.doorbell = Doorbell(self.group)
        else:
            self.bell = Bell(self.group, leader_host())

    def lead(self) -> GroupTarget:
        """Rank 0's target: the round loop verifies with it."""
        return GroupTarget(self.local, self.group, self.forward, self.traffic, self.doorbell)

    def follow(self) -> None:
        """Ranks > 0: serve rank 0's commands until it says stop."""
        follow(self.local, self.group, self.forward, self.traffic, self.bell)


def load_rank(
    group: mx.distributed.Group,
    model: str,
    draft_model: str | None = None,
    spec: SpecMode = SpecMode.AUTO,
    *,
    parallel: str = "pipeline",
    split: Sequence[int] | None = None,
    max_kv_size: int | None = None,
    bits: int | None = None,
    progress: Callable[[str], None] = lambda message: None,
) -> Rank:
    """Refusals (ModelLoadError, or ValueError for a bad split) come before any weight
    is read; ``progress`` hears "loading target" and "loading drafter"; ``bits``
    quantizes every model this rank reads."""
    target = load(model, lazy=True, bits=bits)
    rank = group.rank()
    mode, drafter_id = choose_group_proposer(model, target.path, draft_model, spec) if rank == 0 \
        else (None, None)
    traffic = Traffic()
    if parallel == "tensor":
        progress("loading target")
        shard(target.model, group)
        local = CachedModel(target.model, max_kv_size=max_kv_size)
        forward = TensorForward(local, group, traffic)
    else:
        layers = layer_ranges(layer_count(target.model), group.size(), split)[rank]
        progress("loading target")
        local = StageCache(Stage(target.model, layers, rank), max_kv_size)
        forward = PipelineForward(local, group, traffic)
    models = None
    if rank == 0:
        if parallel == "tensor" and mode == ProposerKind.MTP:
            target = load(model, lazy=True, bits=bits)
        drafter = None
        if drafter_id:
            progress("loading drafter")
            drafter = load(drafter_id, bits=bits)
            check_same_vocabulary(target, drafter)
        models = ModelSet.of(target, drafter, mode, bits, spec.lookup)
    return Rank(group, target, models, local, forward, traffic, parallel)
