"""The shapes of the simulated service's rate limits, per API key, and what they record.

Real accounts are limited in several ways at once, and the limits move during a night:

* **A token bucket per limit** (``create_rate`` for creates, ``request_rate`` for every API
  request). It holds at most ``burst`` tokens, starts full, refills at the rate in force and
  each accepted request takes one token; a request that finds less than one token is answered
  429 and takes none. Unless the burst is given it is :func:`default_burst`: a tenth of the
  rate in force, at least 1 (30/s → 3, 150/s → 15, 2/s → 1): far below the per-second rate, as
  real buckets are, so a client cannot mistake the first second's burst for the rate.
* **A rate schedule**: a rate may change at given moments, ``"30,15@6,30@12"`` meaning 30/s,
  then 15/s from 6 s after the simulator started, then 30/s again from 12 s (see
  :meth:`RateSchedule.parse`). A plain number is a constant rate.
* **Polls counted against the create limit** (``polls_count``): GET /runs/{id} then takes a
  token from the create bucket as well, one limit shared by creates and polls.
* **A cap on running runs** (``max_running``): a create is answered 429 while the key already
  has that many runs created and not yet finished (succeeded or failed on the server's clock;
  stuck runs never finish). Only runs this process created or answered for are known to it.
* **Retry-After** in one of the modes of :class:`RetryAfter`.

:class:`RetryAfterWatch` counts the requests that come back earlier than a 429 said they may,
and :class:`LimitHistory` records which limits were in force when, for the stats.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from email.utils import formatdate
from functools import lru_cache
from typing import NamedTuple

Headers = list[tuple[bytes, bytes]]

DEFAULT_BURST_SHARE = 0.1  # default burst = this share of the rate in force, at least 1
RETRY_AFTER_MODES = ("precise", "precise-ms", "fixed:N", "date", "none")
VIOLATION_LOG_MAX = 1000  # violations kept with their details (all are counted)
_EPSILON = 1e-9  # tokens within this of a whole one count as whole (float sums of rate * dt)


def default_burst(rate: float) -> int:
    """The bucket size when none is given: a tenth of the rate, at least 1."""
    return max(1, round(rate * DEFAULT_BURST_SHARE))


@dataclass(frozen=True)
class RateSchedule:
    """A rate per second that changes at given seconds after the simulator started."""

    steps: tuple[tuple[float, float], ...]  # (from second, rate); the first from 0, times increasing

    @staticmethod
    def parse(spec: float | str, name: str = "rate") -> RateSchedule:
        """``30`` or ``"30"``: 30/s from the start; ``"30,15@6,30@12"``: 30/s, 15/s from second 6,
        30/s from second 12. Rates are positive numbers; times are seconds, increasing."""
        return _parse_schedule(spec, name)

    def rate_at(self, t: float) -> float:
        rate = self.steps[0][1]
        for start, value in self.steps:
            if start > t:
                break
            rate = value
        return rate

    def segments(self, t0: float, t1: float) -> Iterator[tuple[float, float, float]]:
        """(from, to, rate) pieces covering [t0, t1]."""
        for i, (start, rate) in enumerate(self.steps):
            end = self.steps[i + 1][0] if i + 1 < len(self.steps) else math.inf
            a, b = max(start, t0), min(end, t1)
            if a < b:
                yield a, b, rate

    def seconds_to_earn(self, t: float, amount: float) -> float:
        """Seconds from ``t`` until the rate, integrated, reaches ``amount`` tokens."""
        for a, b, rate in self.segments(t, math.inf):
            if rate * (b - a) >= amount:
                return a + amount / rate - t
            amount -= rate * (b - a)
        raise AssertionError("the last step of a schedule lasts forever")  # pragma: no cover


@lru_cache(maxsize=64)
def _parse_schedule(spec: float | str, name: str) -> RateSchedule:
    example = "a schedule is RATE or RATE,RATE@SECONDS,... (for example 30,15@6,30@12)"
    if isinstance(spec, bool) or not isinstance(spec, int | float | str):
        raise ValueError(f"{name} must be a number of requests per second or a schedule; {example}")
    pieces = str(spec).split(",")
    steps: list[tuple[float, float]] = []
    for i, piece in enumerate(pieces):
        rate_text, at, time_text = piece.strip().partition("@")
        try:
            rate = float(rate_text)
            start = float(time_text) if at else 0.0
        except ValueError:
            raise ValueError(f"{name}: {piece.strip()!r} is not RATE or RATE@SECONDS; {example}") from None
        if not (math.isfinite(rate) and rate > 0):
            raise ValueError(f"{name}: the rate in {piece.strip()!r} must be a positive number per second")
        if not (math.isfinite(start) and start >= 0):
            raise ValueError(f"{name}: the time in {piece.strip()!r} must be seconds >= 0")
        if i == 0 and start != 0:
            raise ValueError(f"{name}: the first rate applies from the start; write {pieces[0].partition('@')[0]}")
        if i > 0 and (not at or start <= steps[-1][0]):
            raise ValueError(f"{name}: {piece.strip()!r} needs @SECONDS later than the step before; {example}")
        steps.append((start, rate))
    return RateSchedule(tuple(steps))


class TokenBucket:
    """One key's bucket for one limit. Capacity and rate come from the schedule and burst in
    force at each moment, so a changed configuration takes effect at once."""

    def __init__(self, schedule: RateSchedule, burst: int | None, now: float):
        self.tokens = float(self._capacity(schedule.rate_at(now), burst))
        self.updated = now

    @staticmethod
    def _capacity(rate: float, burst: int | None) -> int:
        return burst if burst is not None else default_burst(rate)

    def wait(self, schedule: RateSchedule, burst: int | None, now: float) -> float:
        """Refill up to ``now`` and return the seconds until a whole token (0: one is there)."""
        if now > self.updated:
            for a, b, rate in schedule.segments(self.updated, now):
                self.tokens = min(self._capacity(rate, burst), self.tokens + rate * (b - a))
            self.updated = now
        if self.tokens >= 1 - _EPSILON:
            return 0.0
        return schedule.seconds_to_earn(now, 1 - self.tokens)

    def take(self) -> None:
        self.tokens -= 1


class LimitSettings(NamedTuple):
    """The limit fields of a SimConfig (see there)."""

    create_rate: float | str | None
    create_burst: int | None
    request_rate: float | str | None
    request_burst: int | None
    polls_count: bool
    max_running: int | None


@dataclass(frozen=True)
class Refusal:
    """Why a request is answered 429, and in how many seconds it would not be (None: unknown)."""

    why: str  # "create_rate", "request_rate" or "max_running"
    wait: float | None


class Limiter:
    """Every key's buckets and running runs; decides which requests get 429."""

    def __init__(self) -> None:
        self._buckets: dict[tuple[str, str], TokenBucket] = {}
        self._running: dict[str, list[float]] = {}  # key -> heap of the times its runs finish
        self.max_unfinished = 0  # the most unfinished runs one key had, counted at its creates

    def check(self, key: str, limits: LimitSettings, now: float, *, create: bool) -> Refusal | None:
        """None (having taken the request's tokens) or why it is refused (taking nothing)."""
        checks = [("request_rate", limits.request_rate, limits.request_burst)]
        if create or limits.polls_count:
            checks.append(("create_rate", limits.create_rate, limits.create_burst))
        taken: list[TokenBucket] = []
        refusals: list[Refusal] = []
        for why, spec, burst in checks:
            if spec is None:
                continue
            schedule = RateSchedule.parse(spec, why)
            bucket = self._buckets.get((key, why))
            if bucket is None:
                bucket = self._buckets[key, why] = TokenBucket(schedule, burst, now)
            wait = bucket.wait(schedule, burst, now)
            if wait > 0:
                refusals.append(Refusal(why, wait))
            taken.append(bucket)
        if create and limits.max_running is not None and self.unfinished(key, now) >= limits.max_running:
            ends = self._running.get(key, [])
            refusals.append(Refusal("max_running", ends[0] - now if ends and ends[0] < math.inf else None))
        if not refusals:
            for bucket in taken:
                bucket.take()
            return None
        waits = [r.wait for r in refusals]
        return Refusal(refusals[0].why, None if None in waits else max(w for w in waits if w is not None))

    def unfinished(self, key: str, now: float) -> int:
        ends = self._running.get(key)
        if not ends:
            return 0
        while ends and ends[0] <= now:
            heapq.heappop(ends)
        return len(ends)

    def started(self, key: str, ends_at: float | None, now: float) -> None:
        """A run of ``key`` that finishes at ``ends_at`` (None: never) is unfinished from now."""
        if ends_at is not None and ends_at <= now:
            return
        heapq.heappush(self._running.setdefault(key, []), math.inf if ends_at is None else ends_at)
        self.max_unfinished = max(self.max_unfinished, self.unfinished(key, now))


