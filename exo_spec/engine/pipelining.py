"""Whether to start the next round before reading the current one's accept decision.

Starting ahead (assuming every draft is kept) lets the host build the next round,
which takes B, while the device finishes this one, which the host would otherwise
wait W for: a kept round saves min(W, B). When a draft is rejected, the round
started ahead is taken back and its B was wasted. With p the share of rounds that
keep every draft, starting ahead pays when p * min(W, B) - (1 - p) * B is more
than ``min_gain`` of B (the bookkeeping, and noise in W). Where the device is the
bottleneck (a large model) W dwarfs B, so it pays whenever p is over about 1/2;
where the host is (a small model on a fast device), W is near zero and starting
ahead would only waste builds.

B is measured on every round built, W only on rounds read right after they were
launched (nothing started ahead of them, nothing in between), so W is measured
again every ``remeasure`` rounds by not starting ahead twice.
"""

from __future__ import annotations


class RoundPipelining:
    decay = 0.9
    remeasure = 32
    min_gain = 0.05

    def __init__(self, forced: bool | None = None):
        """``forced``: always (True) or never (False) start ahead, instead of measuring."""
        self.forced = forced
        self.build_s: float | None = None
        self.wait_s: float | None = None
        self.kept_all = 0.5  # decayed share of rounds that kept every draft
        self.since_wait = 0  # rounds since wait_s was measured

    def wanted(self) -> bool:
        if self.forced is not None:
            return self.forced
        if self.wait_s is None or self.build_s is None or self.since_wait >= self.remeasure:
            return False
        p = self.kept_all
        return p * min(self.wait_s, self.build_s) - (1 - p) * self.build_s \
            > self.min_gain * self.build_s

    def observe_build(self, seconds: float) -> None:
        self.build_s = seconds if self.build_s is None else _mix(self.build_s, seconds, self.decay)

    def observe_read(self, kept_all: bool, wait_s: float | None) -> None:
        """``wait_s``: how long reading the decision waited, for a round read right after
        its launch (else None)."""
        self.kept_all = _mix(self.kept_all, float(kept_all), self.decay)
        self.since_wait += 1
        if wait_s is not None:
            self.wait_s = wait_s if self.wait_s is None else _mix(self.wait_s, wait_s, self.decay)
            self.since_wait = 0


def _mix(old: float, new: float, decay: float) -> float:
    return decay * old + (1 - decay) * new
