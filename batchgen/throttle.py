"""Pacing shared by every request: the 429 pause, the create pace, the gentle start, poll timing.

* ``Throttle``: one per batch. Every API request awaits ``wait_api()``; creates
  also await ``wait_create()``, which spaces them out. A 429 moves the shared
  pause later, never earlier (as Scrapy's AutoThrottle never shortens its
  delay on an error), so every sender stops together. Without ``--rate``
  the create pace is discovered: unlimited until the first 429, then the
  rate seen just before it, less a margin, growing slowly while no 429 comes.
* ``GentleStart``: the first create goes out alone; the rest wait until one
  has succeeded, so a wrong key or an empty account costs one request.
* ``PollPlanner``: when to poll a run next, from how long runs have taken.
* ``backoff()``: exponential backoff with jitter for transient failures.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import anyio

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


def backoff(attempt: int, *, base: float = 0.5, cap: float = 60.0, rng: Callable[[], float] = random.random) -> float:
    """Delay before retry number ``attempt`` (1-based): base·2^(n-1), capped, with equal jitter."""
    ceiling = min(cap, base * 2 ** max(0, attempt - 1))
    return float(ceiling / 2 + rng() * ceiling / 2)


class Throttle:
    """The shared 429 pause and the pace of run creation."""

    # Discovered pace: after a 429, pace at this share of the rate seen just before it...
    DECREASE = 0.9
    # ...then grow by this share per second without a 429.
    INCREASE_PER_SECOND = 0.01
    RATE_WINDOW = 1.0  # seconds of accepted creates used to measure the rate

    def __init__(
        self,
        rate: float | None = None,
        *,
        clock: Clock = anyio.current_time,
        sleep: Sleep = anyio.sleep,
        rng: Callable[[], float] = random.random,
        backoff_base: float = 0.5,
    ):
        self.fixed_rate = rate
        self.rate: float | None = rate  # creates per second, None = unlimited
        self._clock = clock
        self._sleep = sleep
        self._rng = rng
        self._backoff_base = backoff_base
        self._paused_until = 0.0
        self._next_create = 0.0
        self._consecutive_429 = 0
        self._accepted: deque[float] = deque()
        self._last_adjust = 0.0

    async def wait_api(self) -> None:
        """Wait out the shared pause; every API request calls this first."""
        while (delay := self._paused_until - self._clock()) > 0:
            await self._sleep(delay)

    async def wait_create(self) -> None:
        """Wait out the pause, then for this create's slot in the pace."""
        while True:
            await self.wait_api()
            if self.rate is None:
                return
            now = self._clock()
            slot = max(now, self._next_create)
            self._next_create = slot + 1.0 / self.rate
            if slot > now:
                await self._sleep(slot - now)
            if self._paused_until <= self._clock():
                return
            # A 429 arrived while we waited for our slot: queue again behind the pause.

    def rate_limited(self, retry_after: float | None, *, create: bool) -> float:
        """Record a 429; returns how long every sender now pauses."""
        now = self._clock()
        in_same_episode = now < self._paused_until
        if not in_same_episode:
            self._consecutive_429 += 1
        if retry_after is not None:
            delay = retry_after
        else:
            delay = backoff(self._consecutive_429, base=self._backoff_base, rng=self._rng)
        self._paused_until = max(self._paused_until, now + delay)
        if create and self.fixed_rate is None and not in_same_episode:
            self._slow_down(now)
        return self._paused_until - now

    def accepted(self, *, create: bool) -> None:
        """A request went through: the 429 streak is over; grow the discovered pace."""
        self._consecutive_429 = 0
        if not create:
            return
        now = self._clock()
        self._accepted.append(now)
        while self._accepted and self._accepted[0] < now - self.RATE_WINDOW:
            self._accepted.popleft()
        if self.fixed_rate is None and self.rate is not None:
            elapsed = now - max(self._last_adjust, self._paused_until)
            if elapsed > 0:
                self.rate *= 1 + self.INCREASE_PER_SECOND * min(elapsed, 1.0)
                self._last_adjust = now

    def _slow_down(self, now: float) -> None:
        while self._accepted and self._accepted[0] < now - self.RATE_WINDOW:
            self._accepted.popleft()
        seen = len(self._accepted) / self.RATE_WINDOW
        current = self.rate if self.rate is not None else seen
        # Polls share the limit, so "seen" can be far below it: never cut by more than half.
        self.rate = max(0.2, 0.5 * current, min(current, seen) * self.DECREASE)
        self._last_adjust = now
        self._accepted.clear()


