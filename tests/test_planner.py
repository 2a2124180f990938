"""The coordinator's planner: model facts and free memory in, ranks out (pure)."""

from __future__ import annotations

import pytest
from grpc import StatusCode

from exo_spec.coordinator.placement_plan import (
    RANK_OVERHEAD,
    ModelFacts,
    NodeSpace,
    need,
    plan,
    plan_evicting,
)
from exo_spec.status import StatusError

GiB = 2**30


def nodes(**free_gib: float) -> list[NodeSpace]:
    return [NodeSpace(node_id, int(gib * GiB)) for node_id, gib in free_gib.items()]


def refused(model, spaces, wanted=0) -> StatusError:
    with pytest.raises(StatusError) as info:
        plan(model, spaces, wanted)
    return info.value


def test_need_adds_the_kv_margin_and_the_runner():
    assert need(0) == RANK_OVERHEAD
    assert need(10 * GiB) == 12 * GiB + RANK_OVERHEAD


def test_fits_on_one_node_the_one_with_most_free_memory():
    model = ModelFacts(num_layers=32, weight_bytes=4 * GiB, draft_bytes=GiB // 2, mode="draft")
    p = plan(model, nodes(a=8, b=16, c=12))
    assert [(r.rank, r.node_id, r.layer_start, r.layer_end) for r in p.ranks] == \
        [(0, "b", 0, 32)]
    assert p.ranks[0].memory_bytes == need(4 * GiB + GiB // 2)
    assert plan(model, nodes(b=16, a=16)).node_ids == ["a"]  # ties: by id


def test_too_big_for_one_node_takes_the_fewest_nodes_split_by_memory():
    model = ModelFacts(num_layers=40, weight_bytes=40 * GiB)
    p = plan(model, nodes(a=30, b=30, c=30, d=5))
    assert p.node_ids == ["a", "b"]  # two are enough; d is never needed
    assert p.split == [20, 20]
    assert [(r.layer_start, r.layer_end) for r in p.ranks] == [(0, 20), (20, 40)]
    three = plan(model, nodes(a=20, b=20, c=20, d=20))
    assert len(three.ranks) == 3 and sum(three.split) == 40
    for r in three.ranks:  # every rank fits where it was put
        assert r.memory_bytes == need(model.layer_bytes(r.layers)) <= 20 * GiB


def test_uneven_memory_gets_layers_in_proportion():
    model = ModelFacts(num_layers=48, weight_bytes=60 * GiB)
    p = plan(model, nodes(small=24, big=64))
    assert p.node_ids == ["big", "small"]  # the biggest node is rank 0
    big, small = p.split
    assert big + small == 48 and big > 2 * small
    space = {"small": 24 * GiB, "big": 64 * GiB}
    assert all(r.memory_bytes <= space[r.node_id] for r in p.ranks)


def test_rank_0_holds_the_drafter_and_is_the_node_that_can():
    model = ModelFacts(num_layers=10, weight_bytes=20 * GiB, draft_bytes=6 * GiB, mode="draft")
    p = plan(model, nodes(a=15, b=20))
    assert p.node_ids == ["b", "a"]
    r0, r1 = p.ranks
    assert r0.memory_bytes == need(model.layer_bytes(r0.layers) + 6 * GiB) <= 20 * GiB
    assert r1.memory_bytes == need(model.layer_bytes(r1.layers)) <= 15 * GiB
    # without the drafter the same nodes split the layers closer to evenly
    plain = plan(ModelFacts(num_layers=10, weight_bytes=20 * GiB), nodes(a=15, b=20))
    assert plain.split[0] > r0.layers


def test_a_drafter_no_node_can_hold_beside_a_layer():
    model = ModelFacts(num_layers=4, weight_bytes=8 * GiB, draft_bytes=9 * GiB, mode="draft")
    e = refused(model, nodes(a=10, b=10, c=10))
    assert e.code == StatusCode.RESOURCE_EXHAUSTED
    assert "rank 0 holds the drafter (9.0 GiB)" in e.message


def test_forced_node_count():
    model = ModelFacts(num_layers=4, weight_bytes=GiB // 10)
    assert len(plan(model, nodes(a=8, b=8, c=8)).ranks) == 1  # fits on one
    p = plan(model, nodes(a=8, b=8, c=8), 2)
    assert p.node_ids == ["a", "b"] and p.split == [2, 2]
    p = plan(model, nodes(a=8, b=8, c=8), 3)
    assert p.split == [2, 1, 1] and [r.layer_end for r in p.ranks] == [2, 3, 4]
    assert plan(model, nodes(a=8, b=9), 1).node_ids == ["b"]


def test_forced_one_node_that_does_not_fit():
    model = ModelFacts(num_layers=8, weight_bytes=10 * GiB, name="big-model")
    e = refused(model, nodes(a=8, b=8), 1)
    assert e.code == StatusCode.RESOURCE_EXHAUSTED
    assert e.message.startswith("big-model needs 12.2 GiB on one node")
    assert "most free memory on a node is 8.0 GiB" in e.message
    assert len(plan(model, nodes(a=8, b=8)).ranks) == 2  # auto spreads it instead


def test_more_nodes_asked_than_ready():
    e = refused(ModelFacts(num_layers=8, weight_bytes=GiB), nodes(a=8, b=8), 3)
    assert (e.code, e.message) == (StatusCode.FAILED_PRECONDITION,
                                   "3 nodes were asked for but only 2 are ready")


def test_more_nodes_than_layers():
    model = ModelFacts(num_layers=2, weight_bytes=GiB, name="tiny")
    e = refused(model, nodes(a=8, b=8, c=8), 3)
    assert (e.code, e.message) == (StatusCode.INVALID_ARGUMENT,
                                   "tiny has 2 layers: it cannot be split over 3 nodes")
    # auto never tries more nodes than layers
    e = refused(ModelFacts(num_layers=2, weight_bytes=30 * GiB), nodes(a=9, b=9, c=9, d=9))
    assert e.code == StatusCode.RESOURCE_EXHAUSTED and "on 2 nodes" in e.message


def test_nothing_fits():
    model = ModelFacts(num_layers=80, weight_bytes=140 * GiB, draft_bytes=GiB, mode="draft",
                       name="llama-70b")
    e = refused(model, nodes(a=32, b=32, c=24))
    assert e.code == StatusCode.RESOURCE_EXHAUSTED
    assert e.message.startswith("llama-70b does not fit on 3 nodes: it needs about")
    assert "weights 140.0 GiB, drafter 1.0 GiB" in e.message
    assert "the 3 nodes with the most free memory have 88.0 GiB free together" in e.message
    e = refused(model, nodes(a=60, b=60, c=60, d=60), 2)
    assert "does not fit on 2 nodes" in e.message
    e = refused(ModelFacts(num_layers=4, weight_bytes=8 * GiB), nodes(a=30, b=0.1), 2)
    assert "node b has 102.4 MiB free, less than one layer needs" in e.message


def test_no_nodes_at_all():
    e = refused(ModelFacts(num_layers=2, weight_bytes=1), [])
    assert (e.code, e.message) == (StatusCode.UNAVAILABLE, "no worker node is ready")


def test_single_layer_and_single_node_clusters_do_not_split():
    e = refused(ModelFacts(num_layers=1, weight_bytes=20 * GiB), nodes(a=9, b=9))
    assert e.code == StatusCode.RESOURCE_EXHAUSTED and "on one node" in e.message
    e = refused(ModelFacts(num_layers=8, weight_bytes=20 * GiB), nodes(a=9))
    assert e.code == StatusCode.RESOURCE_EXHAUSTED and "on one node" in e.message


@pytest.mark.parametrize("mode, what", [("assistant", "Gemma 4 assistant"),
                                        ("dflash", "DFlash drafter")])
def test_drafters_reading_the_target_never_span_nodes(mode, what):
    model = ModelFacts(num_layers=8, weight_bytes=20 * GiB, draft_bytes=GiB, mode=mode)
    e = refused(model, nodes(a=16, b=16))
    assert e.code == StatusCode.FAILED_PRECONDITION and "cannot span nodes" in e.message
    assert what in e.message
    assert plan(model, nodes(a=16, b=32)).node_ids == ["b"]


def test_models_whose_layers_cannot_be_split_stay_on_one_node():
    model = ModelFacts(num_layers=8, weight_bytes=20 * GiB,
                       split_refusal="model_type gemma4_text cannot be split across ranks")
    e = refused(model, nodes(a=16, b=16))
    assert e.code == StatusCode.FAILED_PRECONDITION
    assert "on one node" in e.message and "gemma4_text cannot be split" in e.message
    e = refused(model, nodes(a=32, b=32), wanted=2)
    assert e.code == StatusCode.FAILED_PRECONDITION
    assert e.message.startswith("2 nodes were asked for")
    assert plan(model, nodes(a=16, b=32)).node_ids == ["b"]


@pytest.mark.parametrize("free", [[10, 10, 10], [30, 3, 3, 3], [5, 6, 7, 8, 9], [14, 14]])
def test_every_plan_covers_the_layers_once_and_fits(free):
    model = ModelFacts(num_layers=24, weight_bytes=20 * GiB, draft_bytes=GiB, mode="draft")
    spaces = [NodeSpace(f"n{i}", int(f * GiB)) for i, f in enumerate(free)]
    p = plan(model, spaces)
    assert [r.rank for r in p.ranks] == list(range(len(p.ranks)))
    assert p.ranks[0].layer_start == 0 and p.ranks[-1].layer_end == 24
    assert all(a.layer_end == b.layer_start for a, b in zip(p.ranks, p.ranks[1:], strict=False))
    assert all(r.layers >= 1 for r in p.ranks)
    space = {s.node_id: s.free_bytes for s in spaces}
    assert all(r.memory_bytes <= space[r.node_id] for r in p.ranks)
    assert len(set(p.node_ids)) == len(p.node_ids)


def test_idle_placements_make_room_least_recently_used_first():
    model = ModelFacts(num_layers=8, weight_bytes=6 * GiB)
    free = nodes(a=4, b=4)  # 8 GiB free but the model needs ~7.5 GiB on one or two nodes
    e = refused(model, free, 1)
    assert e.code == StatusCode.RESOURCE_EXHAUSTED
    idle = [{"a": 2 * GiB}, {"b": 6 * GiB}, {"a": 8 * GiB}]  # least recently used first
    p, k = plan_evicting(model, free, 1, idle)
    assert (p.node_ids, k) == (["b"], 2)  # the oldest alone is not enough
    p, k = plan_evicting(model, free, 0, idle)
    assert (len(p.ranks), k) == (2, 0)  # two nodes fit without evicting anything
    assert plan_evicting(model, nodes(a=9), 0, idle)[1] == 0
    e = refused_evicting(ModelFacts(num_layers=40, weight_bytes=40 * GiB), free, 0, idle)
    assert e.code == StatusCode.RESOURCE_EXHAUSTED and "8.0 GiB free together" in e.message  # as is
    e = refused(ModelFacts(num_layers=2, weight_bytes=20 * GiB), free)
    assert "a single layer needs 12.2 GiB but the most free memory on a node is 4.0 GiB" \
        in e.message
    e = refused_evicting(model, free, 3, idle)  # not a memory problem: nothing is evicted
    assert e.code == StatusCode.FAILED_PRECONDITION


def refused_evicting(model, spaces, wanted, idle) -> StatusError:
    with pytest.raises(StatusError) as info:
        plan_evicting(model, spaces, wanted, idle)
    return info.value
