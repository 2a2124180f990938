"""How many tokens to draft next round: fixed, or chosen from measured acceptance.

The adaptive policy measures, for each draft position i, the rate a_i at which
the i-th draft is kept once the ones before it were (an MTP head chained on its
own output fits its first position far better than its third, so one rate for
all would overrate long rounds). A round of k drafts then yields
E(k) = 1 + a_1 + a_1 a_2 + ... + a_1...a_k tokens and costs
t(k) = t_plain * (1 + c * k), where c, the extra cost per drafted token relative
to a plain step, is measured too; t_plain is averaged over the first plain steps
after the very first (which compiles), as a step queued ahead of the previous
read can look free. It picks the k in 0..max_k with the most tokens
per second; k = 0 is a plain target step. While plain decoding wins, it probes
with one short round now and then, backing off exponentially and spaced by what
probes were measured to cost (catching the proposer up included), so a useless
drafter costs about 2% and a drafter that starts to fit is picked up again.
"""

from __future__ import annotations


class FixedDraftLength:
    adaptive = False

    def __init__(self, k: int):
        if k < 1:
            raise ValueError(f"--num-draft must be >= 1, got {k}")
        self.k = k

    def next(self) -> int:
        return self.k

    def ahead(self) -> int:
        return self.k

    def observe(self, k: int, accepted: int, seconds: float) -> None:
        pass


class AdaptiveDraftLength:
    adaptive = True
    decay = 0.8
    first_probe = 16
    max_backoff = 1024
    probe_budget = 0.02
    catch_up_untimed = 4  # plain steps after which a round's time is not a cost sample

    def __init__(self, max_k: int = 4, cost_prior: float = 0.3):
        self.max_k = max_k
        self.cost = cost_prior
        # Per draft position, decayed counts of drafts kept and of drafts verified
        # (a prior of 1 in 2).
        self.kept = [1.0] * max_k
        self.reached = [2.0] * max_k
        self.t_plain: float | None = None
        self.warmup = 4  # plain steps before the first decision; the first one compiles
        self._warmup_s: list[float] = []
        self.plain_streak = 0
        self.backoff = self.first_probe
        self.cost_measured = False
        # What a probe after a plain run adds, in plain steps: its round plus the
        # proposer catching up on that run, which the cost per draft leaves out.
        self.probe_cost: float | None = None

    def expected_tokens(self, k: int) -> float:
        """Tokens a round of k drafts yields on average (the target's own included)."""
        tokens, reach = 1.0, 1.0
        for i in range(k):
            reach *= self.kept[i] / self.reached[i]
            tokens += reach
        return tokens

    def _best(self) -> int:
        return max(range(self.max_k + 1),
                   key=lambda k: self.expected_tokens(k) / (1 + self.cost * k))

    def next(self) -> int:
        if self.warmup:
            return 0
        best = self._best()
        if best:
            return best if self.cost_measured else 1
        # Space probes so that they take at most probe_budget of the decode time.
        probe = self.cost if self.probe_cost is None else self.probe_cost
        return 1 if self.plain_streak >= max(self.backoff, probe / self.probe_budget) else 0

    def ahead(self) -> int:
        """The draft length of a round started before the current one is read, on the
        assumption that it keeps every draft: none while probing."""
        return self.next() if self._best() else 0

    def observe(self, k: int, accepted: int, seconds: float) -> None:
        if k == 0:
            self.plain_streak += 1
            if self.warmup:
                self.warmup -= 1
                self._warmup_s.append(seconds)
                if not self.warmup:
                    self.t_plain = sum(self._warmup_s[1:]) / len(self._warmup_s[1:])
                return
            self.t_plain = 0.8 * self.t_plain + 0.2 * seconds
            return
        # After a long plain run the round's time includes the proposer catching up on
        # those tokens: one-off work that says nothing about the cost of drafting.
        timed = self.plain_streak <= self.catch_up_untimed
        self.plain_streak = 0
        for i in range(min(k, accepted + 1)):  # the drafts verified: up to the first rejected
            self.kept[i] = self.decay * self.kept[i] + (i < accepted)
            self.reached[i] = self.decay * self.reached[i] + 1
        if self.t_plain:
            extra = max(seconds / self.t_plain - 1, 0.0)
            if timed:
                self.cost = 0.7 * self.cost + 0.3 * extra / k
                self.cost_measured = True
            else:
                self.probe_cost = extra if self.probe_cost is None \
                    else 0.7 * self.probe_cost + 0.3 * extra
        # A round after which plain decoding still wins was a failed probe: wait longer.
        if self._best():
            self.backoff = self.first_probe
        else:
            self.backoff = min(2 * self.backoff, self.max_backoff)
