"""How fast to send, against limits the account does not publish: a pure controller.

The server may refuse (429) for three reasons, and says little more than when to come back:
a token bucket of unknown rate R and size B (refilled at R, one token per request, maybe
shared by polls and by other work on the same key, maybe changing during the night); a cap
on runs not yet finished; and Retry-After, exact, whole seconds, fixed or absent. Every 429
costs the whole batch a pause, so the controller must learn from very few of them.

Ideas taken, and why:

* **A model of the path, fitted to what got through** (BBR, Cardwell et al. 2016: pace at
  the delivery rate measured while the bottleneck is saturated, not at what was sent).
  ``BucketFit`` keeps every (R, B) that agrees with every answer since the last reset. For a
  rate R, ``V(t) = R·(t − t0) − accepted`` is what an uncapped bucket would hold; a request
  accepted at a drawdown D from V's running peak proves B ≥ 1 + D, one refused proves
  B < 1 + D. A rate whose interval of sizes empties is ruled out. The lowest surviving rate
  is the sustainable create rate with refusals in the window: it is what a saturated window
  says, with the burst and the pauses accounted for, so a burst that let 2R through in the
  first second is not mistaken for the rate (the issue with a window before the first 429).
* **Slow start, then back off only as far as the evidence says** (TCP, BBR Startup): the
  pace doubles every 0.1 s of being the bottleneck (and at least every two answers) until
  the first 429; then it holds at 85 % of the fit's upper bound until the lower one
  catches up, and moves inside [lo, hi], bisecting (Netflix concurrency-limits' Gradient2
  smooths towards an estimate rather than halving) when a 429 is cheap and creeping up
  when it is dear, never above a pace already refused unless the fit proves more. A 429
  that no bucket explains any more means the limit fell: the fit starts over from that
  429, and the pace drops by BETA (the multiplicative decrease of AIMD/CUBIC) only when
  nothing better is known.
* **Probe upward after quiet periods, fast once clear of the old limit** (CUBIC's
  max-probing: slow near the last known maximum, then ever faster): after QUIET seconds
  without a 429 the pace rises above the fit's upper bound as exp(a·t²). Answers beyond
  every surviving bucket mean the limit rose and the ramp continues. The quiet period is
  set by two budgets: a 429 whose pause the bucket does not refill costs the batch that
  pause, so probes come at most every cost / TIME_BUDGET seconds (50 s with whole-second
  Retry-After and a small bucket); and at most one create in 1 / REFUSAL_BUDGET is a
  failed probe (10 s at 10/s, 2 s at 50/s and above).
* **Don't grow when something else limits** (concurrency-limits' AIMD and Vegas only raise
  the limit while in-flight is near it): the pace grows only while requests wait for it.
* **A cap on running runs** is recognised by its signature (429s at one in-flight level,
  again after runs finished and the count climbed back, rarely anything accepted at or
  above it) and then held: creates go only below it, with a rare probe one above.
  Refusals at the cap do not teach the rate fit.
* **Retry-After is honoured for every request** (Scrapy's AutoThrottle and the shared
  pause: it only ever moves later); without it the pause is one slot at the current pace,
  doubling while 429s keep coming (the SRE book's client-side throttling: do not send what
  the server is known to refuse). When a pause ends, what the fitted bucket surely refilled
  meanwhile is sent at once, so a big bucket makes a 429 almost free.
* A user's rate is a ceiling: the pace starts there and never exceeds it, and 429s still
  slow it.

The controller is pure: it reads an injected clock and does no I/O. ``Pacer`` is its face:
``delay(kind)`` says how long a request must wait, ``send(kind)`` records one leaving, and
``accepted`` / ``refused`` / ``lost`` / ``run_ended`` report what became of it.
"""

from __future__ import annotations

import copy
import enum
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

Clock = Callable[[], float]

