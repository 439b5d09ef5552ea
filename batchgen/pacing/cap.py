"""A cap on runs in flight, recognised by its signature and then held."""

from __future__ import annotations

import math
from collections import deque

from .rate import TIME_BUDGET
from .send import Result, Send

CAP_EVIDENCE = 2  # climbs refused at a level before it is taken for a cap
CAP_QUIET = 5.0  # seconds between probes above the cap, at least
CAP_PROBE_EVERY = 50  # creates accepted under the cap before probing above it


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
            # Below cap - 1, or below two (the least cap held), no cap explains it: the rate's.
            if n < self.cap - 1 or n < 2:
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
