"""Ranks > 0: follow every command from rank 0 until it says stop.

Each follower keeps its own snapshots of its caches for rank 0's prefix-cache entries
(``group.prefix_cache``): entry id -> this rank's caches at that entry's end."""

from __future__ import annotations

import mlx.core as mx

from ..engine.cached_model import CachedModel
from .doorbell import Bell
from .forward import PipelineForward, TensorForward
from .prefix_cache import Snapshots
from .protocol import FORGET, PARK, RESET, RESTORE, SNAPSHOT, STOP, TRAFFIC, exchange
from .stage_cache import StageCache
from .traffic import Traffic


def follow(local: StageCache | CachedModel, group: mx.distributed.Group,
           forward: PipelineForward | TensorForward, traffic: Traffic,
           bell: Bell | None = None) -> None:
    fed = None  # this rank's inputs of the last forward, to close its round
    snapshots = Snapshots()
    while True:
        command = exchange(None, group)
        if command.end_kept >= 0:
            local.rounds.end(fed, command.end_kept)
        if command.op == STOP:
            return
        if command.op == TRAFFIC:
            traffic.total(group)
            continue
        if command.op == RESET:
            local.rounds.reset()
            fed = None
            continue
        if command.op in (RESTORE, SNAPSHOT, FORGET):
            snapshots.serve(command, local)  # between jobs' prompts: no round is open
            continue
        if command.op == PARK:
            bell.wait()
            continue
        if command.begin_width:
            local.rounds.begin(command.begin_width)
        fed = forward.follow(command.rows)