START_PACE = 4.0  # requests per second before anything is known
STARTUP_DOUBLING = 0.1  # seconds per doubling while the pace is the bottleneck (and ≥ 2 answers)
MARGIN = 0.01  # pace this far under the lowest rate the fit allows
BETA = 0.7  # multiplicative decrease when a 429 comes and the fit bounds nothing yet
FIRST_FLOOR, LATER_FLOOR = 0.85, 0.5  # share of the fit's bound kept while its lower end is vague
KAPPA_DEAR, KAPPA_CHEAP = 0.3, 0.5  # how far into [lo, hi] to pace: log-share, dear vs cheap 429s
HORIZON = 30.0  # seconds of sending a choice of pace is assumed to affect
QUIET_MIN = 2.0  # seconds without a 429 before probing upward, at least
TIME_BUDGET = 0.02  # share of time that failed probes may cost
REFUSAL_BUDGET = 0.01  # share of requests that failed probes may cost
PROBE_GROWTH = 0.077  # probe pace = bound · exp(a·t²): ×1.08 after 1 s, ×2 after 3 s
CAP_EVIDENCE = 2  # climbs refused at a level before it is taken for a cap
CAP_QUIET = 5.0  # seconds between probes above the cap, at least
CAP_PROBE_EVERY = 50  # creates accepted under the cap before probing above it
MAX_PAUSE = 60.0  # longest pause of our own choosing (no Retry-After)

GRID_RATIO = 1.015  # candidate rates, 1.5 % apart, 0.05/s to 5000/s
GRID = [0.05 * GRID_RATIO**i for i in range(int(math.log(1e5) / math.log(GRID_RATIO)) + 1)]
SPREAD = (GRID_RATIO - 1) / 2  # a candidate stands for the rates this share either side


class Kind(enum.Enum):
    CREATE = "create"
    POLL = "poll"


class Result(enum.Enum):
    ACCEPTED = "accepted"
    REFUSED = "refused"  # by the rate
    CAPPED = "capped"  # by the cap on running runs
    LOST = "lost"  # no answer that tells anything (a transient failure)


@dataclass(eq=False)
class Send:
    """One request that left: what the controller knew when it did, and what became of it."""

    kind: Kind
    at: float
    in_flight: int  # runs created and not known finished, plus creates on the wire, before this one
    counted: bool  # it took a place in the pace
    pace: float
    result: Result | None = None
    probe: bool = False  # a create above the cap on running runs
    repeat: bool = False  # a 429 at a suspected cap again before any run finished


class BucketFit:
    """The token buckets (rate R, size B) that agree with every answer since the epoch began.

    An epoch begins at the batch's start (the bucket full) or at a 429 (the bucket empty);
    each later 429 ends a cycle and starts the next from empty. Rates are the candidates of
    GRID; each keeps its interval [b_lo, b_hi) of sizes and its running peak of V.
    """

    def __init__(self, start: float, *, full: bool):
        self.full = full
        self.alive = list(range(len(GRID)))
        self.b_lo = [1.0] * len(GRID)
        self.b_hi = [math.inf] * len(GRID)
        self.peak = [0.0] * len(GRID)
        self.peak_at = [start] * len(GRID)
        self.t0 = start
        self.count = 0  # accepted since t0
        self.refusals = 0

    def accept(self, t: float) -> None:
        tau, count, full = t - self.t0, self.count, self.full
        keep = []
        for i in self.alive:
            r = GRID[i]
            v = r * tau - count
            if not full and v < -r * SPREAD * tau:
                continue  # from an empty bucket, this rate could not have earned the token
            if v > self.peak[i]:
                self.peak[i], self.peak_at[i] = v, t
            need = 1 + self.peak[i] - v - r * SPREAD * (t - self.peak_at[i])
            if need > self.b_lo[i]:
                self.b_lo[i] = need
                if need >= self.b_hi[i]:
                    continue
            keep.append(i)
        self.alive = keep
        self.count += 1

    def refuse(self, t: float) -> None:
        tau, count, full = t - self.t0, self.count, self.full
        keep = []
        for i in self.alive:
            r = GRID[i]
            v = r * tau - count
            if v > self.peak[i]:
                self.peak[i], self.peak_at[i] = v, t
            if full or v >= 1 + r * SPREAD * tau:  # (else the bucket may simply not have refilled)
                limit = 1 + self.peak[i] - v + r * SPREAD * (t - self.peak_at[i])
                if limit < self.b_hi[i]:
                    self.b_hi[i] = limit
                    if limit <= self.b_lo[i]:
                        continue
            keep.append(i)
            self.peak[i], self.peak_at[i] = 0.0, t
        self.alive = keep
        self.t0, self.count, self.full = t, 0, False
        self.refusals += 1

    def bounds(self) -> tuple[float, float] | None:
        """(lowest, highest) rate still possible; None when no bucket fits."""
        return (GRID[self.alive[0]], GRID[self.alive[-1]]) if self.alive else None

    def burst_at(self, rate: float) -> float:
        """The smallest bucket size possible at the first surviving rate from ``rate`` up."""
        for i in self.alive:
            if GRID[i] >= rate:
                return self.b_lo[i]
        return 1.0