class GentleStart:
    """Lets one create through at a time until one has succeeded, then everyone."""

    def __init__(self) -> None:
        self.is_open = False
        self._lock = anyio.Lock()

    @asynccontextmanager
    async def admit(self) -> AsyncIterator[None]:
        if not self.is_open:
            async with self._lock:
                if not self.is_open:
                    yield  # the probe: the caller calls open() when its create succeeds
                    return
        yield

    def open(self) -> None:
        self.is_open = True


class PollPlanner:
    """When to poll a run next, learned from how runs have gone so far.

    First poll: its delay tracks a quantile of generation time by stochastic
    approximation. A run found finished at its first poll pulls the delay
    below the one it was polled at; one still running pushes it above. (The
    age at which a run is seen finished teaches little on its own: it is only
    ever the age of a poll.) Updates are relative to the delay the run was
    actually polled at, so a wave of runs polled at the same moment moves the
    delay once, not once per run.

    Later polls: the gap grows with the run's age (``growth``), which bounds
    the time between a run finishing and us seeing it to that share of its
    duration, and slow runs cost few polls.

    Which quantile: runs that needed several polls tell how long they really
    took (within ``growth``). When those durations are tightly bunched, as
    with a fixed generation time, a first poll just after most runs finish is
    nearly free of added latency, so the target is high (one poll per run);
    when they spread widely, polling late would add much latency, so the
    target drops and the growing gaps do the work.
    """

    def __init__(
        self,
        *,
        initial: float = 0.5,
        growth: float = 0.12,
        min_gap: float = 0.01,
        max_gap: float = 30.0,
        window: int = 64,
    ):
        self.first = initial
        self.target = 0.5  # share of runs meant to be finished at their first poll
        self.growth = growth
        self.min_gap = min_gap
        self.max_gap = max_gap
        self._updates = 0
        self._durations: deque[float] = deque(maxlen=window)

    def first_poll_result(self, finished: bool, delay: float) -> None:
        """A run's first poll, made ``delay`` seconds after its creation, found it finished or not."""
        # Big steps while learning, small ones once settled. Only updates that moved
        # the delay count, so a wave of runs polled together is one update, not many.
        step = max(0.02, 1.0 / (1 + self._updates))
        if finished:
            moved = delay * math.exp(-step * (1 - self.target))
            if moved < self.first:
                self.first, self._updates = max(self.min_gap, moved), self._updates + 1
        else:
            self.still_running(delay, step)

    def still_running(self, age: float, step: float | None = None) -> None:
        """A run was still running at ``age``; before any run has shown how long runs
        take, that alone says the first poll should come later."""
        if step is None:
            if self._durations:
                return
            step = max(0.02, 1.0 / (1 + self._updates))
        moved = age * math.exp(step * self.target)
        if moved > self.first:
            self.first, self._updates = min(self.max_gap * 10, moved), self._updates + 1

    def finished_between(self, low: float, high: float) -> None:
        """A run not finished at age ``low`` was finished at age ``high``."""
        self._durations.append((low + high) / 2)
        if len(self._durations) >= 8 and len(self._durations) % 4 == 0:
            ordered = sorted(self._durations)
            n = len(ordered) - 1
            # These runs all outlived their first poll, so this is the spread of the upper
            # part of the distribution; the constants are set for that.
            spread = math.log(ordered[int(0.8 * n)] / max(ordered[int(0.2 * n)], 1e-9))
            self.target = min(0.9, max(0.2, 0.9 - 1.35 * spread))
            self.growth = min(0.25, max(0.05, 0.05 + 0.15 * spread))

    def next_poll(self, age: float) -> float:
        """Seconds from now until the next poll of a run ``age`` seconds old."""
        if age <= 0:
            return self.first
        # A run polled before the first-poll delay had been learned waits for it; and until
        # a few runs have shown how long runs take, no gap is shorter than half that delay
        # (the first wave would otherwise creep up in steps of 12%: ~18 polls for a 4 s run).
        learning = self.first / 2 if len(self._durations) < 8 else 0.0
        return min(self.max_gap, max(self.min_gap, age * self.growth, self.first - age, learning))