@dataclass(frozen=True)
class RetryAfter:
    """How a 429 says when to come back.

    ``precise``: ``Retry-After`` in whole seconds (the header carries no fractions), the exact
    time until a token or a running slot frees, rounded up, at least 1. ``precise-ms``: the same
    header plus ``retry-after-ms`` with the exact wait in milliseconds, as Azure services send and
    the OpenAI and Anthropic SDKs read. ``fixed:N``: always N seconds, whatever the wait.
    ``date``: an HTTP-date (second resolution, rounded up). ``none``: no header.
    When the wait is unknown (every running run is stuck) only ``fixed:N`` sends a header.
    """

    mode: str = "precise"
    seconds: int = 0  # for fixed

    @staticmethod
    def parse(value: str | bool) -> RetryAfter:
        if value is True:  # the earlier boolean field: True sent the header, False did not
            return RetryAfter("precise")
        if value is False:
            return RetryAfter("none")
        text = str(value).strip().lower()
        if text in ("precise", "precise-ms", "date", "none"):
            return RetryAfter(text)
        kind, colon, number = text.partition(":")
        if kind == "fixed" and colon and number.isdigit():
            return RetryAfter("fixed", int(number))
        raise ValueError(f"retry_after must be one of {', '.join(RETRY_AFTER_MODES)} (N whole seconds), not {value!r}")

    def headers(self, wait: float | None, wall_now: float) -> tuple[Headers, float | None]:
        """The 429's headers when the refusal clears in ``wait`` seconds, and the seconds from
        now they advertise (None: no retry time advertised)."""
        if self.mode == "fixed":
            return [(b"retry-after", str(self.seconds).encode())], float(self.seconds)
        if wait is None or self.mode == "none":
            return [], None
        seconds = max(1, math.ceil(wait - _EPSILON))
        if self.mode == "precise":
            return [(b"retry-after", str(seconds).encode())], float(seconds)
        if self.mode == "precise-ms":
            ms = max(1, math.ceil(wait * 1000 - _EPSILON))
            return [(b"retry-after", str(seconds).encode()), (b"retry-after-ms", str(ms).encode())], ms / 1000
        at = math.ceil(wall_now + wait - _EPSILON)  # an HTTP-date names a whole second
        return [(b"retry-after", formatdate(at, usegmt=True).encode())], at - wall_now