class RateControl:
    """The pace of requests that count against the rate limit."""

    def __init__(self, now: float, ceiling: float | None):
        self.ceiling = ceiling
        self.pace = ceiling if ceiling is not None else START_PACE
        self.fit: BucketFit | None = BucketFit(now, full=True)
        self.bounds: tuple[float, float] | None = None  # the fit's range, once it bounds the rate
        self.startup = ceiling is None
        self.growing = True  # no upper bound known: ramp (startup) or probe
        self.grow_base, self.grow_time = self.pace, 0.0
        self.last_update = now
        self.waited_at = -math.inf  # when a request last waited for the pace
        self.bound = False  # the pace is what limits sending
        self.reacted_at = -math.inf  # 429s of requests sent before this belong to the last episode
        self.quiet_since = now
        self.last_pause = 1.0
        self.cost = 1.0  # seconds of sending one more 429 is expected to cost
        self.floor = 0.0
        self.refused_at = math.inf  # the lowest pace refused since the limit last moved
        self.history: deque[tuple[float, str, float, tuple[float, float] | None]] = deque(maxlen=200)

    def _set(self, pace: float) -> None:
        self.pace = max(0.01, min(pace, self.ceiling) if self.ceiling is not None else pace)

    def tick(self, now: float, sending: float) -> None:
        """Time passed: grow the pace if it is what limits sending (``sending``: recent rate)."""
        dt = min(max(0.0, now - self.last_update), 2 / self.pace)
        self.last_update = now
        window = max(0.5, 4 / self.pace)
        self.bound = now - self.waited_at < window and sending >= 0.5 * self.pace
        if not self.bound or self.startup:  # (startup grows with each answer, see accepted)
            return
        if self.growing:
            self.grow_time += dt
            self._set(self.grow_base * math.exp(PROBE_GROWTH * self.grow_time**2))
        elif self.bounds is not None and now - self.quiet_since >= self.quiet_period():
            self.grow_time += dt
            probe = self.bounds[1] * min(2.0, math.exp(PROBE_GROWTH * self.grow_time**2))
            self._set(max(self.pace, probe))

    def quiet_period(self) -> float:
        return max(QUIET_MIN, self.cost / TIME_BUDGET, 1 / (REFUSAL_BUDGET * self.pace))

    def credit(self, pause: float) -> float:
        """Requests the bucket surely holds after a pause this long (the fit's smallest bucket,
        refilled at its lowest rate), less one: they may go at once when the pause ends."""
        if self.fit is None or self.bounds is None:
            return 0.0
        lo = self.bounds[0]
        return max(0.0, min(self.fit.burst_at(lo), lo * pause) - 1)

    def settle(self, now: float) -> None:
        """Choose the pace inside what the fit allows."""
        bounds = self.fit.bounds() if self.fit is not None else None
        if self.fit is None or bounds is None:
            return
        lo, hi = bounds
        if self.fit.refusals == 0 or hi >= GRID[-1] / 2:  # nothing bounds the rate from above
            self.bounds = None
            if not self.growing:
                self.growing, self.grow_base, self.grow_time = True, self.pace, 0.0
            return
        self.bounds = bounds
        self.growing = self.startup = False
        # One more 429 costs its pause, less what the bucket refills meanwhile (sent when the
        # pause ends); count at least a quarter of the pause.
        self.cost = max(0.25 * self.last_pause, self.last_pause - self.fit.burst_at(lo) / lo)
        spread = hi / lo
        if spread <= 1 + 4 * MARGIN:
            target = lo
        else:  # a cheap 429 buys a bisection; a dear one only a cautious step
            kappa = min(KAPPA_CHEAP, max(KAPPA_DEAR, KAPPA_CHEAP * (spread - 1) * HORIZON / (4 * max(self.cost, 1e-3))))
            target = lo * spread**kappa
        if lo < 0.95 * self.floor * hi:  # the fit's lower end is still vague: hold at a share of its bound
            target = self.floor * hi
        target = min(target, hi, max(lo, self.refused_at)) * (1 - MARGIN)
        if now - self.quiet_since < self.quiet_period() or target > self.pace:
            self._set(target)

    def accepted(self, send: Send) -> None:
        if self.startup and self.bound and send.pace >= self.pace * 0.99:
            self._set(self.pace * 2 ** (1 / max(2.0, self.pace * STARTUP_DOUBLING)))
        if self.fit is None:
            return
        self.fit.accept(send.at)
        if self.fit.bounds() is None:  # more got through than any bucket allowed: the limit rose
            self.history.append((send.at, "limit rose", self.pace, self.bounds))
            self.fit, self.bounds, self.refused_at = None, None, math.inf
            self.growing, self.grow_base, self.grow_time = True, self.pace, 0.0

    def refused(self, send: Send, now: float, pause: float, *, repeat: bool = False) -> None:
        new_episode = send.at >= self.reacted_at and not repeat
        if self.fit is None:
            self.fit = BucketFit(send.at, full=False)
        else:
            self.fit.refuse(send.at)
            if self.fit.bounds() is None:  # no bucket explains it: the limit fell (or is no bucket)
                self.history.append((send.at, "limit fell", self.pace, self.bounds))
                self.fit, self.refused_at = BucketFit(send.at, full=False), math.inf
                if self.bounds is not None:
                    self._set(min(self.pace, self.bounds[1]))
        if not new_episode:
            self.settle(now)
            return
        self.reacted_at, self.last_pause = now, pause
        self.refused_at = min(self.refused_at, send.pace)
        self.floor = FIRST_FLOOR if self.floor == 0.0 else LATER_FLOOR
        self.startup, self.grow_time = False, 0.0
        self.settle(now)
        if self.growing:  # nothing bounds the rate yet: back off and probe up from there
            self._set(min(self.pace, BETA * send.pace))
            self.grow_base = self.pace
        self.history.append((send.at, "429", self.pace, self.bounds))


