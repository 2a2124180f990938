"""One rank of a ``--local-ranks`` job: load this rank's share of the target, then
lead the round loop (rank 0, with the drafter) or follow it (ranks > 0)."""

from __future__ import annotations

import argparse
import json
import sys

import mlx.core as mx

from ..generate import decode
from ..models import gemma4_assistant
from ..models.cards import default_drafter
from ..models.load import (
    LoadedModel,
    ModelLoadError,
    check_same_vocabulary,
    load,
    read_config,
    resolve,
)
from ..spec import AdaptiveDraftLength, DraftModel, FixedDraftLength, Sampling, SpecDecoder
from .follower import follow
from .group_target import GroupTarget
from .pipeline import Stage, layer_count, layer_ranges, parse_split
from .stage_cache import StageCache


def _drafter(args, target: LoadedModel) -> LoadedModel | None:
    if args.mtp is False:
        return None
    name = args.draft_model or default_drafter(args.model, target.path)
    if name is None:
        return None
    if gemma4_assistant.is_assistant(read_config(resolve(name))):
        raise ModelLoadError("Gemma 4 assistants read the target's K/V: "
                             "not supported with --local-ranks yet")
    drafter = load(name)
    check_same_vocabulary(target, drafter)
    return drafter


def _decoder(args, target: LoadedModel, group_target: GroupTarget,
             drafter: LoadedModel | None) -> SpecDecoder:
    proposer = drafter and DraftModel(drafter.model, max_kv_size=args.max_kv_size)
    return SpecDecoder(
        group_target,
        proposer,
        sampling=Sampling(temp=args.temp, top_p=args.top_p, top_k=args.top_k,
                          min_p=args.min_p),
        draft_length=FixedDraftLength(args.num_draft) if args.num_draft
        else AdaptiveDraftLength(),
        eos_token_ids=set(target.tokenizer.eos_token_ids),
    )


def main(job: str) -> int:
    args = argparse.Namespace(**json.loads(job))
    group = mx.distributed.init(backend="ring", strict=True)
    rank, size = group.rank(), group.size()
    try:
        target = load(args.model, lazy=True)
        drafter = _drafter(args, target) if rank == 0 else None
        split = parse_split(args.split) if args.split else None
        layers = layer_ranges(layer_count(target.model), size, split)[rank]
    except (ValueError, ModelLoadError, OSError) as e:
        print(f"exo-spec generate: error: {e}", file=sys.stderr)
        return 2
    local = StageCache(Stage(target.model, layers, rank))
    try:
        if rank:
            follow(local, group)
            return 0
        group_target = GroupTarget(local, group)
        code = decode(args, _decoder(args, target, group_target, drafter), target.tokenizer,
                      {"ranks": size, "parallel": "pipeline"})
        group_target.close()
        return code
    except RuntimeError as e:  # the ring backend's "connection to a peer was lost"
        print(f"exo-spec generate: error: rank {rank}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
