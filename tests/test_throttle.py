"""Pacing as pure logic, on a fake clock: the shared 429 pause, create pacing, gentle start, poll timing."""

from __future__ import annotations

import random

import anyio
import pytest

from batchgen.throttle import GentleStart, PollPlanner, Throttle, backoff


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_backoff_grows_exponentially_with_jitter_and_a_cap():
    """Each retry waits between half and all of base*2^(n-1), never more than the cap."""
    rng = random.Random(1).random
    for attempt in range(1, 12):
        ceiling = min(10.0, 0.5 * 2 ** (attempt - 1))
        delay = backoff(attempt, base=0.5, cap=10.0, rng=rng)
        assert ceiling / 2 <= delay <= ceiling


def test_a_429_moves_the_shared_pause_later_never_earlier():
    """Retry-After 5 then Retry-After 1: everyone still waits the 5 seconds."""
    clock = FakeClock()
    throttle = Throttle(clock=clock, sleep=clock.sleep)
    assert throttle.rate_limited(5.0, create=False) == 5.0
    assert throttle.rate_limited(1.0, create=False) == 5.0
    anyio.run(throttle.wait_api)
    assert clock.now == 5.0


def test_429_without_retry_after_backs_off_longer_each_episode():
    """Consecutive 429 episodes without Retry-After pause longer and longer."""
    clock = FakeClock()
    throttle = Throttle(clock=clock, sleep=clock.sleep, rng=lambda: 1.0)
    pauses = []
    for _ in range(4):
        pauses.append(throttle.rate_limited(None, create=False))
        anyio.run(throttle.wait_api)
    assert pauses == sorted(pauses) and pauses[-1] == 8 * pauses[0]


def test_a_given_rate_spaces_creates_evenly():
    """With --rate 10, ten creates take a second."""
    clock = FakeClock()
    throttle = Throttle(10.0, clock=clock, sleep=clock.sleep)

    async def ten_creates() -> None:
        for _ in range(11):
            await throttle.wait_create()

    anyio.run(ten_creates)
    assert clock.now == pytest.approx(1.0)


def test_discovered_pace_drops_below_the_rate_seen_and_creeps_back_up():
    """The first create 429 sets the pace under the rate that got through; clean seconds raise it."""
    clock = FakeClock()
    throttle = Throttle(clock=clock, sleep=clock.sleep)
    assert throttle.rate is None
    for _ in range(50):  # 50 accepted creates within a second
        clock.now += 0.02
        throttle.accepted(create=True)
    throttle.rate_limited(1.0, create=True)
    assert throttle.rate is not None and 40 <= throttle.rate < 50
    slowed = throttle.rate
    clock.now += 1.0
    for _ in range(100):
        clock.now += 1 / slowed
        throttle.accepted(create=True)
    assert throttle.rate > slowed


def test_gentle_start_lets_one_create_through_until_one_succeeds():
    """Until the gate opens, creates go one at a time (failures don't open it); after it, all together."""
    gate = GentleStart()
    inside = peak = 0

    async def create(succeeds: bool) -> None:
        nonlocal inside, peak
        async with gate.admit():
            inside += 1
            peak = max(peak, inside)
            await anyio.sleep(0.01)
            inside -= 1
            if succeeds:
                gate.open()

    async def main() -> None:
        nonlocal peak
        async with anyio.create_task_group() as tg:
            for i in range(5):
                tg.start_soon(create, i == 4)  # four failed probes, then one that succeeds
        assert peak == 1
        peak = 0
        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(create, True)
        assert peak == 5

    anyio.run(main)


def test_a_wave_of_runs_polled_together_moves_the_first_delay_once():
    """Sixty-four misses at the same delay count as one observation, not sixty-four."""
    planner = PollPlanner(initial=0.5)
    for _ in range(64):
        planner.first_poll_result(False, 0.5)
    assert 0.5 < planner.first < 1.0


@pytest.mark.parametrize("duration", [0.05, 1.0, 20.0])
def test_first_poll_settles_just_after_a_fixed_generation_time(duration):
    """With a fixed generation time the first poll converges to just after it: one poll per run."""
    planner = PollPlanner(initial=0.5)
    ages: list[float] = []
    for _ in range(400):
        delay = planner.next_poll(0.0)
        if delay >= duration:
            planner.first_poll_result(True, delay)
            ages.append(delay)
        else:
            planner.first_poll_result(False, delay)
            age = delay
            while age < duration:
                age += planner.next_poll(age)
            planner.finished_between(age - planner.next_poll(age), age)
    late = [a for a in ages[-100:]]
    assert len(late) > 80
    assert max(late) < duration * 1.08


def test_widely_spread_durations_lower_the_first_poll_target():
    """When runs' durations spread widely, fewer runs are meant to be done at their first poll."""
    planner = PollPlanner()
    rng = random.Random(3)
    for _ in range(64):
        d = rng.lognormvariate(0, 0.5)
        planner.finished_between(d * 0.95, d * 1.05)
    wide = planner.target
    tight = PollPlanner()
    for _ in range(64):
        tight.finished_between(0.99, 1.01)
    assert wide < 0.5 < tight.target
    assert tight.growth < planner.growth