class RunningLimit:
    """A cap on runs in flight: 429s that come when the in-flight count is at a level and stop
    when runs finish. A 429 at the highest level accepted lately makes that level a suspect; it
    becomes the cap when the count climbs back to it after runs finished and is refused again,
    with little accepted at or above it meanwhile. Our count can only overstate the server's
    (a run may have finished before its poll), so the cap is never set above a refused level.
    """

    WINDOW = 10.0  # seconds of accepted levels remembered

    def __init__(self) -> None:
        self.cap: int | None = None
        self.slots: int | None = None  # our own limit on runs in flight: a cap at or above it is moot
        self.suspect: int | None = None
        self.refused_hi = self.accepted_hi = 0  # since the suspect: at or above its level
        self.after = -math.inf  # a refusal counts once the last one's pause is over
        self.ended = False  # a run finished since the last counted refusal
        self.levels: deque[tuple[float, int]] = deque()
        self.accepted_under = 0  # accepted while held under the cap, since the last probe
        self.probing = False
        self.quiet_until = -math.inf
        self.trial_until = -math.inf  # a rate 429 well below a new cap before this drops it
        self.repeat = False  # the last 429 came at the suspect level again before any run finished

    def top(self, now: float) -> int:
        while self.levels and self.levels[0][0] < now - self.WINDOW:
            self.levels.popleft()
        return max((n for _, n in self.levels), default=-1)

    def allows(self, in_flight: int, now: float, pausing: bool) -> bool:
        if self.cap is None or in_flight < self.cap:
            return True
        return (  # a probe one above the cap, now and then
            in_flight == self.cap
            and not (pausing or self.probing)
            and self.accepted_under >= CAP_PROBE_EVERY
            and now >= self.quiet_until
        )

    def sent(self, send: Send) -> None:
        if self.cap is not None and send.in_flight >= self.cap:
            self.probing = send.probe = True

    def refused(self, send: Send, pause_end: float, pause: float) -> Result:
        n = send.in_flight
        self.probing = self.probing and not send.probe
        self.repeat = False
        if self.cap is not None:
            if n < self.cap - 1:
                if send.at < self.trial_until:  # the cap was the rate's doing after all
                    self.cap = None
                return Result.REFUSED
            self.quiet_until = max(self.quiet_until, pause_end + max(CAP_QUIET, pause / TIME_BUDGET))
            self.cap = max(2, min(self.cap, n))
            self.accepted_under = 0
            return Result.CAPPED
        if self.suspect is not None and n >= self.suspect:
            self.repeat = not self.ended  # the same climb as the last one: no news about the rate
            if send.at >= self.after and self.ended and self.suspect >= 2:
                self.refused_hi += 1
                self.after, self.ended = pause_end, False
                if self.refused_hi >= CAP_EVIDENCE and 2 * self.accepted_hi <= self.refused_hi:
                    self.cap, self.suspect, self.accepted_under = self.suspect, None, 0
                    self.trial_until = pause_end + max(CAP_QUIET, 3 * pause)
                    return Result.CAPPED
            return Result.REFUSED
        if n < self.top(send.at) - n // 10:
            return Result.REFUSED  # more were running a moment ago and got through
        if self.slots is not None and n >= self.slots - 1:
            return Result.REFUSED  # our own slots hold the count here: no sign of the server's cap
        self.suspect, self.refused_hi, self.accepted_hi = n, 1, 0
        self.after, self.ended = pause_end, False
        return Result.REFUSED

    def accepted(self, send: Send) -> None:
        n = send.in_flight
        self.levels.append((send.at, n))
        self.probing = self.probing and not send.probe
        if self.cap is not None:
            if send.probe:
                self.cap = n + 1
            self.accepted_under = 0 if send.probe else self.accepted_under + 1
            return
        if self.suspect is not None and n >= self.suspect:
            if n >= self.suspect + 1 + self.suspect // 10:
                self.suspect = None  # clearly more were running, and it got through
            elif send.at >= self.after:
                self.accepted_hi += 1
                if self.accepted_hi >= 3 * self.refused_hi + 2:
                    self.suspect = None

    def lost(self, send: Send) -> None:
        self.probing = self.probing and not send.probe


