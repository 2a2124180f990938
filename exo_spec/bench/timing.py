"""One timed generation, and what a row's repeats add up to."""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass
class PromptRun:
    """One prompt's generation: decode time runs from the first token the consumer
    receives to the last one, the same for every row."""

    tokens: list[int]
    decode_s: float
    rounds: int  # target passes after the first token
    drafted: int = 0
    accepted: int = 0
    finish: str = "length"
    extra: dict = field(default_factory=dict)  # e.g. a group's traffic per round (last prompt)


@dataclass
class Run:
    """One repeat of a row: every prompt once."""

    prompts: list[PromptRun] = field(default_factory=list)

    @property
    def decoded(self) -> int:
        return sum(max(len(p.tokens) - 1, 0) for p in self.prompts)

    @property
    def tps(self) -> float:
        seconds = sum(p.decode_s for p in self.prompts)
        return self.decoded / seconds if seconds else 0.0

    @property
    def acceptance(self) -> float | None:
        drafted = sum(p.drafted for p in self.prompts)
        return sum(p.accepted for p in self.prompts) / drafted if drafted else None

    @property
    def tokens_per_round(self) -> float:
        rounds = sum(p.rounds for p in self.prompts)
        return self.decoded / rounds if rounds else 0.0


def timed(chunks: Iterator[list[int]]) -> tuple[list[int], float]:
    """All tokens, and the seconds from receiving the first chunk to receiving the last."""
    tokens = list(next(chunks, []))
    start = time.perf_counter()
    for chunk in chunks:
        tokens += chunk
    return tokens, time.perf_counter() - start


def median_and_spread(values: list[float]) -> tuple[float, float]:
    """The median, and (max - min) / median in percent."""
    if not values:
        return 0.0, 0.0
    median = statistics.median(values)
    spread = 100 * (max(values) - min(values)) / median if median else 0.0
    return median, spread
