"""How many tokens to draft next round: fixed, or chosen from measured acceptance.

The adaptive policy measures, for each draft position i, the rate a_i at which
the i-th draft is kept once the ones before it were (an MTP head chained on its
own output fits its first position far better than its third, so one rate for
all would overrate long rounds). A round of k drafts then yields E(k) = 1 + a_1
+ a_1 a_2 + ... + a_1...a_k tokens.

What a round of k drafts costs is its own timing where k was timed lately; other
lengths are read off a line fitted to those, t(k) = t_round + k * t_draft: a round
has a fixed cost beyond a plain step (a wider verify, the proposer's commit, the
read), and a cost proportional to k alone would charge it to every draft, making
long rounds of a near-perfect drafter look worse than plain decoding. Until two
lengths are timed the slope is the prior (the proposer's size relative to the
target). The line is not the cost where a length was timed: attention kernels
change with the number of query rows a verify has, so the cost is not linear in
k, and a line through two timed lengths can price a length between them over a
shorter one that is in fact slower.

t_plain is timed on plain steps that overlap the next one, as decoding plainly
runs: the engine passes no time for a step that built its own graph (after a
round: two steps' work) or queued none after it (before a round: no graph
built). Where the policy switches often those make up every other plain step,
and taken as samples (the long ones capped as spikes) they drag t_plain down
until plain decoding always wins.

It picks the k in 0..max_k with the most tokens per second, k = 0 being a plain
target step, each rate raised by ``optimism`` standard errors of its estimate:
rounds of one draft say nothing of the second, so a position seldom reached
would otherwise keep what a few unlucky rounds left it at. The first rounds after
warm-up draft (up to ``explore``) while the first draft's rate stays at 1 in 2 or
better: one round either way is too little evidence against the 1-in-2 prior, and
judging after it can decode most of a short job plainly with a drafter that is
kept nearly always. The first round of each draft length is not timed: on a GPU a
fresh process builds kernels for each new verify width on first use. Each timing
sample counts as at most twice its estimate, so one stall (a collection) cannot
make speculation look hopeless.

While plain decoding wins, it probes with one short round now and then, backing
off exponentially and spaced by what probes were measured to cost (catching the
proposer up included), so a useless drafter costs about 2% and a drafter that
starts to fit is picked up again. A probe whose draft was kept is followed by a
second, timed round, and the cost model starts afresh from it: the estimates
that made plain decoding win are stale by then, and without fresh timing a cost
overestimated once would keep plain decoding forever.
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

    def next_pipelined(self) -> int:
        return self.k

    def observe(self, k: int, accepted: int, seconds: float | None) -> None:
        pass


class AdaptiveDraftLength:
    adaptive = True
    decay = 0.9  # of the acceptance counts, per round
    weight = 0.2  # of a new timing sample
    probe_weight = 0.3  # of a new sample of what a probe costs
    spike = 2.0  # a timing sample counts as at most this multiple of its estimate
    first_probe = 16
    max_backoff = 1024
    probe_budget = 0.02
    catch_up_untimed = 4  # plain steps after which a round's time is not a cost sample
    forget = 64  # rounds after which a draft length's timing is dropped as stale
    explore = 4  # rounds drafted after warm-up, while the first draft fits, before judging
    carry = 0.5  # weight of the acceptance counts so far in the next job's
    optimism = 0.5  # standard errors added to each rate when choosing

    def __init__(self, max_k: int = 4, cost_prior: float = 0.3):
        """``cost_prior``: a draft's cost in plain steps, until two draft lengths are timed."""
        self.max_k = max_k
        self.cost_prior = cost_prior
        # Per draft position, decayed counts of drafts kept and of drafts verified, and
        # the weight of the prior: 1 in 2 at the first position, at a later one the
        # rate of the position before (so that a position never reached is neither
        # written off nor taken for granted).
        self.kept = [0.0] * max_k
        self.reached = [0.0] * max_k
        self.prior = [2.0] * max_k
        self.t_plain: float | None = None
        self.t_rounds: dict[int, float] = {}  # k -> seconds a round of k drafts takes
        self._timed_at: dict[int, int] = {}  # k -> the round that last timed it
        self._rounds = 0
        self.warmup = 4  # plain steps before the first decision
        self._warmup_s: list[float] = []
        self.plain_streak = 0
        self.backoff = self.first_probe
        # What a probe after a plain run adds, in plain steps: its round plus the
        # proposer catching up on that run, which the cost per draft leaves out.
        self.probe_cost: float | None = None
        self._retime = False  # the last round was a probe that kept its draft
        self._exploring = self.explore
        self._drafted: set[int] = set()  # the draft lengths run (by this process)

    def start_job(self) -> None:
        """Go on with the next job on the same models in the same process: the round
        costs measured so far stand (they are the machine's, and kernels built stay
        built), the acceptance counts at half weight (they are partly the prompt's).
        A short job then decodes with the length the jobs before it settled on, where
        a fresh policy spends its first steps on warm-up and a first look."""
        self.kept = [c * self.carry for c in self.kept]
        self.reached = [c * self.carry for c in self.reached]

    def _rate(self, i: int, before: float = 0.5) -> float:
        """The rate at which the i-th draft is kept, ``before`` being the prior."""
        return (self.kept[i] + self.prior[i] * before) / (self.reached[i] + self.prior[i])

    def expected_tokens(self, k: int, optimism: float) -> float:
        """Tokens a round of k drafts yields on average (the target's own included);
        with ``optimism``, each rate is raised by that many standard errors."""
        tokens, reach, rate = 1.0, 1.0, 0.5
        for i in range(k):
            rate = self._rate(i, rate)
            seen = self.reached[i] + self.prior[i]
            reach *= min(rate + optimism * (rate * (1 - rate) / seen) ** 0.5, 1.0)
            tokens += reach
        return tokens

    def round_cost(self, k: int) -> float:
        """What a round of k drafts costs, in plain steps: as timed, or by the line
        fitted to the lengths timed so far (through a plain step with the prior slope
        before any); never less than the plain step the round includes."""
        if k == 0:
            return 1.0
        if k in self.t_rounds:
            return max(self.t_rounds[k] / self.t_plain, 1.0)
        points = [(n, t / self.t_plain) for n, t in self.t_rounds.items()]
        if len(points) >= 2:
            mean_k = sum(n for n, _ in points) / len(points)
            mean_t = sum(t for _, t in points) / len(points)
            spread = sum((n - mean_k) ** 2 for n, _ in points)
            slope = max(sum((n - mean_k) * (t - mean_t) for n, t in points) / spread, 0.0)
        else:
            (mean_k, mean_t), = points or [(0, 1.0)]
            slope = self.cost_prior
        return max(mean_t + slope * (k - mean_k), 1.0)

    def _best(self) -> int:
        return max(range(self.max_k + 1),
                   key=lambda k: self.expected_tokens(k, self.optimism) / self.round_cost(k))

    def next(self) -> int:
        if self.warmup:
            return 0
        best = self._best()
        if best or self._exploring:
            return max(best, 1) if self.t_rounds else 1
        if self._retime:
            return 1
        # Space probes so that they take at most probe_budget of the decode time, and
        # no further apart than max_backoff: a probe that stalled (on a GPU, a kernel
        # built for a new catch-up width) must not stop probing for good.
        probe = self.round_cost(1) - 1 if self.probe_cost is None else self.probe_cost
        spacing = min(max(self.backoff, probe / self.probe_budget), self.max_backoff)
        return 1 if self.plain_streak >= spacing else 0

    def next_pipelined(self) -> int:
        """The draft length of a round started before the current one is read, on the
        assumption that it keeps every draft: none while probing."""
        return self.next() if self._best() else 0

    def observe(self, k: int, accepted: int, seconds: float | None) -> None:
        """``seconds``: what the round took, or None for a plain step that is no
        measure of one (see the engine)."""
        if k == 0:
            self.plain_streak += 1
            if self.warmup:
                self.warmup -= 1
                if seconds is not None:
                    self._warmup_s.append(seconds)
                if not self.warmup and self._warmup_s:
                    self.t_plain = sum(self._warmup_s) / len(self._warmup_s)
            elif seconds is not None:
                self.t_plain = self._mix(self.t_plain, seconds) if self.t_plain else seconds
            return
        # After a long plain run the round's time includes the proposer catching up on
        # those tokens: one-off work that says nothing about the cost of drafting.
        timed = self.plain_streak <= self.catch_up_untimed
        self.plain_streak = 0
        first_use = k not in self._drafted  # may have built kernels for its width
        self._drafted.add(k)
        for i in range(min(k, accepted + 1)):  # the drafts verified: up to the first rejected
            self.kept[i] = self.decay * self.kept[i] + (i < accepted)
            self.reached[i] = self.decay * self.reached[i] + 1
            self.prior[i] *= self.decay
        self._rounds += 1
        self._exploring = self._exploring - 1 if self._exploring and self._rate(0) >= 0.5 else 0
        if self.t_plain and not first_use:
            if self._retime:
                self.t_rounds = {k: self._capped(self._estimate(k), seconds)}
                self._timed_at = {k: self._rounds}
            elif timed:
                self._time(k, seconds)
            else:
                extra = max(seconds / self.t_plain - 1, 0.0)
                self.probe_cost = extra if self.probe_cost is None \
                    else self._mix(self.probe_cost, extra, self.probe_weight)
        self._retime = not timed and accepted == k
        # A round after which plain decoding still wins was a failed probe: wait longer.
        if self._best():
            self.backoff = self.first_probe
        else:
            self.backoff = min(2 * self.backoff, self.max_backoff)

    def _time(self, k: int, seconds: float) -> None:
        estimate = self._estimate(k)
        self.t_rounds[k] = self._mix(estimate, seconds) if k in self.t_rounds \
            else self._capped(estimate, seconds)
        self._timed_at[k] = self._rounds
        # A length not drafted for a while is timed again when the line says it could
        # win: a stall in its last rounds must not rule it out for good.
        for n, at in list(self._timed_at.items()):
            if self._rounds - at > self.forget:
                del self.t_rounds[n], self._timed_at[n]

    def _estimate(self, k: int) -> float:
        """Seconds a round of k drafts is expected to take."""
        return self.t_rounds.get(k, self.round_cost(k) * self.t_plain)

    def _capped(self, estimate: float, sample: float) -> float:
        return min(sample, self.spike * estimate)

    def _mix(self, estimate: float, sample: float, weight: float | None = None) -> float:
        weight = self.weight if weight is None else weight
        return (1 - weight) * estimate + weight * self._capped(estimate, sample)
