"""Where a model goes: a pure function from model facts and free memory to ranks.

No I/O here. ``plan`` takes what ``InspectModel`` reported (layer count, weight
and drafter bytes, proposer mode), the ready nodes with their free memory, and
how many nodes the caller asked for (0: the planner picks), and returns the
ranks of a placement, rank 0 first, each a node and a contiguous layer range;
or raises ``StatusError`` with a gRPC status and a sentence a person understands.

Memory model. A rank holding ``b`` bytes of weights needs ``need(b)``:

    need(b) = ceil(b * (1 + KV_MARGIN)) + RANK_OVERHEAD

``KV_MARGIN`` (20%) covers the KV caches and activations that grow with the
context; ``RANK_OVERHEAD`` (256 MiB) covers the runner process itself (Python,
MLX, its buffers). A node fits a rank when ``need(b)`` is at most its free
memory: the budget it advertises less what the coordinator's placements on it
already need.

The weights of a layer are taken to be ``weight_bytes / num_layers``: the
embeddings and head are spread over the layers' share (``ModelInfo`` does not
break them out), which the margin absorbs. Rank 0 also holds the drafter.

Rules:

1. One node when the whole model and its drafter fit on one: the node with the
   most free memory (ties broken by id).
2. Else the fewest nodes that fit, taking the nodes with the most free memory;
   the node with the most free memory becomes rank 0, since it holds the drafter
   (and the embeddings and head) besides its layers. Layers go to ranks in
   proportion to the memory each has left for layers (free memory less the
   overhead, and less the drafter on rank 0), every rank at least one layer.
3. ``nodes=N`` forces exactly N nodes (N = 1 is rule 1 without the fallback).
   N above the ready nodes is FAILED_PRECONDITION (``check_node_count``, which
   the API and the placements check first too), N above the model's layer count
   INVALID_ARGUMENT.
4. Nothing fits: RESOURCE_EXHAUSTED, saying what was needed and what was free.
   (``plan_evicting`` first tries again as if the least recently used idle
   placements were released, one more at a time.)
   A Gemma 4 assistant reads the target's own K/V and a DFlash drafter several of
   its layers' outputs, so neither spans nodes: FAILED_PRECONDITION when target and
   drafter do not fit on one node. The same
   for a model whose layers cannot be split (``split_refusal``, from the worker).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from grpc import StatusCode

from ..spec_mode import ProposerKind
from ..status import StatusError

# Proposers that read the target's insides on its own node: what they are, and why.
ONE_NODE_PROPOSERS = {
    ProposerKind.ASSISTANT: ("Gemma 4 assistant", "an assistant reads the target's K/V"),
    ProposerKind.DFLASH: ("DFlash drafter",
                          "a DFlash drafter reads the outputs of several target layers"),
}
KV_MARGIN = 0.20
RANK_OVERHEAD = 256 * 2**20


def need(weight_bytes: int) -> int:
    """The memory a rank holding ``weight_bytes`` of weights is planned to use."""
    return math.ceil(weight_bytes * (1 + KV_MARGIN)) + RANK_OVERHEAD


def size(n: float) -> str:
    """Bytes for people: "1.5 GiB", "300.0 MiB", "12.0 KiB"."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


def check_node_count(wanted: int, ready: int) -> None:
    """StatusError unless ``ready`` nodes can serve a request for ``wanted`` of them
    (0: as many as it takes)."""
    if not ready:
        raise StatusError(StatusCode.UNAVAILABLE, "no worker node is ready")
    if wanted > ready:
        raise StatusError(StatusCode.FAILED_PRECONDITION,
                          f"{wanted} nodes were asked for but only {ready} "
                          f"{'is' if ready == 1 else 'are'} ready")


