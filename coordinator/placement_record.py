"""A placement as the coordinator tracks it: a model (and its proposer) loaded on
the ranks a plan chose, serving up to ``batch_capacity`` jobs at a time (its runner
decodes them together: ``worker.runner.batch``)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from dataclasses import dataclass, field

from ..spec_mode import SpecMode
from ..v1 import inference_pb2
from .job import Job, JobRequest
from .placement_plan import Plan, RankPlan
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
    batch_capacity: int = 1  # the most jobs it serves at a time, as rank 0's worker said
    active: set[Job] = field(default_factory=set)  # the jobs it serves now
    waiting: set[Job] = field(default_factory=set)  # jobs waiting for it to load
    # After a restart, until adopted: the nodes yet to say they still hold it.
    unconfirmed: set[str] = field(default_factory=set)
    # A slot per job it may serve at once: batch_capacity of them once it is ready.
    slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(1))
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
        return self.state == PlacementState.READY and not self.active and not self.waiting

    def serve_up_to(self, capacity: int) -> None:
        """Serve up to ``capacity`` jobs at a time from now (set once, as it becomes
        ready; it starts with one slot)."""
        for _ in range(capacity - self.batch_capacity):
            self.slots.release()
        self.batch_capacity = max(capacity, self.batch_capacity)

    def matches(self, request: JobRequest) -> bool:
        """Serves ``request`` as is: same model, drafter, spec, and node count when
        the request names one."""
        return (self.state in (PlacementState.LOADING, PlacementState.READY)
                and self.model == request.model
                and self.draft_model == request.draft_model and self.spec == request.spec
                and request.nodes in (0, len(self.plan.ranks)))

    def record(self) -> dict:
        """What the state store keeps of a ready placement, to adopt it after a restart."""
        return {"id": self.id, "model": self.model, "draft_model": self.draft_model,
                "spec": str(self.spec), "mode": self.mode, "drafter": self.drafter,
                "batch_capacity": self.batch_capacity,
                "ranks": [dataclasses.asdict(r) for r in self.plan.ranks]}

    @classmethod
    def from_record(cls, record: dict) -> Placement:
        """A placement as ``record`` kept it, LOADING until its workers confirm it."""
        p = cls(id=record["id"], model=record["model"], draft_model=record["draft_model"],
                spec=SpecMode(record["spec"]), mode=record["mode"], drafter=record["drafter"],
                plan=Plan(tuple(RankPlan(**r) for r in record["ranks"])))
        p.serve_up_to(record.get("batch_capacity", 1))  # an older version's record has none
        return p

    def memory_on(self, node_id: str) -> int:
        return sum(r.memory_bytes for r in self.plan.ranks if r.node_id == node_id)

    def to_proto(self) -> inference_pb2.Placement:
        return inference_pb2.Placement(
            id=self.id, model=self.model, draft_model=self.drafter, mode=self.mode,
            state=self.state.to_proto(), jobs_served=self.jobs_served,
            batch_capacity=self.batch_capacity, batch_size=len(self.active),
            ranks=[inference_pb2.PlacementRank(
                rank=r.rank, node_id=r.node_id, layer_start=r.layer_start,
                layer_end=r.layer_end, memory_bytes=r.memory_bytes)
                for r in self.plan.ranks])
