"""Per-request numbers the engine reports."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class Stats:
    mode: str = "none"
    num_draft: int | None = None  # the fixed k, or None when adaptive
    drafted: int = 0
    accepted: int = 0
    rounds: int = 0  # target passes after the prompt (speculative rounds and plain steps)
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0  # of prompt_tokens, those a prefix-cache hit held: not prefilled
    generation_tokens: int = 0
    ttft_s: float = 0.0
    decode_s: float = 0.0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def tokens_per_round(self) -> float:
        # The first token comes from the prompt pass, not from a round.
        return (self.generation_tokens - 1) / self.rounds if self.rounds else 0.0

    @property
    def prompt_tps(self) -> float:
        return self.prompt_tokens / self.ttft_s if self.ttft_s else 0.0

    @property
    def decode_tps(self) -> float:
        return (self.generation_tokens - 1) / self.decode_s if self.decode_s else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        del d["rounds"], d["decode_s"]
        d.update(
            acceptance_rate=round(self.acceptance_rate, 4),
            tokens_per_round=round(self.tokens_per_round, 4),
            prompt_tps=round(self.prompt_tps, 2),
            decode_tps=round(self.decode_tps, 2),
            ttft_s=round(self.ttft_s, 4),
        )
        return d

    def summary(self) -> str:
        return summary(self.to_dict())


def summary(d: dict) -> str:
    """The one-line stats of a text-mode ``exo-spec generate``, from ``Stats.to_dict()``
    (or the same keys as a coordinator returns them)."""
    return (
        f"mode={d['mode']} accepted={d['accepted']}/{d['drafted']} "
        f"({100 * d['acceptance_rate']:.0f}%) tokens/round={d['tokens_per_round']:.2f} "
        f"prompt={d['prompt_tokens']} tok @ {d['prompt_tps']:.1f} tok/s "
        f"ttft={d['ttft_s']:.3f}s decode={d['generation_tokens']} tok @ "
        f"{d['decode_tps']:.1f} tok/s"
    )
