"""The WorkerControl service: how a coordinator drives this worker.

Every refusal is a ``Refusal`` carrying its gRPC status; ``_refusals`` turns it
into the call's status, unary or streaming.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
import uuid
from contextlib import aclosing
from inspect import isasyncgenfunction

import grpc

from .. import __version__
from ..group.pipeline import layer_ranges
from ..spec_mode import SpecMode
from ..v1 import worker_pb2, worker_pb2_grpc
from .messages import job_frame, run_event
from .model_info import inspect_model, spec_mode
from .node import Node
from .placements import Placements
from .refusal import Refusal

log = logging.getLogger(__name__)


def _refusals(method):
    """Abort the call with a refusal's status and message."""
    if isasyncgenfunction(method):
        @functools.wraps(method)
        async def stream(self, request, context):
            try:
                async for event in method(self, request, context):
                    yield event
            except Refusal as e:
                log.info("%s refused: %s", method.__name__, e.message)
                await context.abort(grpc.StatusCode[e.code], e.message)
        return stream

    @functools.wraps(method)
    async def unary(self, request, context):
        try:
            return await method(self, request, context)
        except Refusal as e:
            log.info("%s refused: %s", method.__name__, e.message)
            await context.abort(grpc.StatusCode[e.code], e.message)
    return unary


class WorkerControl(worker_pb2_grpc.WorkerControlServicer):
    def __init__(self, node: Node, placements: Placements, group_timeout_s: float):
        self.node = node
        self.placements = placements
        self.group_timeout_s = group_timeout_s
        self.port = 0  # set once the server is bound

    @_refusals
    async def GetInfo(self, request, context):
        n = self.node
        return worker_pb2.WorkerInfo(
            node_id=n.node_id, version=__version__, host=n.host, port=self.port,
            memory_bytes=n.memory_bytes, chip=n.chip, backend=n.backend,
            placement_ids=self.placements.ids())

    @_refusals
    async def InspectModel(self, request, context):
        inspection = await asyncio.to_thread(
            inspect_model, request.model, request.draft_model or None, spec_mode(request.spec),
            self.node.node_id)
        return inspection.to_proto()

    @_refusals
    async def ReservePort(self, request, context):
        with socket.socket(socket.AF_INET6 if ":" in self.node.host else socket.AF_INET) as s:
            s.bind((self.node.host, 0))
            return worker_pb2.ReservePortResponse(port=s.getsockname()[1])

    @_refusals
    async def LoadPlacement(self, request, context):
        hosts, rank = list(request.hosts), request.rank
        if not request.placement_id:
            raise Refusal("INVALID_ARGUMENT", "no placement_id")
        if not hosts or rank >= len(hosts):
            raise Refusal("INVALID_ARGUMENT",
                          f"rank {rank} of a placement with {len(hosts)} hosts")
        spec = spec_mode(request.spec)
        draft_model = request.draft_model or None
        # Only rank 0 holds the proposer: other ranks check the target alone (and
        # answer ready_mode "none"); the placement's mode is rank 0's.
        inspection = await asyncio.to_thread(
            inspect_model, request.model, draft_model if rank == 0 else None,
            spec if rank == 0 else SpecMode.NONE, self.node.node_id, ranks=len(hosts))
        split = list(request.split) or None
        try:
            layer_ranges(inspection.num_layers, len(hosts), split)
        except ValueError as e:
            raise Refusal("INVALID_ARGUMENT", str(e)) from None
        load = {"model": request.model, "draft_model": draft_model, "spec": spec, "split": split,
                "ranks": len(hosts), "group_timeout_s": self.group_timeout_s}
        placement = await self.placements.start(request.placement_id, rank, hosts, load)
        log.info("%s: starting (%s)", placement, request.model)
        ready = False
        try:
            async for frame in placement.load_events():
                if frame["type"] == "ready":
                    ready = True
                    log.info("%s: ready (%s)", placement, frame["mode"] or inspection.mode)
                    yield worker_pb2.LoadEvent(ready_mode=frame["mode"] or inspection.mode)
                else:
                    yield worker_pb2.LoadEvent(progress=frame["message"])
        finally:
            if not ready:  # it failed, or the coordinator gave up on it
                await self.placements.release(request.placement_id)

    @_refusals
    async def RunJob(self, request, context):
        placement = self.placements.get(request.placement_id)
        if placement.rank != 0:
            raise Refusal("FAILED_PRECONDITION",
                          f"{placement}: jobs run on the worker of rank 0")
        job = job_frame(request.job_id or uuid.uuid4().hex, request.decode)
        log.info("%s: job %s", placement, job["job_id"])
        async with aclosing(placement.run(job)) as frames:
            async for frame in frames:
                if frame["type"] == "finished":
                    log.info("%s: job %s %s, %d tokens", placement, job["job_id"],
                             frame["finish_reason"], len(frame["token_ids"]))
                yield run_event(frame)

    @_refusals
    async def ReleasePlacement(self, request, context):
        await self.placements.release(request.placement_id)
        log.info("placement %s released", request.placement_id)
        return worker_pb2.ReleasePlacementResponse()