class RetryAfterWatch:
    """Counts requests that come back before a 429 said they may.

    Definition. When the server answers a request of key K with 429 at time s (simulator clock)
    and its headers advertise a wait w (``Retry-After`` seconds; an HTTP-date minus the wall
    clock at s; or ``retry-after-ms`` when sent, the most precise), K may come back at
    u = s + w. A later API request of K (a create or a poll; file downloads go to another host
    and do not count) that arrives at time a is a *violation* when s + grace < a < u for some
    such 429. Requests arriving at or before s + grace were already on the wire when the 429
    was sent and are not counted: in-process the app is called when a request is sent, so
    grace 0 is exact; over sockets a request sent just before the client read the 429 reaches
    the app a moment later, which ``grace`` (SimConfig.violation_grace) allows for. A request
    counts once however many windows it falls in; a 429 without a header advertises nothing.
    """

    def __init__(self) -> None:
        self._windows: dict[str, list[tuple[float, float]]] = {}
        self.by_key: Counter[str] = Counter()
        self.by_kind: Counter[str] = Counter()
        self.log: list[dict[str, float | str]] = []

    def arrived(self, key: str, label: str, kind: str, at: float, grace: float) -> None:
        windows = self._windows.get(key)
        if not windows:
            return
        windows[:] = [(s, u) for s, u in windows if u > at]
        hits = [(s, u) for s, u in windows if s + grace < at]
        if not hits:
            return
        sent, until = max(hits, key=lambda w: w[1])
        self.by_key[label] += 1
        self.by_kind[kind] += 1
        if len(self.log) < VIOLATION_LOG_MAX:
            early, after = round(until - at, 6), round(at - sent, 6)
            self.log.append({"t": round(at, 6), "key": label, "kind": kind, "early_by": early, "after_429": after})

    def refused(self, key: str, sent: float, advertised: float | None) -> None:
        if advertised is None:
            return
        windows = self._windows.setdefault(key, [])
        until = sent + advertised
        if not any(s <= sent and u >= until for s, u in windows):  # else an earlier window covers it
            windows.append((sent, until))


class LimitHistory:
    """When each limit setting came into force, so the stats can say what held when."""

    def __init__(self, settings: LimitSettings, now: float) -> None:
        self._changes: list[tuple[float, LimitSettings]] = [(now, settings)]

    def note(self, settings: LimitSettings, now: float) -> None:
        if settings != self._changes[-1][1]:
            self._changes.append((now, settings))

    def timeline(self, now: float) -> dict[str, list[list[float | int | None]]]:
        """Per limit, ``[from, value...]`` rows up to ``now``: create_rate and request_rate rows
        are [from, rate, burst] (rate None: unlimited), max_running rows [from, cap]."""
        out: dict[str, list[list[float | int | None]]] = {"create_rate": [], "request_rate": [], "max_running": []}
        for i, (since, settings) in enumerate(self._changes):
            # A step that starts exactly now is in force; one that starts as new settings arrive is not.
            until = self._changes[i + 1][0] if i + 1 < len(self._changes) else now + _EPSILON
            rows: dict[str, list[list[float | int | None]]] = {
                "create_rate": _rate_rows(settings.create_rate, settings.create_burst, since, until),
                "request_rate": _rate_rows(settings.request_rate, settings.request_burst, since, until),
                "max_running": [[round(since, 6), settings.max_running]],
            }
            for name, new in rows.items():
                for row in new:
                    if not out[name] or out[name][-1][1:] != row[1:]:
                        out[name].append(row)
        return out


def _rate_rows(
    spec: float | str | None, burst: int | None, since: float, until: float
) -> list[list[float | int | None]]:
    if spec is None:
        return [[round(since, 6), None, None]]
    rows: list[list[float | int | None]] = []
    for a, _, rate in RateSchedule.parse(spec).segments(since, max(until, since + _EPSILON)):
        rows.append([round(a, 6), rate, burst if burst is not None else default_burst(rate)])
    return rows
