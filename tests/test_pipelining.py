"""When the engine starts the next round before reading the current one: only where
the host would otherwise wait for the device and most rounds keep every draft."""

from __future__ import annotations

import pytest

from exo_spec.engine.pipelining import RoundPipelining


def _run(policy: RoundPipelining, rounds: int, build_s: float, wait_s: float,
         kept_all_every: int = 1) -> list[bool]:
    """Feed the policy rounds as the engine does; what it wanted before each one."""
    wanted, read_ahead = [], False
    for i in range(rounds):
        ahead = policy.wanted()
        wanted.append(ahead)
        policy.observe_build(build_s)
        kept_all = i % kept_all_every == 0
        # A round's wait is a sample only when nothing was started ahead of or after it.
        policy.observe_read(kept_all, None if read_ahead or ahead else wait_s)
        read_ahead = ahead and kept_all
    return wanted


def test_nothing_is_started_ahead_before_anything_is_measured():
    assert RoundPipelining().wanted() is False


def test_device_bound_rounds_start_ahead_and_measure_again_now_and_then():
    """A Mac with a large model: the host waits 20 ms per round and builds in 2 ms."""
    wanted = _run(RoundPipelining(), 200, build_s=0.002, wait_s=0.020)
    later = wanted[20:]
    assert sum(later) / len(later) > 0.9
    assert not all(later)  # a round now and then measures the wait again


def test_host_bound_rounds_never_start_ahead():
    """A GPU with a small model: the device is done before the host reads (H100)."""
    assert not any(_run(RoundPipelining(), 200, build_s=0.004, wait_s=0.0001))


@pytest.mark.parametrize("kept_all_every, expected", [(1, True), (3, False)])
def test_rounds_that_are_often_taken_back_do_not_start_ahead(kept_all_every, expected):
    """Waiting as long as building: worth it only if more than half keep every draft."""
    wanted = _run(RoundPipelining(), 200, build_s=0.003, wait_s=0.003,
                  kept_all_every=kept_all_every)
    assert (sum(wanted[100:]) > 50) == expected


@pytest.mark.parametrize("forced", [True, False])
def test_forced(forced):
    assert _run(RoundPipelining(forced=forced), 10, build_s=0.001, wait_s=0.001) == [forced] * 10
