"""Placements for jobs: reuse, inspection, planning, loading, and release.

A job gets a warm placement serving the same model, drafter, spec (and node count,
when the job names one) when there is one. Otherwise ``InspectModel`` runs on
every ready node (nodes that cannot find the model drop out; when none can, the
job fails NOT_FOUND naming each node's error), ``placement_plan.plan`` on the nodes
that can (idle placements are evicted, least recently used first, when that is
what makes the model fit), ``ReservePort`` on every rank's worker, and
``LoadPlacement`` on all ranks at once (the ring only forms with all of them).

A placement that fails is dropped: the jobs waiting for it are told, its running
job is interrupted (the scheduler resumes it elsewhere), and its ranks are released
on the nodes that are still there. A node that becomes LOST drops its placements
(their jobs are placed again); a worker that (re)joins holding placements the
coordinator does not know releases them; a ready placement its node no longer lists
is dropped. The registry reports those node events to ``node_lost``, ``node_ready``
and ``node_info``.

A worker serves one coordinator at a time (``worker.lease``): nodes whose lease
another coordinator holds are left out of plans, and their placements are never
released from here. Ready placements are recorded in the state store; a
coordinator that restarts ``adopt``s those its workers still hold (each rank's
worker lists it once it answers) instead of loading them again.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections.abc import Sequence

import grpc
from grpc import StatusCode

from ..serving import address
from ..status import StatusError
from ..v1 import worker_pb2
from ..worker.lease import holder_name
from .job import Job, JobRequest
from .placement_plan import ModelFacts, NodeSpace, Plan, check_node_count, plan_evicting
from .placement_record import Placement
from .registry import NodeRecord, Registry
from .state_store import StateStore
from .states import NodeState, PlacementState

log = logging.getLogger(__name__)

INSPECT_TIMEOUT_S = 300.0  # a Hugging Face id may be fetched first
# After a restart: how long the workers of a placement recorded as ready have to say
# they still hold it (their first heartbeats) before it is dropped.
ADOPT_WAIT_S = 30.0
CONTROL_TIMEOUT_S = 10.0  # ReservePort, ReleasePlacement
# What an InspectModel refusal blames on the request: every node would say the same.
REQUEST_FAULTS = (StatusCode.INVALID_ARGUMENT, StatusCode.FAILED_PRECONDITION)
# A LoadPlacement call that ends with these was cut off, not refused.
CUT_OFF = (StatusCode.CANCELLED, StatusCode.DEADLINE_EXCEEDED)


def _lease_line(node: NodeRecord) -> str:
    until = node.info.lease.until.ToDatetime(datetime.UTC)
    return f"node {node.node_id} is held by {holder_name(lease_holder(node))} until " \
           f"{until:%Y-%m-%d %H:%M:%S} UTC"


def lease_holder(node: NodeRecord) -> str:
    """The coordinator whose lease the node is under, as it last said ("" if free)."""
    return node.info.lease.holder if node.info and node.info.HasField("lease") else ""


class PlacementLifecycle:
    def __init__(self, registry: Registry, store: StateStore):
        self.registry = registry
        self.store = store
        self.by_id: dict[str, Placement] = {}
        self._placing = asyncio.Lock()
        self._background: set[asyncio.Task] = set()

    # -- what the API reads ----------------------------------------------------------

    def used_bytes(self, node_id: str) -> int:
        return sum(p.memory_on(node_id) for p in self.by_id.values())

    def placement_ids(self, node_id: str) -> list[str]:
        return [p.id for p in self.by_id.values() if node_id in p.node_ids]

    def held_elsewhere(self, node: NodeRecord) -> bool:
        """Whether another coordinator holds the node's lease."""
        return bool(node.info and node.info.HasField("lease")
                    and node.info.lease.holder != self.registry.coordinator_id)

    # -- finding a placement --------------------------------------------------------

    def _reusable(self, request: JobRequest) -> Placement | None:
        found = [p for p in self.by_id.values() if p.matches(request)
                 and all(self.registry.is_ready(n) for n in p.node_ids)]
        if not found:
            return None
        return min(found, key=lambda p: (not p.idle, len(p.plan.ranks), p.last_used))

    async def placement_for(self, job: Job) -> Placement:
        request = job.request
        if (p := self._reusable(request)) is not None:
            return p
        ready = [n for n in self.registry.ready() if not self.held_elsewhere(n)]
        if not ready and (held := self.registry.ready()):
            raise StatusError(StatusCode.FAILED_PRECONDITION, "every ready node serves "
                              "another coordinator: " + "; ".join(map(_lease_line, held)))
        check_node_count(request.nodes, len(ready))
        job.progress("placing", f"looking for {request.model} on {len(ready)} "
                                f"node{'s' * (len(ready) != 1)}")
        found, errors = await self._inspect(ready, request)
        async with self._placing:
            if (p := self._reusable(request)) is not None:
                return p
            found = [(n, info) for n, info in found if n.state == NodeState.READY]
            if not found:
                raise StatusError(StatusCode.UNAVAILABLE,
                                  "every node that has the model was lost")
            info = found[0][1]
            facts = ModelFacts(num_layers=info.num_layers, weight_bytes=info.weight_bytes,
                               draft_bytes=info.draft_bytes, mode=info.mode,
                               name=request.model, split_refusal=info.split_refusal)
            spaces = [NodeSpace(n.node_id, n.info.memory_bytes - self.used_bytes(n.node_id))
                      for n, _ in found]
            try:
                chosen, evicted = self._plan(facts, spaces, request.nodes)
            except StatusError as e:
                excluded = "; ".join(f"{n}: {errors[n].message}" for n in sorted(errors))
                raise StatusError(e.code, e.message + (f" (not usable: {excluded})"
                                                       if excluded else "")) from None
            releases = [self.drop(old, StatusError(
                StatusCode.UNAVAILABLE, f"evicted to make room for {request.model}"))
                for old in evicted]
            p = Placement(model=request.model, draft_model=request.draft_model,
                          spec=request.spec, plan=chosen, mode=info.mode,
                          drafter=info.draft_model)
            self.by_id[p.id] = p
            log.info("%s: %s (%s) on %s", p, request.model, p.mode, chosen)
            p.load_task = asyncio.create_task(self._load(p, [t for t in releases if t]),
                                              name=f"load {p.id}")
            return p

    def _plan(self, facts: ModelFacts, spaces: list[NodeSpace],
              wanted: int) -> tuple[Plan, list[Placement]]:
        """A plan, and the idle placements (least recently used first) that must go
        to make room for it."""
        idle = sorted((p for p in self.by_id.values() if p.idle), key=lambda p: p.last_used)
        chosen, k = plan_evicting(facts, spaces, wanted,
                                  [{n: p.memory_on(n) for n in p.node_ids} for p in idle])
        return chosen, idle[:k]

    async def _inspect(self, nodes: Sequence[NodeRecord], request: JobRequest
                       ) -> tuple[list[tuple[NodeRecord, worker_pb2.ModelInfo]],
                                  dict[str, StatusError]]:
        """The nodes that can place the model, with what they report, and why each
        other node cannot; StatusError when no node can."""
        ask = worker_pb2.InspectModelRequest(model=request.model,
                                             draft_model=request.draft_model,
                                             spec=request.spec.to_proto())

        async def one(node: NodeRecord) -> worker_pb2.ModelInfo | StatusError:
            try:
                return await node.stub.InspectModel(ask, timeout=INSPECT_TIMEOUT_S)
            except grpc.aio.AioRpcError as e:
                return StatusError.from_rpc(e)

        answers = await asyncio.gather(*(one(n) for n in nodes))
        found = [(n, a) for n, a in zip(nodes, answers, strict=True)
                 if not isinstance(a, StatusError)]
        errors = {n.node_id: a for n, a in zip(nodes, answers, strict=True)
                  if isinstance(a, StatusError)}
        if found:
            return found, errors
        for code in REQUEST_FAULTS:
            if blamed := [e for e in errors.values() if e.code == code]:
                raise blamed[0]
        detail = "; ".join(f"{n}: {errors[n].message}" for n in sorted(errors))
        if missing := [e for e in errors.values() if e.code == StatusCode.NOT_FOUND]:
            # what the nodes miss: the model, or (when each says "drafter D not found",
            # as ``worker.model_info.local_dir`` words it) its drafter
            drafter = [e.message.split(" not found", 1)[0].removeprefix("drafter ")
                       for e in missing if e.message.startswith("drafter ")]
            what = f"drafter {drafter[0]}" if len(drafter) == len(missing) else request.model
            raise StatusError(StatusCode.NOT_FOUND, f"no node can find {what}: {detail}")
        raise StatusError(StatusCode.UNAVAILABLE,
                          f"no node could inspect {request.model}: {detail}")

    # -- loading and dropping -------------------------------------------------------

    async def _load(self, p: Placement, releases: list[asyncio.Task]) -> None:
        """Load ``p`` on its ranks once ``releases`` (of evicted placements) are done."""
        try:
            if releases:
                await asyncio.wait(releases)
            nodes = [self.registry.get(n) for n in p.node_ids]
            gone = [n for n, r in zip(p.node_ids, nodes, strict=True)
                    if r is None or r.state != NodeState.READY]
            if gone:
                raise StatusError(StatusCode.UNAVAILABLE, f"node {gone[0]} is not ready")
            if len(nodes) == 1:
                hosts = [address(nodes[0].host, 0)]
            else:
                ports = await asyncio.gather(*(
                    n.stub.ReservePort(worker_pb2.ReservePortRequest(),
                                       timeout=CONTROL_TIMEOUT_S) for n in nodes))
                hosts = [address(n.host, r.port) for n, r in zip(nodes, ports, strict=True)]
            readies = await self._load_ranks(p, nodes, hosts)
        except asyncio.CancelledError:
            self._fail_load(p, StatusError(StatusCode.UNAVAILABLE,
                                           p.error or f"{p} was dropped"))
            raise
        except grpc.aio.AioRpcError as e:
            self._fail_load(p, StatusError(StatusCode.UNAVAILABLE,
                                           f"{p} could not reserve a ring port: "
                                           f"{StatusError.from_rpc(e).message}"))
            return
        except StatusError as e:
            self._fail_load(p, e)
            return
        if p.state != PlacementState.LOADING:
            return
        p.state, p.ready_at = PlacementState.READY, time.monotonic()
        p.mode = readies[0].ready_mode or p.mode
        p.serve_up_to(readies[0].batch_capacity)  # rank 0's runner batches, or not
        log.info("%s ready: %s (%s, %d job%s at a time) on %s", p, p.model, p.mode,
                 p.batch_capacity, "s" * (p.batch_capacity > 1), p.plan)
        self.store.save_placement(p.record())
        p.loaded.set_result(None)

    async def _load_ranks(self, p: Placement, nodes: list[NodeRecord],
                          hosts: list[str]) -> list[worker_pb2.LoadEvent]:
        """Each rank's ready event, as its worker reports it once loaded (its proposer
        mode and batch capacity)."""
        split = p.plan.split if len(nodes) > 1 else []

        async def rank(r: int, node: NodeRecord) -> worker_pb2.LoadEvent:
            call = node.stub.LoadPlacement(worker_pb2.LoadPlacementRequest(
                placement_id=p.id, model=p.model, draft_model=p.draft_model,
                spec=p.spec.to_proto(), rank=r, hosts=hosts, split=split,
                coordinator_id=self.registry.coordinator_id))
            try:
                async for event in call:
                    if event.HasField("ready_mode"):
                        return event
                    for job in list(p.waiting):
                        job.progress("loading", f"{node.node_id} rank {r}: {event.progress}")
            except grpc.aio.AioRpcError as e:
                error = StatusError.from_rpc(e)
                raise StatusError(StatusCode.UNAVAILABLE if error.code in CUT_OFF else error.code,
                                  f"loading {p.model} on node {node.node_id} (rank {r}) failed: "
                                  f"{error.message}") from None
            finally:
                call.cancel()
            raise StatusError(StatusCode.UNAVAILABLE,
                              f"node {node.node_id} (rank {r}) stopped loading {p.model} "
                              "without saying it was ready")

        tasks = [asyncio.create_task(rank(r, n)) for r, n in enumerate(nodes)]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for t in done:
                if t.exception() is not None:
                    raise t.exception()
            return [t.result() for t in tasks]
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _fail_load(self, p: Placement, error: StatusError) -> None:
        if p.state == PlacementState.LOADING:
            log.info("%s failed to load: %s", p, error.line())
        self.drop(p, error)

    def drop(self, p: Placement, why: StatusError) -> asyncio.Task | None:
        """Forget ``p``: its waiting jobs get ``why``, its running job is interrupted
        (to resume elsewhere), and its ranks are released on the nodes that are still
        there (the task returned)."""
        if p.state == PlacementState.FAILED:
            return None
        if p.state == PlacementState.READY:
            log.info("%s dropped: %s", p, why.message)
        p.state, p.error = PlacementState.FAILED, why.message
        self.by_id.pop(p.id, None)
        self.store.forget_placement(p.id)
        if not p.loaded.done():
            p.loaded.set_exception(why)
        if p.load_task is not None and p.load_task is not asyncio.current_task():
            p.load_task.cancel()
        for job in p.active:
            if job.task is not asyncio.current_task():
                job.interrupt(StatusError(StatusCode.UNAVAILABLE, why.message))
        there = [n for n in map(self.registry.get, p.node_ids)
                 if n and n.state == NodeState.READY]
        return self._spawn(self._release(p.id, there))

    async def _release(self, placement_id: str, nodes: Sequence[NodeRecord]) -> None:
        async def one(node: NodeRecord) -> None:
            try:
                await node.stub.ReleasePlacement(
                    worker_pb2.ReleasePlacementRequest(
                        placement_id=placement_id, coordinator_id=self.registry.coordinator_id),
                    timeout=CONTROL_TIMEOUT_S)
            except grpc.aio.AioRpcError as e:
                log.info("releasing %s on node %s: %s", placement_id, node.node_id,
                         StatusError.from_rpc(e).message)

        await asyncio.gather(*(one(n) for n in nodes))

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    # -- what the registry reports ---------------------------------------------------------

    def node_lost(self, node: NodeRecord, reason: str) -> None:
        for p in list(self.by_id.values()):
            if node.node_id in p.node_ids:
                self.drop(p, StatusError(StatusCode.UNAVAILABLE,
                                         f"node {node.node_id} was lost: {reason}"))

    def node_ready(self, node: NodeRecord) -> None:
        """A (re)joining worker confirms the adopted placements it still holds and
        fails those it does not. Placements it holds that no job can reach any more
        (the coordinator dropped them) are released there, unless another
        coordinator holds the worker: they are that one's."""
        held = set(node.info.placement_ids)
        for p in list(self.by_id.values()):
            if node.node_id not in p.unconfirmed:
                continue
            if p.id in held:
                self._confirm(p, node.node_id)
            else:
                self.drop(p, StatusError(StatusCode.UNAVAILABLE, f"{p} was not adopted: node "
                                         f"{node.node_id} no longer holds it"))
        if self.held_elsewhere(node):
            return
        for pid in held - self.by_id.keys():
            log.info("releasing stale placement %s on node %s", pid, node.node_id)
            self._spawn(self._release(pid, [node]))

    def node_info(self, node: NodeRecord) -> None:
        """A ready placement its node no longer lists (the worker restarted between
        two heartbeats) is dropped."""
        held = set(node.info.placement_ids)
        for p in list(self.by_id.values()):
            if (p.state == PlacementState.READY and node.node_id in p.node_ids
                    and p.id not in held and p.ready_at < node.asked_at):
                self.drop(p, StatusError(StatusCode.UNAVAILABLE, f"node {node.node_id} no "
                                         f"longer holds {p.id} (did it restart?)"))

    # -- after a restart ---------------------------------------------------------------

    def adopt(self, records: list[dict]) -> None:
        """The placements recorded as ready before this coordinator restarted: LOADING
        (a job may wait on one) until every rank's worker lists it (``node_ready``),
        then READY without loading anything; dropped when a worker does not list it,
        or when ``ADOPT_WAIT_S`` pass first."""
        for record in records:
            p = Placement.from_record(record)
            p.unconfirmed = set(p.node_ids)
            self.by_id[p.id] = p
            p.load_task = asyncio.create_task(self._unless_adopted(p), name=f"adopt {p.id}")
            log.info("%s: %s on %s, to adopt", p, p.model, p.plan)

    async def _unless_adopted(self, p: Placement) -> None:
        await asyncio.sleep(ADOPT_WAIT_S)
        self.drop(p, StatusError(StatusCode.UNAVAILABLE, f"{p} was not adopted: "
                                 f"{', '.join(sorted(p.unconfirmed))} did not answer within "
                                 f"{ADOPT_WAIT_S:g}s of the restart"))

    def _confirm(self, p: Placement, node_id: str) -> None:
        p.unconfirmed.discard(node_id)
        if p.unconfirmed or p.state != PlacementState.LOADING:
            return
        p.load_task.cancel()
        p.load_task = None
        p.state, p.ready_at = PlacementState.READY, time.monotonic()
        log.info("%s adopted: %s (%s) on %s", p, p.model, p.mode, p.plan)
        p.loaded.set_result(None)

    # -- shutdown --------------------------------------------------------------------

    async def close(self) -> None:
        """Drop every placement, then end the leases: the workers are free for another
        coordinator at once."""
        for p in list(self.by_id.values()):
            self.drop(p, StatusError(StatusCode.UNAVAILABLE, "the coordinator is shutting down"))
        if self._background:
            await asyncio.wait(list(self._background), timeout=CONTROL_TIMEOUT_S)

        async def end_lease(node: NodeRecord) -> None:
            try:
                await node.stub.EndLease(worker_pb2.EndLeaseRequest(
                    coordinator_id=self.registry.coordinator_id), timeout=CONTROL_TIMEOUT_S)
            except grpc.aio.AioRpcError as e:
                log.info("ending the lease on node %s: %s", node.node_id,
                         StatusError.from_rpc(e).message)

        await asyncio.gather(*(end_lease(n) for n in self.registry.ready()
                               if not self.held_elsewhere(n)))
