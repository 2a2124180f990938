"""One rank of a ``--local-ranks`` job: load this rank's share (``rank.load_rank``),
then lead the round loop (rank 0, with the proposer) or follow it (ranks > 0)
until rank 0 stops the group."""

from __future__ import annotations

import argparse
import json
import sys

import mlx.core as mx

from ..commands.generate import penalties_from_args
from ..engine import Sampling, SpecDecoder
from ..job_series import JobSeries
from ..local_job import decode, warm_up
from ..models.load import ModelLoadError
from ..spec_mode import SpecMode
from .pipeline import parse_split
from .rank import load_rank


def main(job: str) -> int:
    args = argparse.Namespace(**json.loads(job))
    group = mx.distributed.init(backend="ring", strict=True)
    try:
        rank = load_rank(group, args.model, args.draft_model, SpecMode(args.spec),
                         parallel=args.parallel,
                         split=parse_split(args.split) if args.split else None,
                         max_kv_size=args.max_kv_size, bits=args.quantize)
    except (ValueError, ModelLoadError, OSError) as e:
        print(f"exo-spec generate: error: {e}", file=sys.stderr)
        return 2
    try:
        if group.rank():
            rank.follow()
            return 0
        group_target = rank.lead()
        sampling = Sampling(temp=args.temp, top_p=args.top_p, top_k=args.top_k,
                            min_p=args.min_p)

        jobs = JobSeries()

        def new_decoder() -> SpecDecoder:
            group_target.reset()  # as a worker starts each job on its group
            return jobs.new_decoder(rank.models, sampling=sampling, num_draft=args.num_draft,
                                    max_kv_size=args.max_kv_size, target=group_target,
                                    penalties=penalties_from_args(args),
                                    logprobs=args.logprobs)

        warm_up(args, new_decoder, rank.target.tokenizer)
        decoder = new_decoder()
        code = decode(args, decoder, rank.target.tokenizer, lambda: {
            "ranks": group.size(), "parallel": args.parallel,
            **group_target.traffic_per_round(decoder.stats.rounds)})
        group_target.close()
        return code
    except RuntimeError as e:  # the ring backend's "connection to a peer was lost"
        print(f"exo-spec generate: error: rank {group.rank()}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
