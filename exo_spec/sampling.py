"""A job's sampling settings and logit penalties, checked once wherever a request
enters (CLI, gRPC API, worker). The distributions they define live in
``engine.sampling``; nothing here imports MLX, so the coordinator checks requests
without it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

DEFAULT_CONTEXT_SIZE = 20  # mlx-lm's make_logits_processors default for every penalty
SEED_RANGE = (-(2**63), 2**63 - 1)  # Sampling.seed is an int64, as OpenAI's seed is
# The most tokens a penalty may look back over: the decoder gathers each verified row's
# window (rows x size), so a size of 2^32 would ask for tens of GiB in the runner.
MAX_CONTEXT_SIZE = 1 << 16


def check_seed(seed: int | None) -> None:
    """ValueError for a seed outside the API's int64."""
    if seed is not None and not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
        raise ValueError(f"seed must be from {SEED_RANGE[0]} to {SEED_RANGE[1]}, got {seed}")


def mlx_seed(seed: int) -> int:
    """The seed as MLX takes it (0 to 2**64 - 1): a negative seed is read as its 64-bit
    two's complement, so -1 seeds as 2**64 - 1. Every front door seeds this way: the
    same seed gives the same samples locally and on a cluster."""
    return seed % 2**64


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

    @classmethod
    def from_proto(cls, s) -> Sampling:
        """From a ``common_pb2.Sampling``, whose top_p 0 means 1; ValueError out of range."""
        return cls(temp=s.temperature, top_p=s.top_p or 1.0, top_k=s.top_k, min_p=s.min_p)


@dataclass(frozen=True)
class Penalties:
    """History-dependent changes to the logits, as mlx-lm's ``make_logits_processors``
    makes them: each looks at the latest ``*_context_size`` tokens (prompt included)."""

    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 0.0  # 0 (or 1) is off
    presence_context_size: int = DEFAULT_CONTEXT_SIZE
    frequency_context_size: int = DEFAULT_CONTEXT_SIZE
    repetition_context_size: int = DEFAULT_CONTEXT_SIZE
    logit_bias: dict[int, float] = field(default_factory=dict)

    def __post_init__(self):
        for name in ("presence_penalty", "frequency_penalty", "repetition_penalty"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number, got {getattr(self, name)}")
        if self.repetition_penalty < 0:
            raise ValueError(f"repetition_penalty must be >= 0, got {self.repetition_penalty:g}")
        for name in ("presence_context_size", "frequency_context_size",
                     "repetition_context_size"):
            if not 1 <= getattr(self, name) <= MAX_CONTEXT_SIZE:
                raise ValueError(f"{name} must be from 1 to {MAX_CONTEXT_SIZE}, got "
                                 f"{getattr(self, name)}")
        if not all(math.isfinite(v) for v in self.logit_bias.values()):
            raise ValueError("logit_bias values must be finite numbers")

    @property
    def active(self) -> bool:
        return bool(self.presence_penalty or self.frequency_penalty or self.logit_bias
                    or self.repetition_penalty not in (0, 1))

    @classmethod
    def from_proto(cls, p) -> Penalties:
        """From a ``common_pb2.Penalties``, whose context sizes 0 mean the default."""
        return cls(
            presence_penalty=p.presence_penalty, frequency_penalty=p.frequency_penalty,
            repetition_penalty=p.repetition_penalty,
            presence_context_size=p.presence_context_size or DEFAULT_CONTEXT_SIZE,
            frequency_context_size=p.frequency_context_size or DEFAULT_CONTEXT_SIZE,
            repetition_context_size=p.repetition_context_size or DEFAULT_CONTEXT_SIZE,
            logit_bias=dict(p.logit_bias))


NO_PENALTIES = Penalties()
