"""The WorkerControl service: how a coordinator drives this worker.

Loading, running and releasing are for the coordinator holding the worker's lease
(``lease``); reading what the worker is and holds is for anyone. Every refusal is a
``StatusError``; ``_refusals`` ends the call with its status, unary or streaming.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
import uuid
from contextlib import aclosing
from inspect import isasyncgenfunction

from grpc import StatusCode

from .. import __version__
from ..group.pipeline import layer_ranges
from ..spec_mode import SpecMode
from ..status import StatusError
from ..v1 import worker_pb2, worker_pb2_grpc
from .batching import DEFAULT_BATCHING, Batching
from .lease import DEFAULT_TIMEOUT_S, Lease
from .messages import Finished, Job, LoadConfig, Ready
from .model_info import check_fits, inspect_model
from .model_list import list_models
from .model_sources import ModelSources
from .node import Node
from .placements import Placements

log = logging.getLogger(__name__)

# Each placement keeps the caches of its recent prompts (``engine.prefix_cache``; a group:
# every rank its own share, bounded by rank 0's)
# in up to this many MiB by default, and at most this share of the node's memory budget,
# so a small machine gives it less. Bounded by its own bytes, it is memory beyond what
# the coordinator plans for a placement (``placement_plan.need``: the weights, 20% for
# the live caches and activations, the runner): the share keeps that small next to the
# quarter of physical memory a worker leaves out of its budget by default.
PREFIX_CACHE_MB = 1024
PREFIX_CACHE_SHARE = 0.05


def default_prefix_cache_bytes(memory_bytes: int) -> int:
    return min(PREFIX_CACHE_MB * 2**20, int(memory_bytes * PREFIX_CACHE_SHARE))


def _refusals(method):
    """Abort the call with a refusal's status and message."""
    if isasyncgenfunction(method):
        @functools.wraps(method)
        async def stream(self, request, context):
            try:
                async for event in method(self, request, context):
                    yield event
            except StatusError as e:
                log.info("%s refused: %s", method.__name__, e.message)
                await context.abort(e.code, e.message)
        return stream

    @functools.wraps(method)
    async def unary(self, request, context):
        try:
            return await method(self, request, context)
        except StatusError as e:
            log.info("%s refused: %s", method.__name__, e.message)
            await context.abort(e.code, e.message)
    return unary


def _spec_mode(value: int) -> SpecMode:
    """The request's ``SpecMode``; INVALID_ARGUMENT for a value the proto lacks."""
    try:
        return SpecMode.from_proto(value)
    except ValueError as e:
        raise StatusError(StatusCode.INVALID_ARGUMENT, str(e)) from None


