"""A job's sampling settings, checked once wherever a request enters (CLI, gRPC API,
worker). The distributions they define live in ``engine.sampling``; nothing here
imports MLX, so the coordinator checks requests without it."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Sampling:
    temp: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0

    def __post_init__(self):
        if not (self.temp >= 0 and math.isfinite(self.temp)):
            raise ValueError(f"temperature must be >= 0, got {self.temp:g}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p:g}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 <= self.min_p <= 1:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p:g}")

    @property
    def greedy(self) -> bool:
        return self.temp == 0