@dataclass(frozen=True)
class ModelFacts:
    num_layers: int
    weight_bytes: int
    draft_bytes: int = 0
    mode: str = ProposerKind.NONE  # a ProposerKind, as the worker names it
    name: str = "the model"  # for messages
    split_refusal: str = ""  # why its layers cannot span nodes ("" when they can)

    def layer_bytes(self, layers: int) -> int:
        """The weights of ``layers`` layers (rounded up)."""
        return -(-layers * self.weight_bytes // self.num_layers)


@dataclass(frozen=True)
class NodeSpace:
    node_id: str
    free_bytes: int


@dataclass(frozen=True)
class RankPlan:
    rank: int
    node_id: str
    layer_start: int
    layer_end: int  # exclusive
    memory_bytes: int  # need() of what this rank holds

    @property
    def layers(self) -> int:
        return self.layer_end - self.layer_start


@dataclass(frozen=True)
class Plan:
    ranks: tuple[RankPlan, ...]

    @property
    def node_ids(self) -> list[str]:
        return [r.node_id for r in self.ranks]

    @property
    def split(self) -> list[int]:
        return [r.layers for r in self.ranks]

    def __str__(self) -> str:
        return ", ".join(f"{r.node_id}[{r.layer_start}-{r.layer_end - 1}]" for r in self.ranks)


def plan(model: ModelFacts, nodes: Sequence[NodeSpace], nodes_wanted: int = 0) -> Plan:
    layers = model.num_layers
    if layers < 1:
        raise StatusError(StatusCode.INVALID_ARGUMENT, f"{model.name} reports no layers")
    check_node_count(nodes_wanted, len(nodes))
    if nodes_wanted > layers:
        raise StatusError(
            StatusCode.INVALID_ARGUMENT,
            f"{model.name} has {layers} layer{'s' * (layers != 1)}: it cannot be split "
            f"over {nodes_wanted} nodes")
    ordered = sorted(nodes, key=lambda n: (-n.free_bytes, n.node_id))
    whole = need(model.weight_bytes + model.draft_bytes)
    if nodes_wanted in (0, 1) and whole <= ordered[0].free_bytes:
        return Plan((RankPlan(0, ordered[0].node_id, 0, layers, whole),))
    if nodes_wanted == 1 or (nodes_wanted == 0 and (len(nodes) == 1 or layers == 1)):
        raise StatusError(
            StatusCode.RESOURCE_EXHAUSTED,
            f"{model.name} needs {size(whole)} on one node ({_parts(model)}) but the most "
            f"free memory on a node is {size(ordered[0].free_bytes)} "
            f"({ordered[0].node_id})")
    if model.mode in ONE_NODE_PROPOSERS:
        what, why = ONE_NODE_PROPOSERS[model.mode]
        raise StatusError(
            StatusCode.FAILED_PRECONDITION,
            f"{model.name} with its {what} needs {size(whole)} on one node "
            f"({_parts(model)}) but the most free memory on a node is "
            f"{size(ordered[0].free_bytes)} ({ordered[0].node_id}); {why}, so it cannot "
            "span nodes")
    if model.split_refusal:
        where = (f"{nodes_wanted} nodes were asked for" if nodes_wanted else
                 f"{model.name} needs {size(whole)} on one node ({_parts(model)}) but the most "
                 f"free memory on a node is {size(ordered[0].free_bytes)} "
                 f"({ordered[0].node_id})")
        raise StatusError(StatusCode.FAILED_PRECONDITION, f"{where}; {model.split_refusal}")
    counts = [nodes_wanted] if nodes_wanted else range(2, min(len(nodes), layers) + 1)
    for n in counts:
        split = _split(model, ordered[:n])
        if split is not None:
            return _ranks(model, ordered[:n], split)
    n = counts[-1]
    chosen = ordered[:n]
    one_layer = need(model.layer_bytes(1))
    small = [node for node in chosen[1:] if node.free_bytes < one_layer]
    if _max_layers(model, chosen[0].free_bytes, 0) < 1:
        why = (f"a single layer needs {size(one_layer)} but the most free memory on a node "
               f"is {size(chosen[0].free_bytes)}")
    elif _max_layers(model, chosen[0].free_bytes, model.draft_bytes) < 1:
        why = (f"rank 0 holds the drafter ({size(model.draft_bytes)}) and at least one layer, "
               f"which needs {size(need(model.draft_bytes + model.layer_bytes(1)))}, but the "
               f"most free memory on a node is {size(chosen[0].free_bytes)}")
    elif nodes_wanted and small:
        why = (f"node {small[0].node_id} has {size(small[0].free_bytes)} free, less than "
               f"one layer needs ({size(one_layer)})")
    else:
        why = (f"the {n} nodes with the most free memory have "
               f"{size(sum(node.free_bytes for node in chosen))} free together")
    total = need(model.weight_bytes + model.draft_bytes) + (n - 1) * RANK_OVERHEAD
    raise StatusError(
        StatusCode.RESOURCE_EXHAUSTED,
        f"{model.name} does not fit on {n} nodes: it needs about {size(total)} "
        f"({_parts(model)}) and {why}")


def plan_evicting(model: ModelFacts, nodes: Sequence[NodeSpace], nodes_wanted: int,
                  idle: Sequence[Mapping[str, int]]) -> tuple[Plan, int]:
    """``plan``, letting go of idle placements when that is what makes it fit:
    ``idle`` holds each idle placement's memory per node, least recently used first;
    returns the plan and how many of them (from the front) must be released.
    Raises what ``plan`` raises on the nodes as they are when nothing helps."""
    try:
        return plan(model, nodes, nodes_wanted), 0
    except StatusError as e:
        if e.code != StatusCode.RESOURCE_EXHAUSTED or not idle:
            raise
        first = e
    freed: Counter[str] = Counter()
    for k, held in enumerate(idle, start=1):
        freed.update(held)
        try:
            return plan(model, [NodeSpace(n.node_id, n.free_bytes + freed[n.node_id])
                                for n in nodes], nodes_wanted), k
        except StatusError:
            continue
    raise first


def _parts(model: ModelFacts) -> str:
    parts = f"weights {size(model.weight_bytes)}"
    if model.draft_bytes:
        parts += f", drafter {size(model.draft_bytes)}"
    return parts + f", {KV_MARGIN:.0%} for KV caches and {size(RANK_OVERHEAD)} per rank"


def _max_layers(model: ModelFacts, free: int, extra: int) -> int:
    """How many layers fit in ``free`` bytes beside ``extra`` bytes of other weights."""
    best = 0
    for k in range(1, model.num_layers + 1):
        if need(model.layer_bytes(k) + extra) > free:
            break
        best = k
    return best


def _split(model: ModelFacts, chosen: Sequence[NodeSpace]) -> list[int] | None:
    """Layers per rank (chosen[0] is rank 0), or None when they do not fit."""
    layers = model.num_layers
    extra = [model.draft_bytes] + [0] * (len(chosen) - 1)
    most = [_max_layers(model, n.free_bytes, e) for n, e in zip(chosen, extra, strict=True)]
    if min(most) < 1 or sum(most) < layers:
        return None
    room = [max((n.free_bytes - RANK_OVERHEAD) / (1 + KV_MARGIN) - e, 0.0)
            for n, e in zip(chosen, extra, strict=True)]
    ideal = [layers * r / sum(room) for r in room]
    counts = [min(max(math.floor(i), 1), m) for i, m in zip(ideal, most, strict=True)]
    while sum(counts) < layers:  # the rank furthest below its share takes one more
        r = max((r for r in range(len(counts)) if counts[r] < most[r]),
                key=lambda r: (ideal[r] - counts[r], -r))
        counts[r] += 1
    while sum(counts) > layers:  # the rank furthest above its share gives one back
        r = min((r for r in range(len(counts)) if counts[r] > 1),
                key=lambda r: (ideal[r] - counts[r], -r))
        counts[r] -= 1
    return counts


def _ranks(model: ModelFacts, chosen: Sequence[NodeSpace], split: list[int]) -> Plan:
    ranks, start = [], 0
    for r, (node, n) in enumerate(zip(chosen, split, strict=True)):
        held = model.layer_bytes(n) + (model.draft_bytes if r == 0 else 0)
        ranks.append(RankPlan(r, node.node_id, start, start + n, need(held)))
        start += n
    return Plan(tuple(ranks))