class WorkerControl(worker_pb2_grpc.WorkerControlServicer):
    def __init__(self, node: Node, placements: Placements, group_timeout_s: float,
                 models: ModelSources, prefix_cache_bytes: int | None = None,
                 lease_timeout_s: float = DEFAULT_TIMEOUT_S, batching: Batching = DEFAULT_BATCHING):
        """``prefix_cache_bytes``: each placement's prefix cache (0: none; None:
        ``default_prefix_cache_bytes`` of the node's budget); ``lease_timeout_s``: how
        long the coordinator holding this worker may stay silent before its lease
        lapses and its placements are released; ``batching``: how a one-node
        placement batches its jobs."""
        self.node = node
        self.placements = placements
        self.lease = Lease(node.node_id, placements, lease_timeout_s)
        self.group_timeout_s = group_timeout_s
        self.prefix_cache_bytes = default_prefix_cache_bytes(node.memory_bytes) \
            if prefix_cache_bytes is None else prefix_cache_bytes
        self.models = models  # where models load from (--model-dir, --allow-downloads)
        self.batching = batching
        self.port = 0  # set once the server is bound
        self.instance_id = uuid.uuid4().hex  # tells this process from another with its node id

    @_refusals
    async def GetInfo(self, request, context):
        self.lease.renew(request.coordinator_id)
        n = self.node
        return worker_pb2.WorkerInfo(
            node_id=n.node_id, version=__version__, host=n.host, port=self.port,
            memory_bytes=n.memory_bytes, chip=n.chip, backend=n.backend,
            placement_ids=self.placements.ids(), lease=self.lease.to_proto(),
            instance_id=self.instance_id)

    @_refusals
    async def InspectModel(self, request, context):
        facts = await asyncio.to_thread(
            inspect_model, request.model, request.draft_model or None, _spec_mode(request.spec),
            self.node.node_id, sources=self.models)
        return facts.to_proto()

    @_refusals
    async def ReservePort(self, request, context):
        with socket.socket(socket.AF_INET6 if ":" in self.node.host else socket.AF_INET) as s:
            s.bind((self.node.host, 0))
            return worker_pb2.ReservePortResponse(port=s.getsockname()[1])

    @_refusals
    async def LoadPlacement(self, request, context):
        await self.lease.admit(request.coordinator_id)
        hosts, rank = list(request.hosts), request.rank
        if not request.placement_id:
            raise StatusError(StatusCode.INVALID_ARGUMENT, "no placement_id")
        if not hosts or rank >= len(hosts):
            raise StatusError(StatusCode.INVALID_ARGUMENT,
                              f"rank {rank} of a placement with {len(hosts)} hosts")
        spec = _spec_mode(request.spec)
        draft_model = request.draft_model or None
        # Only rank 0 holds the proposer: other ranks check the target alone (and
        # answer ready_mode "none"); the placement's mode is rank 0's.
        facts = await asyncio.to_thread(
            inspect_model, request.model, draft_model if rank == 0 else None,
            spec if rank == 0 else SpecMode.NONE, self.node.node_id, sources=self.models,
            ranks=len(hosts))
        split = list(request.split) or None
        try:
            layers = layer_ranges(facts.num_layers, len(hosts), split)[rank]
        except ValueError as e:
            raise StatusError(StatusCode.INVALID_ARGUMENT, str(e)) from None
        check_fits(facts, layers, rank, self.node.memory_bytes)
        # The runner loads the checkpoints found here, by path: it fetches nothing.
        draft_path = str(facts.draft_path) if facts.draft_path else None
        config = LoadConfig(model=str(facts.path), draft_model=draft_path, spec=spec, split=split,
                            ranks=len(hosts), group_timeout_s=self.group_timeout_s,
                            # a group's is bounded by rank 0's share (``GroupLeader``)
                            prefix_cache_bytes=self.prefix_cache_bytes,
                            max_batch=self.batching.max_batch,
                            kv_budget_bytes=self.batching.kv_budget(self.node.memory_bytes))
        placement = await self.placements.start(request.placement_id, rank, hosts, config)
        log.info("%s: starting (%s)", placement, request.model)
        ready = False
        try:
            async for event in placement.load_events():
                if isinstance(event, Ready):
                    ready = True
                    log.info("%s: ready (%s, batches of up to %d)", placement, event.mode,
                             event.batch_capacity)
                yield event.to_proto()
        finally:
            if not ready:  # it failed, or the coordinator gave up on it
                await self.placements.release(request.placement_id)

    @_refusals
    async def RunJob(self, request, context):
        await self.lease.admit(request.coordinator_id)
        placement = self.placements.get(request.placement_id)
        if placement.rank != 0:
            raise StatusError(StatusCode.FAILED_PRECONDITION,
                              f"{placement}: jobs run on the worker of rank 0")
        job = Job.from_proto(request.job_id or uuid.uuid4().hex, request.decode,
                             request.default_max_tokens, request.generated_token_ids)
        log.info("%s: job %s%s", placement, job.job_id,
                 f", resumed after {len(job.generated)} tokens" if job.generated else "")
        async with aclosing(placement.run(job)) as events:
            async for event in events:
                if isinstance(event, Finished):
                    log.info("%s: job %s %s, %d tokens", placement, job.job_id,
                             event.finish_reason, len(event.token_ids))
                yield event.to_proto()

    @_refusals
    async def ReleasePlacement(self, request, context):
        await self.lease.admit(request.coordinator_id)
        await self.placements.release(request.placement_id)
        log.info("placement %s released", request.placement_id)
        return worker_pb2.ReleasePlacementResponse()

    @_refusals
    async def EndLease(self, request, context):
        await self.lease.end(request.coordinator_id)
        return worker_pb2.EndLeaseResponse()

    @_refusals
    async def ListModels(self, request, context):
        models = await asyncio.to_thread(list_models, self.models.dirs, self.models.hub)
        return worker_pb2.ListModelsResponse(models=models)
