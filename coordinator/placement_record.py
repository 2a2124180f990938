"""A placement as the coordinator tracks it: a model (and its proposer) loaded on
the ranks a plan chose, serving one job at a time."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field

from ..spec_mode import SpecMode
from ..v1 import inference_pb2
from .job import Job, JobRequest
from .placement_plan import Plan
from .states import PlacementState


@dataclass(eq=False)
class Placement:
    model: str
    draft_model: str  # as the jobs asked for it ("" lets the worker choose)
    spec: SpecMode
    plan: Plan
    mode: str  # the proposer: what InspectModel said, then what rank 0 reports
    drafter: str = ""  # the drafter it loads (the named one, or the model card's)
    id: str = field(default_factory=lambda: "p-" + uuid.uuid4().hex[:8])
    state: PlacementState = PlacementState.LOADING
    error: str = ""
    jobs_served: int = 0
    ready_at: float = 0.0  # time.monotonic()
    last_used: float = field(default_factory=time.monotonic)
    active: Job | None = None
    waiting: set[Job] = field(default_factory=set)  # jobs waiting for it to load
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one job at a time
    loaded: asyncio.Future = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())
    load_task: asyncio.Task | None = None

    def __post_init__(self):
        # A failed load nobody waits on must not warn "exception never retrieved".
        self.loaded.add_done_callback(lambda f: f.cancelled() or f.exception())

    def __str__(self) -> str:
        return f"placement {self.id}"

    @property
    def node_ids(self) -> list[str]:
        return self.plan.node_ids

    @property
    def idle(self) -> bool:
        return self.state == PlacementState.READY and not self.lock.locked() and not self.waiting

    def matches(self, request: JobRequest) -> bool:
        """Serves ``request`` as is: same model, drafter, spec, and node count when
        the request names one."""
        return (self.state in (PlacementState.LOADING, PlacementState.READY)
                and self.model == request.model
                and self.draft_model == request.draft_model and self.spec == request.spec
                and request.nodes in (0, len(self.plan.ranks)))

    def memory_on(self, node_id: str) -> int:
        return sum(r.memory_bytes for r in self.plan.ranks if r.node_id == node_id)

    def to_proto(self) -> inference_pb2.Placement:
        return inference_pb2.Placement(
            id=self.id, model=self.model, draft_model=self.drafter, mode=self.mode,
            state=self.state.to_proto(), jobs_served=self.jobs_served,
            ranks=[inference_pb2.PlacementRank(
                rank=r.rank, node_id=r.node_id, layer_start=r.layer_start,
                layer_end=r.layer_end, memory_bytes=r.memory_bytes)
                for r in self.plan.ranks])
