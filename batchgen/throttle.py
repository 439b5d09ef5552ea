"""Pacing shared by every request: the 429 pause, the create pace, the gentle start, poll timing.

* ``Throttle``: one per batch, the async face of ``pacing.Pacer`` (the controller: see its
  docstring for how the pace, the running-runs limit and the pauses are found). Every API
  request awaits ``wait_api()`` (the shared 429 pause), a create ``wait_create()`` (the
  pause, the pace, the cap on runs in flight) and a poll ``wait_poll()`` (the pause, and the
  pace once polls are seen to count against the limit). The last two return a ``Send``
  ticket that the caller hands back with what became of the request: ``accepted``,
  ``rate_limited`` (a 429) or ``done`` (anything else). Just before the bytes leave, after
  whatever the request awaited since its slot, a create asks ``may_send`` (False: a pause
  began, it waits for a new slot) and a poll awaits ``wait_to_send`` (it waits the pause out).
  ``run_started`` / ``run_ended``
  keep the count of runs in flight. A 429 moves the shared pause later, never earlier (as
  Scrapy's AutoThrottle never shortens its delay on an error), so every sender stops
  together; a ``--rate`` is a ceiling the pace starts at, and 429s still slow it.
* ``GentleStart``: the first create goes out alone; the rest wait until one has
  succeeded, so a wrong key or an empty account costs one request.
* ``PollPlanner``: when to poll a run next, from how long runs have taken.
* ``backoff()``: exponential backoff with jitter for transient failures.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio

from .pacing import Kind, Pacer, Send

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


def backoff(attempt: int, *, base: float = 0.5, cap: float = 60.0, rng: Callable[[], float] = random.random) -> float:
    """Delay before retry number ``attempt`` (1-based): base·2^(n-1), capped, with equal jitter."""
    ceiling = min(cap, base * 2 ** max(0, attempt - 1))
    return float(ceiling / 2 + rng() * ceiling / 2)


class Throttle:
    """The shared 429 pause, the pace of creates (and of polls that count), the runs-in-flight limit."""

    def __init__(
        self,
        rate: float | None = None,
        *,
        clock: Clock = anyio.current_time,
        sleep: Sleep = anyio.sleep,
        backoff_base: float = 0.5,
    ):
        self.ceiling = rate
        self.pacer = Pacer(clock=clock, ceiling=rate, backoff_base=backoff_base)
        self._clock = clock
        self._sleep = sleep
        self._freed: anyio.Event | None = None  # set when a run ends or a create is answered

    @property
    def pace(self) -> float:
        """Requests per second that count against the limit, as paced now."""
        return self.pacer.pace

    def state(self) -> dict[str, Any]:
        """What the pacing knows now, for a log: ``pace`` (requests a second that count against
        the limit), ``fitted`` ([lowest, highest] create rate every answer so far allows, once
        429s bound it, else None) and ``running_limit`` (the cap on runs in flight found, or None)."""
        bounds = self.pacer.rate.bounds
        return {
            "pace": round(self.pacer.pace, 3),
            "fitted": [round(bounds[0], 3), round(bounds[1], 3)] if bounds is not None else None,
            "running_limit": self.pacer.running_limit,
        }

    def limit_runs(self, slots: int) -> None:
        """Our own limit on runs in flight (--concurrency): 429s at it are no sign of the server's cap."""
        self.pacer.limit.slots = slots

    @property
    def running_limit(self) -> int | None:
        """The cap on runs in flight the server was found to keep, if any."""
        return self.pacer.running_limit

    async def wait_api(self) -> None:
        """Wait out the shared pause; every API request calls this (or wait_create/wait_poll) first."""
        while (delay := self.pacer.pause_until - self._clock()) > 0:
            await self._sleep(delay)

    async def wait_create(self) -> Send:
        """Wait for the pause, this create's slot in the pace and room under the running limit;
        returns the ticket to hand back with the answer."""
        return await self._wait(Kind.CREATE)

    async def wait_poll(self) -> Send:
        """Wait for the pause (and the pace, once polls count against the limit)."""
        return await self._wait(Kind.POLL)

    async def _wait(self, kind: Kind) -> Send:
        while (delay := self.pacer.delay(kind)) > 0:
            if math.isinf(delay):  # held under the running limit until a run ends
                if self._freed is None or self._freed.is_set():
                    self._freed = anyio.Event()
                await self._freed.wait()
            else:
                await self._sleep(delay)
        return self.pacer.send(kind)

    async def may_send(self, ticket: Send) -> bool:
        """Just before a request's bytes leave (after its slot, and whatever it awaited since):
        wait out the pace's spacing from the last request that left, so that a delay many
        requests shared (a commit) does not send them together. False, without waiting, if a
        429's pause began since the slot was given: the request must not go, and waits again."""
        while (delay := self.pacer.hold(ticket)) > 0:
            if self.pacer.paused():
                return False
            await self._sleep(delay)
        self.pacer.leaving(ticket)
        return True

    async def wait_to_send(self, ticket: Send) -> None:
        """A request that may be held back without cost (a poll): as ``may_send``, but a
        pause that began since its slot is waited out rather than refused."""
        while not await self.may_send(ticket):
            await self.wait_api()

    def rate_limited(self, retry_after: float | None, *, create: bool, ticket: Send | None = None) -> float:
        """Record a 429; returns how long every sender now pauses."""
        if ticket is None:  # a request that did not wait for a ticket: its 429 still pauses everyone
            ticket = Send(Kind.CREATE if create else Kind.POLL, self._clock(), self.pacer.in_flight, False, self.pace)
            if create:
                self.pacer.wire += 1
        pause = self.pacer.refused(ticket, retry_after)
        self._wake()
        return pause

    def accepted(self, *, create: bool, ticket: Send | None = None) -> None:
        """A request went through."""
        if ticket is None:
            self.pacer.streak = 0
            return
        self.pacer.accepted(ticket)

    def done(self, ticket: Send) -> None:
        """The request is over and said nothing about the limit (an error, a dropped create);
        a ticket already answered is left as it is."""
        if ticket.result is None:
            self.pacer.lost(ticket)
            self._wake()

    def run_started(self) -> None:
        """A run created by an earlier session is being collected: it counts as in flight."""
        self.pacer.run_started()

    def run_ended(self) -> None:
        """A run left the in-flight set (finished, failed or given up on)."""
        self.pacer.run_ended()
        self._wake()

    def _wake(self) -> None:
        if self._freed is not None:
            self._freed.set()


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


