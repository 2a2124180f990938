"""The public API: the ``exo_spec.v1.Inference`` service of a coordinator.

Requests are checked before anything is queued (``job_request``). Status codes:

- INVALID_ARGUMENT: no model, neither a prompt nor messages (or both), a message
  role other than system, user, assistant or tool, an unknown spec mode,
  contradicting proposer settings, sampling values out of range (temperature < 0,
  top_p outside (0, 1], top_k < 0, min_p outside [0, 1]), penalties out of range,
  more than 16 stop strings or one not 1 to 256 characters, max_tokens, num_draft or
  top_logprobs (20) above their limits, messages for a model without a chat
  template, a drafter whose vocabulary differs, more nodes than the model has layers,
  a checkpoint that cannot be used (``worker.model_info``: its config, weight files
  or tokenizer files), a request that does not parse (``serving.ParsedRequests``:
  a string field that is not UTF-8); a negative seed is no error (``mlx_seed``);
- OUT_OF_RANGE: a prompt longer than the model's context, or max_tokens more than
  the context leaves after it;
- NOT_FOUND: no node can find the model (or its drafter: the message says which),
  or no such job;
- FAILED_PRECONDITION: more nodes asked for than are ready, a proposer the model
  cannot run (MTP without MTP heads, a Gemma 4 assistant across nodes);
- RESOURCE_EXHAUSTED: the model does not fit in the free memory of the nodes;
- UNAVAILABLE: no node is ready, or a node the job ran on was lost and the job
  could not be placed again to resume;
- CANCELLED: the job was cancelled (CancelJob) while the caller streamed it;
- DEADLINE_EXCEEDED: the caller's own deadline passed (the job is cancelled).

Generate streams ``accepted`` (the job) first; a job that fails after that ends
the stream with its status, and GetJob still says why.

A job belongs to its caller (``auth.grpc_server.caller``): GetJob, ListJobs and
CancelJob show and touch only the caller's own jobs, unless it is the admin (it holds
the cluster key). Another caller's job is NOT_FOUND, as a job that does not exist.
"""

from __future__ import annotations

import time

from grpc import StatusCode

from .. import __version__
from ..auth.grpc_server import caller
from ..decode_request import prompt_or_messages, stop_strings, top_logprobs
from ..sampling import Penalties, Sampling
from ..spec_mode import SpecMode, check_request
from ..status import StatusError, clipped
from ..v1 import inference_pb2, inference_pb2_grpc
from ..worker.model_sources import check_name
from .job import End, JobRequest, timestamp
from .placement_lifecycle import PlacementLifecycle, lease_holder
from .placement_plan import check_node_count
from .registry import Registry
from .scheduler import Scheduler
from .states import JobState, NodeState

MAX_TOKENS = 1 << 20
MAX_NUM_DRAFT = 32
DEADLINE_SLACK_S = 0.05  # a call cancelled this close to its deadline ran out of time
JOB_STATES = set(inference_pb2.JobState.values())


def job_request(request: inference_pb2.GenerateRequest, ready_nodes: int, *,
                owner: str) -> JobRequest:
    """What ``request`` (from the caller ``owner``, a ``Caller.id``) asks for;
    StatusError when it cannot be served as asked."""
    decode, s = request.decode, request.decode.sampling
    try:  # each ValueError is the caller's INVALID_ARGUMENT
        if not request.model:
            raise ValueError("no model given")
        check_name(request.model)  # too long to be one, and not quoted back
        check_name(request.draft_model, "drafter")
        spec = SpecMode.from_proto(request.spec)
        check_request(spec, request.draft_model, decode.num_draft)
        prompt_or_messages(decode)
        Sampling.from_proto(s)
        Penalties.from_proto(decode.penalties)
        stop_strings(decode)
        top_logprobs(decode)
        if decode.max_tokens > MAX_TOKENS:
            raise ValueError(f"max_tokens must be <= {MAX_TOKENS}, got {decode.max_tokens}")
        if decode.num_draft > MAX_NUM_DRAFT:
            raise ValueError(f"num_draft must be <= {MAX_NUM_DRAFT} (0 is adaptive), "
                             f"got {decode.num_draft}")
    except ValueError as e:
        raise StatusError(StatusCode.INVALID_ARGUMENT, str(e)) from None
    check_node_count(request.nodes, ready_nodes)
    return JobRequest(model=request.model, draft_model=request.draft_model, spec=spec,
                      nodes=request.nodes, decode=decode, owner=owner)


