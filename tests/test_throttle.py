"""The throttle's async face and the poll planner, on a fake clock: no sleeping, no timing windows."""

from __future__ import annotations

import random

import anyio
import pytest

from batchgen.pacing import START_PACE, Kind
from batchgen.throttle import SPREAD_GAP, GentleStart, PollPlanner, Throttle, backoff


class FakeClock:
    """A clock that only moves when someone sleeps on it."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await anyio.lowlevel.checkpoint()


def fake_throttle(rate: float | None = None) -> tuple[Throttle, FakeClock]:
    clock = FakeClock()
    return Throttle(rate, clock=clock, sleep=clock.sleep), clock


def test_backoff_grows_exponentially_with_jitter_and_a_cap():
    """Each retry waits between half and all of base·2^(n-1), never more than the cap."""
    rng = random.Random(1).random
    base, cap = 0.5, 10.0
    for attempt in range(1, 12):
        ceiling = min(cap, base * 2 ** (attempt - 1))
        delay = backoff(attempt, base=base, cap=cap, rng=rng)
        assert ceiling / 2 <= delay <= ceiling


def test_a_429_moves_the_shared_pause_later_never_earlier():
    """Retry-After 5 then Retry-After 1: every sender still waits the 5 seconds."""
    throttle, clock = fake_throttle()

    async def main() -> None:
        first = await throttle.wait_create()
        second = await throttle.wait_poll()  # on the wire when the first 429 comes back
        assert throttle.rate_limited(5.0, create=True, ticket=first) == 5.0
        assert throttle.rate_limited(1.0, create=False, ticket=second) == 5.0
        await throttle.wait_api()
        assert clock.now == 5.0

    anyio.run(main)


def test_a_429_without_a_ticket_still_pauses_everyone():
    """A request that did not take a ticket (a refresh of an output link) and gets a 429 pauses
    creates and polls alike for the Retry-After."""
    throttle, clock = fake_throttle()

    async def main() -> None:
        throttle.rate_limited(3.0, create=False)
        await throttle.wait_create()
        assert clock.now == 3.0

    anyio.run(main)


def test_a_create_whose_slot_came_before_a_pause_does_not_leave_during_it():
    """A create got its slot, then waited (for its attempt to be committed) while another's 429
    paused everyone: it is held back, not sent; a poll in the same place waits the pause out."""
    throttle, clock = fake_throttle()

    async def main() -> None:
        waiting = await throttle.wait_create()
        poll = await throttle.wait_poll()
        other = await throttle.wait_create()
        throttle.rate_limited(2.0, create=True, ticket=other)
        assert await throttle.may_send(waiting) is False
        assert clock.now == 1 / START_PACE  # the second create's slot; nothing waited for the pause
        await throttle.wait_to_send(poll)
        assert clock.now == 1 / START_PACE + 2.0

    anyio.run(main)


def test_creates_held_up_together_still_leave_a_slot_apart():
    """Creates given slots 0.1 s apart that are all held up by the same delay (a commit) leave
    0.1 s apart, not together, and the fit learns the moments they left."""
    throttle, clock = fake_throttle(10.0)

    async def main() -> None:
        tickets = [await throttle.wait_create() for _ in range(4)]
        clock.now += 1.0  # all four waited for the same commit
        left = []
        for ticket in tickets:
            assert await throttle.may_send(ticket)
            left.append(ticket.at)
        assert left == pytest.approx([1.3, 1.4, 1.5, 1.6])

    anyio.run(main)


def test_a_given_rate_spaces_creates_evenly():
    """With --rate 10, eleven creates leave over one second (the first at once)."""
    throttle, clock = fake_throttle(10.0)

    async def main() -> None:
        for _ in range(11):
            ticket = await throttle.wait_create()
            throttle.accepted(create=True, ticket=ticket)

    anyio.run(main)
    assert clock.now == pytest.approx(1.0)


def test_creates_start_at_the_start_pace_and_polls_are_not_paced_until_they_count():
    """Before anything is known creates leave START_PACE a second; polls only wait for pauses."""
    throttle, clock = fake_throttle()

    async def main() -> None:
        for _ in range(3):
            await throttle.wait_create()
        assert clock.now == pytest.approx(2 / START_PACE)
        before = clock.now
        for _ in range(50):
            await throttle.wait_poll()
        assert clock.now == before

    anyio.run(main)


def test_a_poll_429_makes_polls_wait_for_the_pace():
    """Once a poll is answered 429, polls take their place in the pace like creates."""
    throttle, clock = fake_throttle()

    async def main() -> None:
        poll = await throttle.wait_poll()
        pause = throttle.rate_limited(None, create=False, ticket=poll)
        assert throttle.pacer.counted(Kind.POLL)
        await throttle.wait_api()
        assert clock.now == pytest.approx(pause)
        start = clock.now
        for _ in range(3):
            await throttle.wait_poll()
        assert clock.now - start == pytest.approx(2 / throttle.pace, rel=0.01)

    anyio.run(main)


def test_creates_wait_under_the_running_limit_until_a_run_ends():
    """With a cap of two runs in flight, a third create waits until a run ends, not for a time."""
    throttle, _ = fake_throttle(1000.0)
    throttle.pacer.limit.cap = 2
    order: list[str] = []

    async def create(name: str) -> None:
        ticket = await throttle.wait_create()
        throttle.accepted(create=True, ticket=ticket)
        order.append(name)

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            for name in ("a", "b", "c"):
                tg.start_soon(create, name)
            await anyio.wait_all_tasks_blocked()
            assert len(order) == 2
            throttle.run_ended()
        assert sorted(order) == ["a", "b", "c"]

    anyio.run(main)


def test_a_ticket_given_back_unanswered_leaves_the_wire():
    """A create that never got a usable answer (an error, a dropped job) stops counting as in flight."""
    throttle, _ = fake_throttle()

    async def main() -> None:
        ticket = await throttle.wait_create()
        assert throttle.pacer.in_flight == 1
        throttle.done(ticket)
        throttle.done(ticket)  # twice is harmless
        assert throttle.pacer.in_flight == 0

    anyio.run(main)


def test_gentle_start_lets_one_create_through_until_one_succeeds():
    """Until the gate opens, creates go one at a time (failures don't open it); after it, all together."""
    gate = GentleStart()
    inside = peak = 0
    release = anyio.Event()

    async def create(succeeds: bool) -> None:
        nonlocal inside, peak
        async with gate.admit():
            inside += 1
            peak = max(peak, inside)
            await release.wait()
            inside -= 1
            if succeeds:
                gate.open()

    async def main() -> None:
        nonlocal peak, release
        async with anyio.create_task_group() as tg:
            for i in range(5):
                tg.start_soon(create, i == 4)  # four failed probes, then one that succeeds
            await anyio.wait_all_tasks_blocked()
            release.set()
        assert peak == 1
        peak, release = 0, anyio.Event()
        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(create, True)
            await anyio.wait_all_tasks_blocked()
            assert peak == 5
            release.set()

    anyio.run(main)


def test_a_wave_of_runs_polled_together_moves_the_first_delay_once():
    """Sixty-four misses at the same delay count as one observation, not sixty-four."""
    start = 0.5
    planner = PollPlanner(initial=start)
    for _ in range(64):
        planner.first_poll_result(False, start)
    assert start < planner.first < 2 * start


def poll_runs(planner: PollPlanner, durations: list[float]) -> list[tuple[int, float]]:
    """Poll runs of these durations one after another: (polls taken, age when seen finished) for each."""
    seen = []
    for duration in durations:
        age = planner.next_poll(0.0)
        polls = 1
        planner.first_poll_result(age >= duration, age)
        while age < duration:
            gap = planner.next_poll(age)
            age += gap
            polls += 1
            if age >= duration:
                planner.finished_between(age - gap, age)
            else:
                planner.still_running(age)
        seen.append((polls, age))
    return seen


@pytest.mark.parametrize("duration", [0.05, 1.0, 20.0])
def test_first_poll_settles_just_after_a_fixed_generation_time(duration):
    """With a fixed generation time, once settled at least 85 of 100 runs take a single poll,
    made less than 8 % after the run finished."""
    planner = PollPlanner()
    poll_runs(planner, [duration] * 300)
    single = [age for polls, age in poll_runs(planner, [duration] * 100) if polls == 1]
    assert len(single) >= 85
    assert max(single) < duration * 1.08


def test_widely_spread_durations_lower_the_first_poll_target():
    """When runs' durations spread widely, fewer runs are meant to be done at their first poll."""
    planner = PollPlanner()
    rng = random.Random(3)
    for _ in range(64):
        d = rng.lognormvariate(0, 0.5)
        planner.finished_between(d * 0.95, d * 1.05)
    tight = PollPlanner()
    for _ in range(64):
        tight.finished_between(0.99, 1.01)
    assert planner.target < tight.target
    assert tight.growth < planner.growth


def test_widely_spread_durations_cost_few_polls_for_little_latency():
    """Runs whose durations spread widely (lognormal, sigma 1) take under 4.5 polls each once the
    planner has settled (5.4 when gaps only grew with the run's age), seen under 20 % of the mean
    duration after they finish."""
    rng = random.Random(5)
    durations = [4 * rng.lognormvariate(0, 1.0) for _ in range(600)]
    planner = PollPlanner()
    poll_runs(planner, durations[:300])
    settled = poll_runs(planner, durations[300:])
    assert sum(polls for polls, _ in settled) / 300 < 4.5
    assert sum(seen - d for (_, seen), d in zip(settled, durations[300:], strict=True)) < 0.2 * sum(durations[300:])


def test_no_gap_is_shorter_than_a_share_of_the_spread_of_durations():
    """Once durations are seen to spread from about 2 s to 8 s, a run still going at 3 s is next
    polled no sooner than SPREAD_GAP of that spread (q80 - q20), more than growth x its age."""
    durations = [2.0, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0, 5.0, 5.5, 6.0, 6.5, 7.0, 7.5, 8.0, 8.0]
    planner = PollPlanner()
    for d in durations:
        planner.finished_between(d, d)
    n = len(durations) - 1
    spread = durations[int(0.8 * n)] - durations[int(0.2 * n)]
    assert planner.next_poll(3.0) >= SPREAD_GAP * spread > 3.0 * planner.growth
