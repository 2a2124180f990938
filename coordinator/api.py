"""The public API: the ``exo_spec.v1.Inference`` service of a coordinator.

Requests are checked before anything is queued (``validate``). Status codes:

- INVALID_ARGUMENT: no model or prompt, an unknown spec mode, contradicting
  proposer settings, sampling values out of range (temperature < 0, top_p outside
  (0, 1], top_k < 0, min_p outside [0, 1]), max_tokens or num_draft above their
  limits, a prompt longer than the model's context, a drafter whose vocabulary
  differs, more nodes than the model has layers;
- NOT_FOUND: no node can find the model (or drafter), or no such job;
- FAILED_PRECONDITION: more nodes asked for than are ready, a proposer the model
  cannot run (MTP without MTP heads, a Gemma 4 assistant across nodes);
- RESOURCE_EXHAUSTED: the model does not fit in the free memory of the nodes;
- UNAVAILABLE: no node is ready, or a node the job ran on was lost;
- CANCELLED: the job was cancelled (CancelJob) while the caller streamed it;
- DEADLINE_EXCEEDED: the caller's own deadline passed (the job is cancelled).

Generate streams ``accepted`` (the job) first; a job that fails after that ends
the stream with its status, and GetJob still says why.
"""

from __future__ import annotations

import math
import time

import grpc

from .. import __version__
from ..v1 import common_pb2, inference_pb2, inference_pb2_grpc
from . import job as jobs
from .job import End, JobError, timestamp
from .registry import LOST, READY, Registry
from .scheduler import Scheduler

MAX_TOKENS = 1 << 20
MAX_NUM_DRAFT = 32
DEADLINE_SLACK_S = 0.05  # a call cancelled this close to its deadline ran out of time
SPEC_MODES = set(common_pb2.SpecMode.values())
JOB_STATES = set(inference_pb2.JobState.values())


def validate(request: inference_pb2.GenerateRequest, ready_nodes: int) -> tuple[str, str] | None:
    """(status name, message) when ``request`` cannot be served as asked, else None."""
    decode, s = request.decode, request.decode.sampling
    if not request.model:
        return "INVALID_ARGUMENT", "no model given"
    if request.spec not in SPEC_MODES:
        return "INVALID_ARGUMENT", f"unknown spec mode {request.spec}"
    if request.draft_model and request.spec == common_pb2.SPEC_MODE_MTP:
        return "INVALID_ARGUMENT", "SPEC_MODE_MTP and a draft model are exclusive: pick one"
    if request.draft_model and request.spec == common_pb2.SPEC_MODE_NONE:
        return "INVALID_ARGUMENT", "SPEC_MODE_NONE and a draft model contradict each other"
    if decode.num_draft and request.spec == common_pb2.SPEC_MODE_NONE:
        return "INVALID_ARGUMENT", "SPEC_MODE_NONE and num_draft contradict each other"
    if not decode.prompt:
        return "INVALID_ARGUMENT", "the prompt is empty"
    if not (s.temperature >= 0 and math.isfinite(s.temperature)):
        return "INVALID_ARGUMENT", f"temperature must be >= 0, got {s.temperature:g}"
    if s.top_p != 0 and not 0 < s.top_p <= 1:
        return "INVALID_ARGUMENT", f"top_p must be in (0, 1] (0 means 1), got {s.top_p:g}"
    if s.top_k < 0:
        return "INVALID_ARGUMENT", f"top_k must be >= 0, got {s.top_k}"
    if not 0 <= s.min_p <= 1:
        return "INVALID_ARGUMENT", f"min_p must be in [0, 1], got {s.min_p:g}"
    if decode.max_tokens > MAX_TOKENS:
        return "INVALID_ARGUMENT", f"max_tokens must be <= {MAX_TOKENS}, got {decode.max_tokens}"
    if decode.num_draft > MAX_NUM_DRAFT:
        return "INVALID_ARGUMENT", \
            f"num_draft must be <= {MAX_NUM_DRAFT} (0 is adaptive), got {decode.num_draft}"
    if ready_nodes == 0:
        return "UNAVAILABLE", "no worker node is ready"
    if request.nodes > ready_nodes:
        return "FAILED_PRECONDITION", (f"{request.nodes} nodes were asked for but only "
                                       f"{ready_nodes} {'is' if ready_nodes == 1 else 'are'} "
                                       "ready")
    return None


