"""Model servers and a model client in simulated time, for testing batchgen.pacing without sockets.

The server follows the simulator's rules (batchgen simulator, limits): a token bucket per key
that starts full, holds ``burst`` tokens and refills at the rate in force (a schedule may change
it); a 429 takes no token; polls may take create tokens too; a cap on runs not yet finished on
the server's clock; ``Retry-After`` precise (whole seconds, rounded up, at least 1, as the HTTP
header carries them), precise in milliseconds, fixed, or absent.

The client is batchgen's scheduler reduced to what pacing sees: C slots, creates that wait for
the pacer, runs polled once they should be finished, a 429'd job put back in the queue. Every
request crosses a network of ``one_way`` seconds each way (plus optional jitter), the server may
stall now and then (a busy event loop, a garbage collection: every request that reaches it
meanwhile is decided together when the stall ends, as a real server's bunch), and the server
records each request that arrives before a 429 said it may, counting only those sent after the
client had read that 429 (the others were already on the wire).

Everything runs on one event heap, so a ten-minute batch takes a fraction of a second.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from batchgen.pacing import Kind, Pacer, Send

Schedule = list[tuple[float, float]]  # (from time, rate): the rate in force from that time on


def schedule_of(rate: float | Schedule | None) -> Schedule | None:
    if rate is None or isinstance(rate, list):
        return rate
    return [(0.0, float(rate))]


def rate_at(schedule: Schedule, t: float) -> float:
    current = schedule[0][1]
    for start, rate in schedule:
        if start <= t:
            current = rate
    return current


def segments(schedule: Schedule, t0: float, t1: float) -> Iterator[tuple[float, float, float]]:
    """(from, to, rate) pieces of [t0, t1]."""
    edges = [start for start, _ in schedule if t0 < start < t1]
    points = [t0, *edges, t1]
    for a, b in zip(points, points[1:], strict=False):
        yield a, b, rate_at(schedule, a)


@dataclass
class Limits:
    """What the model server enforces. ``burst`` None: a tenth of the rate in force, at least 1."""

    rate: float | Schedule | None = None  # creates per second (and polls, with polls_count)
    burst: int | None = None
    retry_after: str = "precise"  # precise | precise-ms | fixed | none
    fixed_seconds: float = 1.0
    cap: int | None = None  # runs not yet finished on the server before creates get 429
    polls_count: bool = False

    def capacity(self, rate: float) -> float:
        return float(self.burst if self.burst is not None else max(1, round(rate * 0.1)))


class ModelServer:
    def __init__(self, limits: Limits):
        self.limits = limits
        self.schedule = schedule_of(limits.rate)
        self.tokens = limits.capacity(self.schedule[0][1]) if self.schedule else 0.0
        self.updated = 0.0
        self.run_ends: list[float] = []  # heap of the finish times of unfinished runs
        self.windows: list[tuple[float, float, float]] = []  # (429 at, read by client at, until)
        self.violations = 0

    def _refill(self, now: float) -> None:
        assert self.schedule is not None
        for a, b, rate in segments(self.schedule, self.updated, now):
            self.tokens = min(self.limits.capacity(rate), self.tokens + rate * (b - a))
        self.updated = max(self.updated, now)

    def _token_wait(self, now: float) -> float:
        """Seconds until the bucket holds a whole token (0: it does)."""
        assert self.schedule is not None
        self._refill(now)
        if self.tokens >= 1 - 1e-9:
            return 0.0
        need, t = 1 - self.tokens, now
        while True:  # walk the schedule forward until the missing fraction is earned
            rate = rate_at(self.schedule, t)
            later = [start for start, _ in self.schedule if start > t]
            span = (later[0] - t) if later else math.inf
            if rate * span >= need:
                return t + need / rate - now
            need -= rate * span
            t = later[0]

    def unfinished(self, now: float) -> int:
        while self.run_ends and self.run_ends[0] <= now:
            heapq.heappop(self.run_ends)
        return len(self.run_ends)

    def arrive(self, sent: float, now: float) -> None:
        """Count a request that comes back before a 429 it had already read said it may."""
        self.windows = [w for w in self.windows if w[2] > now]
        if any(read <= sent and now < until for _, read, until in self.windows):
            self.violations += 1

    def decide(self, now: float, *, create: bool) -> float | None:
        """None: accepted (tokens taken). Otherwise the wait until the refusal would clear (inf: unknown)."""
        waits = []
        counted = create or self.limits.polls_count
        if self.schedule is not None and counted:
            if (wait := self._token_wait(now)) > 0:
                waits.append(wait)
        if create and self.limits.cap is not None and self.unfinished(now) >= self.limits.cap:
            waits.append(self.run_ends[0] - now)
        if not waits:
            if self.schedule is not None and counted:
                self.tokens -= 1
            return None
        return max(waits)

    def retry_after(self, wait: float) -> float | None:
        mode = self.limits.retry_after
        if mode == "fixed":
            return self.limits.fixed_seconds
        if mode == "none" or math.isinf(wait):
            return None
        if mode == "precise":
            return float(max(1, math.ceil(wait - 1e-9)))
        return max(0.001, math.ceil(wait * 1000 - 1e-6) / 1000)  # precise-ms

    def refused(self, now: float, read_at: float, advertised: float | None) -> None:
        if advertised is not None:
            self.windows.append((now, read_at, now + advertised))


@dataclass
class Outcome:
    """What one model batch did."""

    n: int
    t_star: float
    finished_at: float  # when the client saw its last run finished
    create_requests: int = 0
    refused_creates: int = 0
    polls: int = 0
    refused_polls: int = 0
    violations: int = 0
    accepted_at: list[float] = field(default_factory=list)  # server times of accepted creates
    counted_at: list[float] = field(default_factory=list)  # ... of every accepted request that took a token
    max_unfinished: int = 0
    trace: list[tuple[float, float | None, int | None]] = field(default_factory=list)  # (t, pace, running limit)

    @property
    def ratio(self) -> float:
        return self.finished_at / self.t_star

    @property
    def refused_share(self) -> float:
        return self.refused_creates / self.create_requests if self.create_requests else 0.0


def ideal_create_time(schedule: Schedule | None, tokens: float) -> float:
    """When a client sending exactly at the limit would have earned ``tokens`` (the burst not counted)."""
    if schedule is None:
        return 0.0
    t, left = 0.0, tokens
    while True:
        rate = rate_at(schedule, t)
        later = [start for start, _ in schedule if start > t]
        span = (later[0] - t) if later else math.inf
        if rate * span >= left:
            return t + left / rate
        left -= rate * span
        t = later[0]


def t_star(limits: Limits, n: int, latency: float, concurrency: int) -> float:
    """max(time to earn the tokens at the limit, N·L/C) + L; with polls counted, each run needs a poll too."""
    tokens = n * (2 if limits.polls_count else 1)
    slots = min(concurrency, limits.cap) if limits.cap is not None else concurrency
    return max(ideal_create_time(schedule_of(limits.rate), tokens), n * latency / slots) + latency


def run_model(
    limits: Limits,
    *,
    n: int,
    latency: float,
    concurrency: int,
    ceiling: float | None = None,
    one_way: float = 0.005,
    jitter: float = 0.0,
    late: float = 0.0,
    seed: int = 0,
    stall: tuple[float, float] = (0.0, 0.0),
    pacer: Pacer | None = None,
    clock: list[float] | None = None,
    horizon: float = 3600.0,
) -> Outcome:
    """One batch of ``n`` runs of ``latency`` seconds through ``pacer`` against a server with
    ``limits``. A pacer passed in must read ``clock[0]``, the simulated time. The client wakes
    from each wait up to ``late`` seconds after it asked to (an event loop's timers are late by
    a millisecond or more when it is busy)."""
    rng = random.Random(seed)
    server = ModelServer(limits)
    clock = clock if clock is not None else [0.0]
    if pacer is None:
        pacer = Pacer(ceiling=ceiling, clock=lambda: clock[0])
        pacer.limit.slots = concurrency
    out = Outcome(n=n, t_star=t_star(limits, n, latency, concurrency), finished_at=math.inf)
    events: list[tuple[float, int, Callable[[], None]]] = []
    seq = 0
    state = {"queued": n, "slots": 0, "done": 0, "wake": math.inf}
    polls_due: list[tuple[float, int, float, float]] = []  # (due, seq, created at (client), finishes at (server))

    def at(t: float, fn: Callable[[], None]) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(events, (t, seq, fn))

    def wire() -> float:
        return one_way + (rng.uniform(0, jitter) if jitter else 0.0)

    busy = [0.0]

    def reach(t: float) -> float:
        """When the server gets to a request that arrives at t: after a stall it is in, or one
        that begins (with chance stall[0], up to stall[1] s), every request waiting meanwhile
        taken at its end."""
        if t < busy[0]:
            return busy[0]
        if stall[0] and rng.random() < stall[0]:
            busy[0] = t + rng.uniform(0, stall[1])
            return busy[0]
        return t

    def wake(t: float) -> None:
        t = max(t, clock[0] + 1e-6)  # a slot due within float rounding of now
        if late and math.isfinite(t):
            t += rng.uniform(0, late)
        if t < state["wake"] and math.isfinite(t):
            state["wake"] = t
            at(t, step)

    def step() -> None:
        now = clock[0]
        if now >= state["wake"]:
            state["wake"] = math.inf
        while polls_due and polls_due[0][0] <= now:
            delay = pacer.delay(Kind.POLL)
            if delay > 0:
                wake(now + delay)
                break
            _, _, created, ends = heapq.heappop(polls_due)
            send_poll(pacer.send(Kind.POLL), created, ends)
        while state["queued"] and state["slots"] < concurrency:
            delay = pacer.delay(Kind.CREATE)
            if delay > 0:
                wake(now + delay)
                break
            state["queued"] -= 1
            state["slots"] += 1
            send_create(pacer.send(Kind.CREATE))
        if polls_due and polls_due[0][0] > now:
            wake(polls_due[0][0])

    def due_poll(t: float, created: float, ends: float) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(polls_due, (t, seq, created, ends))
        wake(t)

    def send_create(ticket: Send) -> None:
        sent = clock[0]
        arrival = sent + wire()
        out.create_requests += 1

        def arrive() -> None:
            now = clock[0]
            server.arrive(sent, now)
            wait = server.decide(now, create=True)
            back = now + wire()
            if wait is None:
                ends = now + latency
                heapq.heappush(server.run_ends, ends)
                out.max_unfinished = max(out.max_unfinished, server.unfinished(now))
                out.accepted_at.append(now)
                out.counted_at.append(now)
                at(back, lambda: created(ticket, ends))
            else:
                advertised = server.retry_after(wait)
                server.refused(now, back, advertised)
                out.refused_creates += 1
                at(back, lambda: create_refused(ticket, advertised))

        at(reach(arrival), arrive)

    def created(ticket: Send, ends: float) -> None:
        now = clock[0]
        pacer.accepted(ticket)
        due_poll(now + latency * 1.02 + 0.002, now, ends)
        step()

    def create_refused(ticket: Send, advertised: float | None) -> None:
        pacer.refused(ticket, advertised)
        state["queued"] += 1
        state["slots"] -= 1
        step()

    def send_poll(ticket: Send, created_at: float, ends: float) -> None:
        sent = clock[0]
        out.polls += 1

        def arrive() -> None:
            now = clock[0]
            server.arrive(sent, now)
            wait = server.decide(now, create=False)
            back = now + wire()
            if wait is None:
                if limits.polls_count:
                    out.counted_at.append(now)
                finished = now >= ends
                at(back, lambda: polled(ticket, created_at, ends, finished))
            else:
                advertised = server.retry_after(wait)
                server.refused(now, back, advertised)
                out.refused_polls += 1
                at(back, lambda: poll_refused(ticket, advertised, created_at, ends))

        at(reach(sent + wire()), arrive)

    def polled(ticket: Send, created_at: float, ends: float, finished: bool) -> None:
        now = clock[0]
        pacer.accepted(ticket)
        if finished:
            pacer.run_ended()
            state["slots"] -= 1
            state["done"] += 1
            if state["done"] == n:
                out.finished_at = now
        else:
            age = now - created_at
            due_poll(now + max(0.01, 0.1 * age), created_at, ends)
        step()

    def poll_refused(ticket: Send, advertised: float | None, created_at: float, ends: float) -> None:
        pacer.refused(ticket, advertised)
        due_poll(clock[0], created_at, ends)
        step()

    def sample() -> None:
        out.trace.append((clock[0], pacer.pace, pacer.running_limit))
        if state["done"] < n:
            at(clock[0] + 0.1, sample)

    at(0.0, step)
    at(0.0, sample)
    while events and state["done"] < n:
        t, _, fn = heapq.heappop(events)
        if t > horizon:
            break
        clock[0] = t
        fn()
    out.violations = server.violations
    return out


def paces(times: list[float], window: float, end: float, step: float = 0.1) -> list[tuple[float, float]]:
    """(t, accepted per second over (t - window, t]) for t on a grid up to ``end``."""
    ordered = sorted(times)
    result, lo, hi = [], 0, 0
    t = window
    while t <= end + 1e-9:
        while hi < len(ordered) and ordered[hi] <= t:
            hi += 1
        while lo < len(ordered) and ordered[lo] <= t - window:
            lo += 1
        result.append((t, (hi - lo) / window))
        t += step
    return result


def convergence(
    times: list[float],
    schedule: Schedule,
    *,
    share: float = 1.0,
    tolerance: float = 0.1,
    window: float | None = None,
    end: float | None = None,
) -> list[float]:
    """For the start and each change of the limit: seconds until the pace stays within
    ``tolerance`` of the limit (times ``share``) up to the next change or ``end`` (default:
    the last accepted request). Only a pace below the band counts as out of it: above the limit is the server's
    burst letting it be. A pace is measured over ``window`` seconds (default: long enough for
    20 requests, at least 5 s, so that one Retry-After pause is a dip of at most a fifth, not a
    second without requests); inf when it never settles."""
    end = max(times) if end is None else end
    result = []
    for i, (start, rate) in enumerate(schedule):
        target = rate * share
        w = window or max(5.0, 20.0 / target)
        stop = min(schedule[i + 1][0] if i + 1 < len(schedule) else math.inf, end)
        samples = [(t, p) for t, p in paces(times, w, stop) if t - w >= start - 1e-9]
        settled = None
        for t, p in reversed(samples):
            if p < target * (1 - tolerance):
                break
            settled = t - w
        result.append(math.inf if settled is None else max(0.0, settled - start))
    return result
