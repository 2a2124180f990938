"""One rank of a ``--local-ranks`` job: load this rank's share of the target (a
pipeline stage, or tensor-parallel slices), then lead the round loop (rank 0,
with the proposer) or follow it (ranks > 0).

The proposer lives on rank 0, a drafter model or the checkpoint's own MTP head.
DESIGN.md puts MTP "where the final hidden state is"; in this pipeline the last
stage sends its hidden rows back to rank 0, which applies the head, so that is
rank 0: only it loads the MTP weights, and the round loop feeds the head the
normed hidden rows it already gets back, with no extra transfer. (Tensor-parallel
groups refuse MTP for now: see ``launch``.)
"""

from __future__ import annotations

import argparse
import json
import sys

import mlx.core as mx

from ..generate import decode
from ..models.load import LoadedModel, ModelLoadError, check_same_vocabulary, load
from ..session import Models, make_decoder
from ..spec import CachedModel, Sampling
from .follower import follow
from .forward import PipelineForward, TensorForward
from .group_target import GroupTarget
from .pipeline import Stage, layer_count, layer_ranges, parse_split
from .proposal import group_mode
from .tensor import shard
from .stage_cache import StageCache
from .traffic import Traffic


def _models(args, target: LoadedModel) -> Models:
    mode, draft_model = group_mode(args.model, target.path, args.draft_model, args.mtp)
    drafter = load(draft_model) if draft_model else None
    if drafter:
        check_same_vocabulary(target, drafter)
    return Models(target, drafter, mode)


def _placement(args, target: LoadedModel, group: mx.distributed.Group, traffic: Traffic):
    """This rank's share of the target and how a forward pass crosses the group."""
    if args.parallel == "tensor":
        shard(target.model, group)
        cached = CachedModel(target.model)
        return cached, TensorForward(cached, group, traffic)
    split = parse_split(args.split) if args.split else None
    layers = layer_ranges(layer_count(target.model), group.size(), split)[group.rank()]
    local = StageCache(Stage(target.model, layers, group.rank()))
    return local, PipelineForward(local, group, traffic)


def main(job: str) -> int:
    args = argparse.Namespace(**json.loads(job))
    group = mx.distributed.init(backend="ring", strict=True)
    rank, size = group.rank(), group.size()
    traffic = Traffic()
    try:
        target = load(args.model, lazy=True)
        models = _models(args, target) if rank == 0 else None
        local, forward = _placement(args, target, group, traffic)
    except (ValueError, ModelLoadError, OSError) as e:
        print(f"exo-spec generate: error: {e}", file=sys.stderr)
        return 2
    try:
        if rank:
            follow(local, group, forward, traffic)
            return 0
        group_target = GroupTarget(local, group, forward, traffic)
        sampling = Sampling(temp=args.temp, top_p=args.top_p, top_k=args.top_k,
                            min_p=args.min_p)
        decoder = make_decoder(models, sampling=sampling, num_draft=args.num_draft,
                               cached=group_target)
        code = decode(args, decoder, target.tokenizer, lambda: {
            "ranks": size, "parallel": args.parallel,
            **group_target.traffic_per_round(decoder.stats.rounds)})
        group_target.close()
        return code
    except RuntimeError as e:  # the ring backend's "connection to a peer was lost"
        print(f"exo-spec generate: error: rank {rank}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
