"""The controller's face: when each request may go, and what became of it."""

from __future__ import annotations

import contextlib
import copy
import math
from collections import deque

from .cap import RunningLimit
from .fit import BucketFit
from .rate import EPS_MAX, EPS_MIN, RateControl
from .send import Clock, Kind, Result, Send

MAX_PAUSE = 60.0  # longest pause of our own choosing (no Retry-After)
RTT_SAMPLES = 64  # recent round trips the uncertainty is estimated from


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
        self.left = 0  # of those, creates whose bytes left (``leaving``)
        self.streak = 0  # 429s since the last accepted request
        self._unfed: deque[Send] = deque()  # counted requests, in the order they left, not yet given to the fit
        self._recent: deque[float] = deque()  # when counted requests left, lately
        self._rtts: deque[float] = deque(maxlen=RTT_SAMPLES)  # round trips of creates, lately
        self._answers = 0
        self.leave_next = -math.inf  # when the next counted request's bytes may leave, on the pace's schedule
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
        credited = counted and self.credit >= 1
        if credited:
            self.credit -= 1
        elif counted:
            self.next_slot = _on_schedule(self.next_slot, now, self.rate.slack()) + 1 / self.rate.pace
        if counted:
            self._recent.append(now)
        send = Send(kind, now, self.in_flight, counted, self.rate.pace, credited=credited)
        if kind is Kind.CREATE:
            self.wire += 1
            self.limit.sent(send)
        if counted:
            self._unfed.append(send)
        return send

    def hold(self, send: Send) -> float:
        """Seconds a request that has its slot must still wait before its bytes leave: a pause
        that began meanwhile, or the pace's spacing from the last counted request that left
        (a delay all requests share, a commit or a busy moment, must not bunch what the pace
        spaced: a small bucket refuses requests that arrive closer than its refill). The
        spacing keeps to the pace's schedule within ``RateControl.slack``."""
        now = self.clock()
        wait = self.pause_until - now
        if send.counted and not send.credited:
            wait = max(wait, self.leave_next - now)
        return max(0.0, wait)

    def paused(self) -> bool:
        """A 429's pause is on: nothing may be sent."""
        return self.pause_until > self.clock()

    def leaving(self, send: Send) -> None:
        """The request's bytes leave now (after ``hold`` said 0): what the fit learns from its
        answer is about this moment, not the one it got its slot."""
        now = self.clock()
        send.at, send.left = now, True
        if send.counted:
            behind = 0.0 if send.credited else self.rate.slack()  # (the credited go at once; the next is spaced)
            self.leave_next = _on_schedule(self.leave_next, now, behind) + 1 / self.rate.pace
            # The fit reads answers in the order their requests left: one that got its slot
            # earlier but left later is fed after those that left before it.
            if self._unfed and self._unfed[-1] is not send:
                with contextlib.suppress(ValueError):  # (always there: it was put there when sent)
                    self._unfed.remove(send)
                    self._unfed.append(send)
        if send.kind is Kind.CREATE:
            # What the server may count when it arrives: the slot was given earlier, and runs
            # created meanwhile (answers to creates that left before it) count too.
            send.in_flight = self.running + self.left
            self.left += 1

    def _off_wire(self, send: Send) -> None:
        self.wire -= 1
        if send.left:
            self.left -= 1

    def _round_trip(self, send: Send) -> None:
        """A create was answered: its round trip tells how much arrival times may wander."""
        self._rtts.append(self.clock() - send.at)
        self._answers += 1
        if self._answers % 8 == 0 or self._answers < 8:
            ordered = sorted(self._rtts)
            spread = ordered[int(0.9 * (len(ordered) - 1))] - ordered[0]
            self.rate.eps = min(EPS_MAX, max(EPS_MIN, spread / 2))

    def accepted(self, send: Send) -> None:
        send.result = Result.ACCEPTED
        self.streak = 0
        if send.kind is Kind.CREATE:
            self._round_trip(send)
            self._off_wire(send)
            self.running += 1
            self.limit.accepted(send)
            if self.limit.suspect is None:
                self._before_suspect = None
        self._feed()

    def lost(self, send: Send) -> None:
        """No answer that tells anything (a transient failure): the request only leaves the wire."""
        send.result = Result.LOST
        if send.kind is Kind.CREATE:
            self._off_wire(send)
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
            self._round_trip(send)
            self._off_wire(send)
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
        """Give the rate fit every answered counted request, in the order they left."""
        now = self.clock()
        while self._unfed and self._unfed[0].result is not None:
            send = self._unfed.popleft()
            if send.result is Result.ACCEPTED:
                self.rate.accepted(send)
            elif send.result is Result.REFUSED:
                self.rate.refused(send, now, self.pause_until - now, repeat=send.repeat)
        self.rate.settle(now)


def _on_schedule(due: float, now: float, slack: float) -> float:
    """When a request due at ``due`` and sent ``now`` counts as sent: at ``due`` if it is at most
    ``slack`` late (the schedule holds, and the next one catches up), else now (the sender was
    idle or held up: the schedule starts again, never a burst to make up for lost time)."""
    return due if now - slack <= due <= now else now
