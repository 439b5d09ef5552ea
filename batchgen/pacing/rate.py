"""The pace of requests that count against the rate limit, chosen inside what the fit allows."""

from __future__ import annotations

import math
from collections import deque

from .fit import GRID, SPREAD, BucketFit
from .send import Send

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
EPS_MIN, EPS_MAX = 0.0, 0.05  # bounds of the arrival-time uncertainty the fit allows for, seconds
COLLAPSE = 4.0  # a 429 that leaves the fit's top this many times under the pace it was sent at restarts it
# Accepts no bucket explains, not believed one by one, at this many moments at least DISBELIEF_GAP
# apart within DISBELIEF_WINDOW seconds: no one stall explains them all, the fit itself is wrong.
DISBELIEF, DISBELIEF_GAP, DISBELIEF_WINDOW = 3, 0.25, 5.0


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
        self.eps = EPS_MIN  # how far a request's arrival may be from when it left, less the constant delay
        self.history: deque[tuple[float, str, float, tuple[float, float] | None]] = deque(maxlen=200)
        self.disbelieved: deque[float] = deque(maxlen=DISBELIEF)  # moments accepts were not believed, lately

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

    def slack(self) -> float:
        """Seconds sending may fall behind the pace's schedule and still catch up: the next
        request then leaves sooner than 1/pace after the last. Waking from a sleep is late by a
        millisecond or more, and a schedule that restarts from each late send loses that every
        time (2 ms in 20 ms is a tenth of the rate: measured, 44/s sent at a pace of 49/s). Up to
        one interval, as far as the fit says every bucket it allows takes the closer gap; before
        any 429, only at a rate given (--rate), which is followed to the letter."""
        interval = 1 / self.pace
        if self.fit is None:
            return 0.0
        if self.fit.refusals == 0:
            return interval if self.ceiling is not None and self.pace >= self.ceiling else 0.0
        return max(0.0, interval - self.fit.closest(self.pace, self.eps))

    def credit(self, pause: float) -> float:
        """Requests the bucket surely holds after a pause this long, less one: they may go at
        once when the pause ends."""
        if self.fit is None or self.bounds is None:
            return 0.0
        return max(0.0, self.fit.held(pause) - 1)

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
        self.cost = max(0.25 * self.last_pause, self.last_pause - self.fit.held(self.last_pause) / lo)
        spread = hi / lo
        if spread <= 1 + 4 * MARGIN:
            target = lo
        else:  # a cheap 429 buys a bisection; a dear one only a cautious step
            kappa = min(KAPPA_CHEAP, max(KAPPA_DEAR, KAPPA_CHEAP * (spread - 1) * HORIZON / (4 * max(self.cost, 1e-3))))
            target = lo * spread**kappa
        if lo < 0.95 * self.floor * hi:  # the fit's lower end is still vague: hold at a share of its bound
            target = self.floor * hi
        target = self.fit.tolerable(target, self.eps)
        target = min(target, hi, max(lo, self.refused_at)) * (1 - MARGIN)
        if now - self.quiet_since < self.quiet_period() or target > self.pace:
            self._set(target)

    def accepted(self, send: Send) -> None:
        if self.startup and self.bound and send.pace >= self.pace * 0.99:
            self._set(self.pace * 2 ** (1 / max(2.0, self.pace * STARTUP_DOUBLING)))
        if self.fit is None:
            return
        bounds = self.fit.bounds()
        rise = bounds is None or send.pace > bounds[1] * (1 + SPREAD)
        if not self.fit.accept(send.at, self.eps, rise=rise):
            if not self.disbelieved or send.at - self.disbelieved[-1] >= DISBELIEF_GAP:
                self.disbelieved.append(send.at)
            if len(self.disbelieved) < DISBELIEF or send.at - self.disbelieved[0] > DISBELIEF_WINDOW:
                self.history.append((send.at, "not believed", self.pace, self.bounds))
                return
            # Again and again: the fit itself is wrong (a 429 it learnt from was mistimed).
            self.history.append((send.at, "fit wrong", self.pace, self.bounds))
            self.fit = None
        if self.fit is None or self.fit.bounds() is None:  # more got through than any bucket allowed
            self.history.append((send.at, "limit rose", self.pace, self.bounds))
            self.disbelieved.clear()
            self.fit, self.bounds, self.refused_at = None, None, math.inf
            self.growing, self.grow_base, self.grow_time = True, self.pace, 0.0

    def refused(self, send: Send, now: float, pause: float, *, repeat: bool = False) -> None:
        new_episode = send.at >= self.reacted_at and not repeat
        if self.fit is None:
            self.fit = BucketFit(send.at, full=False)
        else:
            self.fit.refuse(send.at, self.eps)
            after = self.fit.bounds()
            # No bucket explains it: the limit fell (or is no bucket). Or one 429 says the rate is
            # a fraction of the pace it was sent at: more likely mistimed (a request that reached
            # the server sooner or later than it seemed) than a limit cut that deep. Start over.
            collapsed = (
                after is not None and self.bounds is not None and after[1] * COLLAPSE < send.pace <= self.bounds[1]
            )
            if after is None or collapsed:
                self.history.append((send.at, "collapsed" if collapsed else "limit fell", self.pace, self.bounds))
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