class Pacer:
    """The controller's face: when each request may go, and what became of it."""

    def __init__(self, *, clock: Clock, ceiling: float | None = None, backoff_base: float = 0.5):
        self.clock = clock
        self.ceiling = ceiling
        self.backoff_base = backoff_base
        self.rate = RateControl(clock(), ceiling)
        self.limit = RunningLimit()
        self.polls_counted = False  # polls take from the create limit (a poll got a 429)
        self.pause_until = -math.inf
        self.next_slot = -math.inf
        self.credit = 0.0  # requests that may go at once when the pause ends
        self.running = 0  # runs created and not known finished
        self.wire = 0  # creates sent and not answered
        self.streak = 0  # 429s since the last accepted request
        self._unfed: deque[Send] = deque()  # counted requests, in the order sent, not yet given to the fit
        self._recent: deque[float] = deque()  # when counted requests left, lately
        self._before_suspect: RateControl | None = None

    @property
    def pace(self) -> float:
        return self.rate.pace

    @property
    def running_limit(self) -> int | None:
        return self.limit.cap

    @property
    def in_flight(self) -> int:
        return self.running + self.wire

    def counted(self, kind: Kind) -> bool:
        return kind is Kind.CREATE or self.polls_counted

    def delay(self, kind: Kind) -> float:
        """Seconds before a request of this kind may go (inf: until a run finishes)."""
        now = self.clock()
        window = max(0.5, 4 / self.rate.pace)
        while self._recent and self._recent[0] < now - window:
            self._recent.popleft()
        self.rate.tick(now, len(self._recent) / window)
        pause = self.pause_until - now
        if kind is Kind.CREATE and not self.limit.allows(self.in_flight, now, pause > 0):
            return pause if pause > 0 else math.inf
        wait = pause
        if self.counted(kind) and self.credit < 1:
            slot = self.next_slot - now
            if slot > 0 and slot >= wait:
                self.rate.waited_at = now
            wait = max(wait, slot)
        return max(0.0, wait)

    def send(self, kind: Kind) -> Send:
        """A request leaves now (after ``delay`` said 0)."""
        now = self.clock()
        counted = self.counted(kind)
        if counted:
            if self.credit >= 1:
                self.credit -= 1
            else:
                self.next_slot = max(now, self.next_slot) + 1 / self.rate.pace
            self._recent.append(now)
        send = Send(kind, now, self.in_flight, counted, self.rate.pace)
        if kind is Kind.CREATE:
            self.wire += 1
            self.limit.sent(send)
        if counted:
            self._unfed.append(send)
        return send

    def accepted(self, send: Send) -> None:
        send.result = Result.ACCEPTED
        self.streak = 0
        if send.kind is Kind.CREATE:
            self.wire -= 1
            self.running += 1
            self.limit.accepted(send)
            if self.limit.suspect is None:
                self._before_suspect = None
        self._feed()

    def lost(self, send: Send) -> None:
        """No answer that tells anything (a transient failure): the request only leaves the wire."""
        send.result = Result.LOST
        if send.kind is Kind.CREATE:
            self.wire -= 1
            self.limit.lost(send)
        self._feed()

    def refused(self, send: Send, retry_after: float | None) -> float:
        """A 429; returns how long every request now waits."""
        now = self.clock()
        self.streak += 1
        if retry_after is not None:
            pause = retry_after
        else:  # one slot at the current pace, doubling while 429s keep coming
            base = min(self.backoff_base, 1 / self.rate.pace)
            pause = min(MAX_PAUSE, base * 2 ** min(self.streak - 1, 12))
        self.pause_until = max(self.pause_until, now + pause)
        self.rate.quiet_since = max(self.rate.quiet_since, self.pause_until)
        if send.kind is Kind.CREATE:
            self.wire -= 1
            suspected = self.limit.suspect is not None
            send.result = self.limit.refused(send, self.pause_until, pause)
            send.repeat = self.limit.repeat
            if send.result is Result.CAPPED and self._before_suspect is not None:
                # The 429s taken for the rate's were the cap's: forget what the fit learnt from them.
                self.rate = self._before_suspect
                self.rate.fit, self.rate.bounds = None, None
                self.rate.growing, self.rate.grow_base, self.rate.grow_time = True, self.rate.pace, 0.0
                self.rate.history.append((send.at, f"cap {self.limit.cap}", self.rate.pace, None))
            if self.limit.suspect is None:
                self._before_suspect = None
            elif not suspected:
                self._before_suspect = copy.deepcopy(self.rate)
        else:
            send.result = Result.REFUSED
            if not self.polls_counted:  # polls share the limit: pace them too, and fit afresh
                self.polls_counted = True
                self.rate.fit = BucketFit(send.at, full=False)
        self._feed()
        self.next_slot = max(self.next_slot, self.pause_until)
        self.credit = self.rate.credit(self.pause_until - send.at) if send.result is Result.REFUSED else 0.0
        return self.pause_until - now

    def run_started(self) -> None:
        """A run created by an earlier session is being collected: it counts as in flight."""
        self.running += 1

    def run_ended(self) -> None:
        """A run is known finished (or given up on)."""
        self.running = max(0, self.running - 1)
        self.limit.ended = True

    def _feed(self) -> None:
        """Give the rate fit every answered counted request, in the order they were sent."""
        now = self.clock()
        while self._unfed and self._unfed[0].result is not None:
            send = self._unfed.popleft()
            if send.result is Result.ACCEPTED:
                self.rate.accepted(send)
            elif send.result is Result.REFUSED:
                self.rate.refused(send, now, self.pause_until - now, repeat=send.repeat)
        self.rate.settle(now)