class Inference(inference_pb2_grpc.InferenceServicer):
    def __init__(self, registry: Registry, placements: PlacementLifecycle,
                 scheduler: Scheduler):
        self.registry = registry
        self.placements = placements
        self.scheduler = scheduler

    async def Generate(self, request, context):
        try:
            asked = job_request(request, len(self.registry.ready()), owner=caller().id)
        except StatusError as e:
            await context.abort(e.code, e.message)
        remaining = context.time_remaining()  # read now: after a cancel it is not reliable
        deadline = None if remaining is None else time.monotonic() + remaining
        job = self.scheduler.submit(asked)
        try:
            yield inference_pb2.GenerateEvent(accepted=job.to_proto())
            while True:
                item = await job.events.get()
                if isinstance(item, End):
                    if item.error is not None:
                        await context.abort(item.error.code, item.error.message)
                    return
                yield item
        finally:
            if not job.finished:  # the caller left: its deadline passed, or it cancelled
                if deadline is not None and time.monotonic() >= deadline - DEADLINE_SLACK_S:
                    job.stop(StatusError(StatusCode.DEADLINE_EXCEEDED,
                                         "the caller's deadline passed"))
                else:
                    job.stop(StatusError(StatusCode.CANCELLED,
                                         "the caller cancelled its Generate call"))

    async def _own_job(self, job_id: str, context) -> inference_pb2.Job:
        """The record of the caller's job ``job_id``; another caller's is NOT_FOUND."""
        if not job_id:
            await context.abort(StatusCode.INVALID_ARGUMENT, "no job_id given")
        job = self.scheduler.record(job_id)
        if job is None or not caller().sees(job.owner):
            await context.abort(StatusCode.NOT_FOUND, clipped(f"no job {job_id}"))
        return job

    async def GetJob(self, request, context):
        return await self._own_job(request.job_id, context)

    async def ListJobs(self, request, context):
        unknown = [s for s in request.states if s not in JOB_STATES]
        if unknown:
            await context.abort(StatusCode.INVALID_ARGUMENT, f"unknown job state {unknown[0]}")
        who = caller()
        return inference_pb2.ListJobsResponse(jobs=[
            j for j in self.scheduler.records(set(request.states)) if who.sees(j.owner)])

    async def CancelJob(self, request, context):
        await self._own_job(request.job_id, context)
        try:
            job = await self.scheduler.cancel(request.job_id)
        except StatusError as e:
            await context.abort(e.code, e.message)
        return job

    async def ListNodes(self, request, context):
        return inference_pb2.ListNodesResponse(nodes=[
            inference_pb2.Node(
                id=n.node_id, host=n.host, port=n.info.port or int(n.address.rsplit(":", 1)[1]),
                version=n.info.version, memory_bytes=n.info.memory_bytes,
                used_bytes=self.placements.used_bytes(n.node_id), chip=n.info.chip,
                backend=n.info.backend, state=n.state.to_proto(),
                last_seen=timestamp(n.last_seen),
                placement_ids=self.placements.placement_ids(n.node_id),
                lease_holder=lease_holder(n))
            for n in self.registry.nodes()])

    async def ListPlacements(self, request, context):
        return inference_pb2.ListPlacementsResponse(
            placements=[p.to_proto() for p in self.placements.by_id.values()])

    async def GetClusterStatus(self, request, context):
        nodes = self.registry.nodes()
        ready = [n for n in nodes if n.state == NodeState.READY]
        states = [j.state for j in self.scheduler.jobs.values()]
        return inference_pb2.ClusterStatus(
            version=__version__, ready_nodes=len(ready),
            lost_nodes=sum(n.state == NodeState.LOST for n in nodes),
            placements=len(self.placements.by_id),
            queued_jobs=sum(s in (JobState.QUEUED, JobState.LOADING) for s in states),
            running_jobs=states.count(JobState.RUNNING),
            memory_bytes=sum(n.info.memory_bytes for n in ready),
            used_bytes=sum(self.placements.used_bytes(n.node_id) for n in ready),
            coordinator_id=self.registry.coordinator_id,
            batch_size=max((len(p.active) for p in self.placements.by_id.values()), default=0))
