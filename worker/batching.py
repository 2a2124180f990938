"""How a worker's one-node placements batch their jobs (``runner.batch``): the
settings ``exo-spec worker --max-batch`` and ``--kv-budget-gb`` give, light to import."""

from __future__ import annotations

from dataclasses import dataclass

# A one-node placement decodes up to this many jobs together, their caches within this
# share of the node's memory budget by default: memory beyond the plan's 20% margin, as
# the prefix cache is, within the quarter of physical memory a worker leaves out of its
# default budget.
MAX_BATCH = 16
KV_BUDGET_SHARE = 0.10


@dataclass(frozen=True)
class Batching:
    max_batch: int = MAX_BATCH  # 1: one job at a time
    kv_budget_bytes: int | None = None  # None: KV_BUDGET_SHARE of the node's budget

    def kv_budget(self, memory_bytes: int) -> int:
        """The bytes a placement's batched caches may take on a node of this budget."""
        return int(memory_bytes * KV_BUDGET_SHARE) if self.kv_budget_bytes is None \
            else self.kv_budget_bytes


DEFAULT_BATCHING = Batching()