class Inference(inference_pb2_grpc.InferenceServicer):
    def __init__(self, registry: Registry, scheduler: Scheduler):
        self.registry = registry
        self.scheduler = scheduler

    async def Generate(self, request, context):
        refused = validate(request, len(self.registry.ready()))
        if refused:
            await context.abort(grpc.StatusCode[refused[0]], refused[1])
        remaining = context.time_remaining()  # read now: after a cancel it is not reliable
        deadline = None if remaining is None else time.monotonic() + remaining
        job = self.scheduler.submit(request)
        try:
            yield inference_pb2.GenerateEvent(accepted=job.to_proto())
            while True:
                item = await job.events.get()
                if isinstance(item, End):
                    if item.code != "OK":
                        await context.abort(grpc.StatusCode[item.code], item.message)
                    return
                yield item
        finally:
            if not job.finished:  # the caller left: its deadline passed, or it cancelled
                if deadline is not None and time.monotonic() >= deadline - DEADLINE_SLACK_S:
                    self.scheduler.stop(job, "DEADLINE_EXCEEDED", "the caller's deadline passed")
                else:
                    self.scheduler.stop(job, "CANCELLED", "the caller cancelled its Generate call")

    async def GetJob(self, request, context):
        if not request.job_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no job_id given")
        job = self.scheduler.jobs.get(request.job_id)
        if job is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no job {request.job_id}")
        return job.to_proto()

    async def ListJobs(self, request, context):
        unknown = [s for s in request.states if s not in JOB_STATES]
        if unknown:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"unknown job state {unknown[0]}")
        wanted = set(request.states)
        found = [j.to_proto() for j in sorted(self.scheduler.jobs.values(),
                                               key=lambda j: j.created)
                 if not wanted or j.state in wanted]
        return inference_pb2.ListJobsResponse(jobs=found)

    async def CancelJob(self, request, context):
        if not request.job_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no job_id given")
        try:
            job = await self.scheduler.cancel(request.job_id)
        except JobError as e:
            await context.abort(grpc.StatusCode[e.code], e.message)
        return job.to_proto()

    async def ListNodes(self, request, context):
        return inference_pb2.ListNodesResponse(nodes=[
            inference_pb2.Node(
                id=n.node_id, host=n.host, port=n.info.port or int(n.address.rsplit(":", 1)[1]),
                version=n.info.version, memory_bytes=n.info.memory_bytes,
                used_bytes=self.scheduler.placer.used_bytes(n.node_id), chip=n.info.chip,
                backend=n.info.backend,
                state=inference_pb2.NODE_STATE_READY if n.state == READY
                else inference_pb2.NODE_STATE_LOST,
                last_seen=timestamp(n.last_seen),
                placement_ids=self.scheduler.placer.placement_ids(n.node_id))
            for n in self.registry.nodes()])

    async def ListPlacements(self, request, context):
        return inference_pb2.ListPlacementsResponse(
            placements=[p.to_proto() for p in self.scheduler.placer.placements.values()])

    async def GetClusterStatus(self, request, context):
        nodes = self.registry.nodes()
        ready = [n for n in nodes if n.state == READY]
        states = [j.state for j in self.scheduler.jobs.values()]
        return inference_pb2.ClusterStatus(
            version=__version__, ready_nodes=len(ready),
            lost_nodes=sum(n.state == LOST for n in nodes),
            placements=len(self.scheduler.placer.placements),
            queued_jobs=sum(s in (jobs.QUEUED, jobs.LOADING) for s in states),
            running_jobs=states.count(jobs.RUNNING),
            memory_bytes=sum(n.info.memory_bytes for n in ready),
            used_bytes=sum(self.scheduler.placer.used_bytes(n.node_id) for n in ready))