# The shortest gap between polls of a run, as a share of the spread of durations seen (q80 - q20).
# bench/poll_model.py's best schedules for lognormal durations poll about every 0.2-0.3 of that
# spread around the median; growth x age alone polls there every few percent of the age.
SPREAD_GAP = 0.2


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
    duration, and slow runs cost few polls. Where durations spread widely, the
    gap is also never shorter than ``SPREAD_GAP`` of their spread (the 20th to
    80th percentile of the durations seen): runs still going at an age where
    many finish are polled about as often as at the first poll's age, not every
    few percent of it, which costs fewer polls for a little more latency.

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
        self.spread_gap = 0.0  # the shortest gap once durations are seen to spread (SPREAD_GAP of it)

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
            low, high = ordered[int(0.2 * n)], ordered[int(0.8 * n)]
            spread = math.log(high / max(low, 1e-9))
            self.target = min(0.9, max(0.2, 0.9 - 1.35 * spread))
            self.growth = min(0.25, max(0.05, 0.05 + 0.15 * spread))
            self.spread_gap = SPREAD_GAP * (high - low)

    def next_poll(self, age: float) -> float:
        """Seconds from now until the next poll of a run ``age`` seconds old."""
        if age <= 0:
            return self.first
        # A run polled before the first-poll delay had been learned waits for it; and until
        # a few runs have shown how long runs take, no gap is shorter than half that delay
        # (the first wave would otherwise creep up in steps of 12%: ~18 polls for a 4 s run).
        learning = self.first / 2 if len(self._durations) < 8 else 0.0
        return min(self.max_gap, max(self.min_gap, age * self.growth, self.first - age, learning, self.spread_gap))
