"""One rank of a test group that decodes two turns of a conversation with a prefix cache
(``python tests/group_turns.py JOB_JSON`` with MLX_RANK and MLX_HOSTFILE set): rank 0
prints turn 2's prompt, its tokens from the cache, its cached prompt tokens, its
tokens decoded again with no cache and how far the last logits of a prompt that extends
it, from the cache, are from those of a whole prefill, as JSON."""

from __future__ import annotations

import json
import sys

import mlx.core as mx
import numpy as np

from exo_spec.decoder_factory import make_decoder
from exo_spec.engine import Sampling
from exo_spec.engine.cache_snapshot import layout
from exo_spec.group.rank import load_rank
from exo_spec.spec_mode import SpecMode
from exo_spec.worker.runner.targets import GroupLeader


def last_logits(leader: GroupLeader, prompt: list[int], cached: bool) -> np.ndarray:
    """The prompt's last logits on the group, from the prefix cache's hit or not."""
    leader.target.reset()
    start = 0
    if cached:
        hit = leader.prefix_cache.lookup(prompt, layout(leader.target.cache))
        leader.target.adopt(hit.caches)
        start = hit.length
    logits, _ = leader.target.prefill(mx.array(prompt[start:], dtype=mx.uint32), start=start)
    return np.array(logits)


def main(job: dict) -> None:
    group = mx.distributed.init(backend="ring", strict=True)
    spec = SpecMode.AUTO if job["draft_model"] else SpecMode.NONE
    rank = load_rank(group, job["model"], job["draft_model"], spec, parallel=job["parallel"],
                     split=job["split"])
    if group.rank():
        rank.follow()
        return
    leader = GroupLeader(rank, 1 << 30)
    tokenizer = rank.target.tokenizer

    def decode(decoder, prompt):
        return [t for chunk in decoder.generate(prompt, job["max_tokens"]) for t in chunk]

    p1 = tokenizer.encode(job["first"])
    p2 = p1 + decode(leader.decoder(Sampling(), job["num_draft"]), p1) + \
        tokenizer.encode(job["next"])
    hit = leader.decoder(Sampling(), job["num_draft"])
    got = decode(hit, p2)
    leader.target.reset()
    fresh = make_decoder(rank.models, sampling=Sampling(), num_draft=job["num_draft"],
                         target=leader.target)
    want = decode(fresh, p2)
    p3 = p2 + tokenizer.encode(job["next"])  # a hit at the end of turn 2's prompt
    logits = [last_logits(leader, p3, cached) for cached in (True, False)]
    leader.target.close()
    print(json.dumps({"prompt": p2, "got": got, "want": want,
                      "logits_differ": float(np.abs(logits[0] - logits[1]).max()),
                      "cached": hit.stats.to_dict()["cached_prompt_tokens"],
                      "fresh_cached": fresh.stats.cached_prompt_tokens}))


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
