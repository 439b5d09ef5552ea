"""The pacing controller against model servers in simulated time (tests/pacing_model.py): no
sockets, no sleeping; a ten-minute batch runs in well under a second.

The grid is issue 9's: rate ∈ {2, 10, 40, 150}/s × burst ∈ {1, R/4, R} × Retry-After ∈
{precise (whole seconds, as HTTP carries it), fixed 1 s, absent}; caps on running runs {4, 16}
with 64 slots; polls sharing the limit; a limit halved for a while and restored. N is chosen so
that T* is 30 s and the slots never bind unless they are the point. Each point is held to the
issue's targets; where the model shows a target out of reach, the point is an expected failure
that names the target and why (LIMITS), so a change that meets it is noticed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest

from batchgen.pacing import QUIET_MIN, REFUSAL_BUDGET, SPREAD, BucketFit, Kind, Pacer, Result, Send
from batchgen.pacing.fit import GRID, TOLERABLE_FLOOR
from batchgen.pacing.rate import BETA, DISBELIEF, DISBELIEF_GAP
from tests.pacing_model import Limits, convergence, paces, run_model, schedule_of

# Issue 9's targets.
MAX_RATIO = 1.10  # T / T*
MAX_REFUSED = 0.03  # share of creates answered 429
MAX_REFUSED_CAPPED = 0.05  # ... with a cap on running runs
MAX_SETTLE = 5.0  # seconds from the start, and from each change, until the pace stays within 10 %
T_STAR = 30.0


@dataclass(frozen=True)
class Point:
    name: str
    limits: Limits
    n: int
    latency: float
    concurrency: int


def grid() -> list[Point]:
    points = []
    for rate in (2, 10, 40, 150):
        latency = 1.0 if rate <= 40 else 0.4
        concurrency = max(16, math.ceil(rate * latency * 1.6))  # room for the pace, so slots never bind
        n = int(rate * (T_STAR - latency))
        for burst_name, burst in (("1", 1), ("R/4", max(1, round(rate / 4))), ("R", rate)):
            for retry_after in ("precise", "fixed", "none"):
                limits = Limits(rate=rate, burst=burst, retry_after=retry_after)
                points.append(Point(f"{rate}/s burst {burst_name} {retry_after}", limits, n, latency, concurrency))
    for cap in (4, 16):
        for retry_after in ("precise", "fixed", "none"):
            n = int(cap * (T_STAR - 1.0))
            points.append(Point(f"cap {cap} {retry_after}", Limits(cap=cap, retry_after=retry_after), n, 1.0, 64))
    for retry_after in ("precise", "none"):
        limits = Limits(rate=20, polls_count=True, retry_after=retry_after)
        points.append(Point(f"polls count, 20/s {retry_after}", limits, 300, 1.0, 64))
        halved = [(0.0, 30.0), (10.0, 15.0), (20.0, 30.0)]
        points.append(
            Point(f"30/s halved 10-20 s {retry_after}", Limits(rate=halved, retry_after=retry_after), 900, 1.0, 64)
        )
    return points


# Targets the model shows out of reach, and why. Keys are point names.
_SLOW = (
    "T/T* 1.10-1.13: every 429 stops every request for a whole second that a small bucket does not refill; "
    "the start-up ramp ends with one and bounding the rate from below takes one more: ~2 s of a 30 s batch"
)
_DIP = (
    "settles late: a probe for a higher limit (about every 12 s when the bucket refills most of a pause) "
    "ends in a whole-second pause, which takes the 5 s pace below 90 %"
)
LIMITS: dict[str, str] = {
    **{
        f"2/s burst {b} {ra}": "at 2/s a 30 s batch makes ~60 creates: the 429 that ends the start-up ramp and "
        "the two or three that bound the rate already pass 3 %"
        for b in ("1", "R/4", "R")
        for ra in ("precise", "fixed", "none")
    },
    **{
        f"{r}/s burst {b} {ra}": _SLOW
        for r, b in ((10, "1"), (10, "R/4"), (40, "1"), (40, "R/4"))
        for ra in ("precise", "fixed")
    },
    **{f"150/s burst {b} {ra}": _DIP for b in ("R/4", "R") for ra in ("precise", "fixed")},
    "polls count, 20/s precise": "T/T* 1.25: the first poll 429s find the polls sharing the limit only after "
    "the create fit was built without them; it starts over, each 429 a whole-second pause",
    "30/s halved 10-20 s precise": "with whole-second Retry-After a probe costs everyone a second, so probes "
    "come every ~50 s: the restored limit is found that late",
}


@pytest.mark.parametrize("point", grid(), ids=lambda p: p.name)
def test_grid_point_meets_the_targets(point: Point, request: pytest.FixtureRequest) -> None:
    """At every grid point: no request before a 429's advertised time, few creates answered 429,
    the batch within 10 % of the best possible time, the pace settled within 5 s of the start and
    of each change."""
    if point.name in LIMITS:
        request.applymarker(pytest.mark.xfail(strict=True, reason=LIMITS[point.name]))
    out = run_model(point.limits, n=point.n, latency=point.latency, concurrency=point.concurrency)
    assert out.violations == 0
    budget = MAX_REFUSED_CAPPED if point.limits.cap is not None else MAX_REFUSED
    assert out.refused_share <= budget, f"{out.refused_creates} of {out.create_requests} creates answered 429"
    assert out.ratio <= MAX_RATIO, f"T/T* = {out.ratio:.3f}"
    if point.limits.rate is not None:
        times = out.counted_at if point.limits.polls_count else out.accepted_at
        settle = convergence(times, schedule_of(point.limits.rate) or [], end=max(out.accepted_at))
        assert max(settle) <= MAX_SETTLE, f"settled after {settle} s"


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_no_request_of_any_kind_goes_before_a_retry_after():
    """After a 429 with Retry-After 5, creates and polls alike wait the 5 s, and a later 429
    with Retry-After 1 does not shorten it."""
    clock = FakeClock()
    pacer = Pacer(clock=clock)
    ticket = pacer.send(Kind.CREATE)
    assert pacer.refused(ticket, 5.0) == 5.0
    clock.now = 1.0
    poll = pacer.send(Kind.POLL)
    assert pacer.refused(poll, 1.0) == pytest.approx(4.0)
    for kind in Kind:
        assert pacer.delay(kind) == pytest.approx(4.0)
    clock.now = 4.999
    assert all(pacer.delay(kind) > 0 for kind in Kind)
    clock.now = 5.0
    assert pacer.delay(Kind.POLL) == 0


@pytest.mark.parametrize("retry_after", ["precise", "precise-ms", "fixed", "none"])
def test_retry_after_holds_with_requests_on_the_wire_and_jitter(retry_after):
    """Against a bucket of 20/s with a 3 s fixed or exact Retry-After and a jittery network,
    no request is sent before a 429's advertised time (only those already on the wire arrive early)."""
    limits = Limits(rate=20, burst=2, retry_after=retry_after, fixed_seconds=3.0)
    out = run_model(limits, n=400, latency=0.5, concurrency=32, jitter=0.004, seed=3)
    assert out.refused_creates > 0  # the limit was met
    assert out.violations == 0


def test_a_rate_given_is_a_ceiling_never_passed():
    """With --rate 20 and no limit at the server, no second sees more than 20 creates."""
    out = run_model(Limits(), n=400, latency=0.5, concurrency=64, ceiling=20)
    assert max(p for _, p in paces(out.accepted_at, 1.0, max(out.accepted_at))) <= 20 + 1
    assert out.finished_at <= 400 / 20 * MAX_RATIO + 0.5


def test_a_rate_given_above_the_limit_is_slowed_by_429s():
    """--rate 50 against a limit of 30/s: the 429s bring the pace down to the limit, not a 429 per slot."""
    limits = Limits(rate=30, burst=3, retry_after="none")
    out = run_model(limits, n=900, latency=1.0, concurrency=64, ceiling=50)
    assert out.refused_share <= MAX_REFUSED
    assert out.ratio <= MAX_RATIO


@pytest.mark.parametrize("burst", [1, 10, 40])
def test_the_fit_brackets_the_rate_and_is_not_fooled_by_the_burst(burst):
    """Against 40/s with a bucket of 1, 10 or 40, the fitted range holds 40/s and is narrow, and
    the pace ends under the limit: a full bucket's first second is not taken for the rate."""
    clock = [0.0]
    pacer = Pacer(clock=lambda: clock[0])
    limits = Limits(rate=40, burst=burst, retry_after="none")
    run_model(limits, n=1200, latency=1.0, concurrency=64, pacer=pacer, clock=clock)
    assert pacer.rate.bounds is not None
    lo, hi = pacer.rate.bounds
    assert lo <= 40 * (1 + SPREAD) and hi >= 40 * (1 - SPREAD)
    assert hi / lo < 1.1
    settled = [pace for at, what, pace, _ in pacer.rate.history if what == "429" and at > 5]
    assert all(40 * 0.9 <= pace <= 40 * (1 + SPREAD) for pace in settled), settled


JITTER = 0.004  # seconds a request may take beyond the network's constant delay, each way


@pytest.mark.parametrize("retry_after", ["precise", "none"])
@pytest.mark.parametrize("burst", [10, 40])
def test_the_fit_holds_when_arrivals_wander(burst, retry_after):
    """Requests that reach the server up to 4 ms later than the constant delay says (a real
    network, a busy client): the fit still brackets 40/s narrowly, few creates are refused and
    the batch ends near the best time."""
    clock = [0.0]
    pacer = Pacer(clock=lambda: clock[0])
    limits = Limits(rate=40, burst=burst, retry_after=retry_after)
    out = run_model(limits, n=1160, latency=1.0, concurrency=64, pacer=pacer, clock=clock, jitter=JITTER, seed=2)
    assert pacer.rate.bounds is not None
    lo, hi = pacer.rate.bounds
    assert lo <= 40 * (1 + SPREAD) and hi >= 40 * (1 - SPREAD) and hi / lo < 1.1
    assert out.refused_share <= MAX_REFUSED
    assert out.ratio <= MAX_RATIO if retry_after == "none" else 1.15
    assert out.violations == 0


class _Bucket:
    """A server's token bucket (full at first), for tests that drive a Pacer by hand."""

    def __init__(self, rate: float, size: float):
        self.rate, self.size, self.tokens, self.updated = rate, size, size, 0.0

    def answer(self, pacer: Pacer, ticket: Send, now: float) -> None:
        self.tokens, self.updated = min(self.size, self.tokens + (now - self.updated) * self.rate), now
        if self.tokens >= 1:
            self.tokens -= 1
            pacer.accepted(ticket)
        else:
            pacer.refused(ticket, 0.0)


def test_a_late_wake_is_caught_up_on_the_pace_schedule():
    """A send that wakes 3 ms late does not push every later one back: with --rate 50 the next slot
    and the next leaving are 20 ms after the late one's due time, not after the late send. A
    schedule that restarted from each late send lost the lateness every time (real runs sent 44/s
    at a pace of 49/s, and scenario 1 took 1.10 of the best with the rate given)."""
    clock = [0.0]
    pacer = Pacer(clock=lambda: clock[0], ceiling=50)
    first = pacer.send(Kind.CREATE)
    pacer.leaving(first)
    assert pacer.delay(Kind.CREATE) == pytest.approx(0.02)
    clock[0] = 0.023  # woke 3 ms late
    second = pacer.send(Kind.CREATE)
    assert pacer.hold(second) == 0
    pacer.leaving(second)
    assert pacer.delay(Kind.CREATE) == pytest.approx(0.017)
    third = pacer.send(Kind.CREATE)
    clock[0] = 0.04
    assert pacer.hold(third) == 0


def test_a_late_wake_is_not_caught_up_where_a_bucket_of_one_may_be():
    """Once 429s leave buckets of one possible at the pace, catching up would send two closer
    than such a bucket refills: the schedule restarts from a late send, as before."""
    clock = [0.0]
    pacer = Pacer(clock=lambda: clock[0], ceiling=50)
    server = _Bucket(rate=45, size=1)
    while pacer.rate.fit is None or pacer.rate.fit.refusals < 3:
        clock[0] += pacer.delay(Kind.CREATE)
        ticket = pacer.send(Kind.CREATE)
        pacer.leaving(ticket)
        server.answer(pacer, ticket, clock[0])
    assert pacer.rate.slack() < 0.1 / pacer.pace
    late = clock[0] + pacer.delay(Kind.CREATE) + 0.003
    clock[0] = late
    pacer.leaving(pacer.send(Kind.CREATE))
    assert pacer.delay(Kind.CREATE) >= 0.9 / pacer.pace


def test_wake_ups_that_are_late_do_not_slow_a_rate_given():
    """The model client waking up to 4 ms late from every wait: a batch at --rate 50 against a
    limit of 50/s (a bucket of 5) still takes the best time, give or take 1 %."""
    out = run_model(Limits(rate=50, burst=5), n=1000, latency=1.0, concurrency=64, ceiling=50, late=0.004)
    assert out.ratio <= 1.01
    assert out.refused_creates == 0


def test_a_bucket_of_one_is_spaced_for_the_wander():
    """A bucket of one refuses two requests that arrive closer than 1/R, so with arrivals that
    wander the pace keeps that much more apart: the limit is found and few creates are refused
    even though whole-second pauses make every refusal dear."""
    clock = [0.0]
    pacer = Pacer(clock=lambda: clock[0])
    limits = Limits(rate=40, burst=1, retry_after="precise")
    out = run_model(limits, n=1160, latency=1.0, concurrency=64, pacer=pacer, clock=clock, jitter=JITTER, seed=2)
    assert pacer.rate.bounds is not None
    lo, hi = pacer.rate.bounds
    assert lo <= 40 <= hi
    assert pacer.pace <= 1 / (JITTER + 1 / 40)
    assert out.refused_share <= MAX_REFUSED
    assert out.violations == 0


@pytest.mark.parametrize("cap", [4, 16])
def test_a_cap_on_running_runs_is_found_and_held(cap):
    """A server that refuses creates while `cap` runs are unfinished: the cap is recognised, the
    runs in flight never exceed it, and few creates are refused."""
    clock = [0.0]
    pacer = Pacer(clock=lambda: clock[0])
    out = run_model(
        Limits(cap=cap, retry_after="precise"), n=cap * 40, latency=1.0, concurrency=64, pacer=pacer, clock=clock
    )
    assert pacer.running_limit == cap
    assert out.max_unfinished <= cap
    assert out.refused_share <= MAX_REFUSED_CAPPED
    assert out.ratio <= MAX_RATIO


def test_a_cap_of_two_taken_from_a_rate_limit_is_dropped_when_a_429_comes_below_it():
    """At 2/s with a bucket of one and 1 s runs, two runs are in flight whenever a 429 comes, so the
    rate's 429s can pass for a cap of two (seen in a grid run: every later 429 was then put down to
    that cap, the rate fit never restarted and a 1 s pause came every 1.3 s). A 429 with only one
    run in flight cannot be a cap of two: it is the rate's, and the cap, still on trial, is dropped."""
    clock = [0.0]
    pacer = Pacer(clock=lambda: clock[0])

    def create(at: float, answer: float | None) -> Send:
        clock[0] = at
        send = pacer.send(Kind.CREATE)
        if answer is None:
            pacer.accepted(send)
        else:
            pacer.refused(send, answer)
        return send

    create(0.0, None)
    create(0.1, None)
    create(0.2, 1.0)  # two in flight: a cap of two is suspected
    clock[0] = 1.5
    pacer.run_ended()
    create(1.5, None)
    assert create(1.6, 1.0).result is Result.CAPPED  # two in flight again, after a run ended
    assert pacer.running_limit == 2
    clock[0] = 3.0
    pacer.run_ended()
    pacer.run_ended()
    create(3.0, None)
    below = create(3.1, 1.0)  # one in flight: no cap of two refuses this
    assert below.result is Result.REFUSED
    assert pacer.running_limit is None


def test_ten_minutes_of_a_limit_that_moves_are_followed():
    """Ten minutes against a limit shared with other work: 30/s, halved, restored, cut to 10, raised
    to 40. The pace settles within 5 s of the start and of each fall; a rise is found within the
    quiet period the refusal budget allows at the old pace (probing sooner would cost more 429s),
    plus 5 s; few creates are refused."""
    schedule = [(0.0, 30.0), (120.0, 15.0), (240.0, 30.0), (360.0, 10.0), (480.0, 40.0)]
    limits = Limits(rate=schedule, retry_after="none")
    out = run_model(limits, n=14000, latency=1.0, concurrency=96)
    assert out.finished_at < 600
    assert out.violations == 0
    assert out.refused_share <= MAX_REFUSED
    settle = convergence(out.accepted_at, schedule, end=max(out.accepted_at))
    for i, seconds in enumerate(settle):
        old = schedule[i - 1][1] if i else math.inf
        rise = schedule[i][1] > old
        allowed = MAX_SETTLE + (max(QUIET_MIN, 1 / (REFUSAL_BUDGET * old)) if rise else 0.0)
        assert seconds <= allowed, (schedule[i], settle)


def test_polls_that_count_against_the_limit_are_paced_with_the_creates():
    """When polls take create tokens, the first poll 429 makes polls count: from then on they wait
    for the pace like creates, and few of either are refused."""
    clock = [0.0]
    pacer = Pacer(clock=lambda: clock[0])
    limits = Limits(rate=20, polls_count=True, retry_after="none")
    out = run_model(limits, n=300, latency=1.0, concurrency=64, pacer=pacer, clock=clock)
    assert pacer.polls_counted
    assert out.refused_share <= MAX_REFUSED
    assert out.refused_polls <= 0.03 * out.polls
    assert out.ratio <= MAX_RATIO


def _fitted_to_ten_per_second() -> BucketFit:
    """A fit that has seen a sender at 15/s against a bucket of 10/s holding 3, for 10 s."""
    fit = BucketFit(0.0, full=True)
    tokens, updated = 3.0, 0.0
    for k in range(150):
        t = k / 15
        tokens, updated = min(3.0, tokens + (t - updated) * 10), t
        if tokens >= 1:
            tokens -= 1
            fit.accept(t)
        else:
            fit.refuse(t)
    return fit


def test_bucket_fit_keeps_only_the_buckets_that_explain_every_answer():
    """A sender at 15/s against a bucket of 10/s holding 3: after 10 s the lowest fitted rate is
    10/s within a grid step, none reaches the 15/s that was refused, and the smallest fitted
    bucket is no bigger than 3."""
    fit = _fitted_to_ten_per_second()
    bounds = fit.bounds()
    assert bounds is not None
    lo, hi = bounds
    assert 10 * (1 - SPREAD) <= lo <= 10 * (1 + SPREAD)
    assert 10 <= hi < 15
    assert fit.held(math.inf) <= 3


def test_an_accept_no_bucket_explains_is_believed_only_from_a_sender_faster_than_every_bucket():
    """Three more requests accepted at the moment of the last one, which no fitted bucket would
    let through: sent no faster than the fit's highest rate, they cannot show that the limit rose
    (a stall or a late arrival can), so the fit keeps its buckets; sent faster, they end it."""
    for rise in (False, True):
        fit = _fitted_to_ten_per_second()
        before = fit.bounds()
        assert before is not None
        believed = [fit.accept(149 / 15, rise=rise) for _ in range(3)]
        if rise:
            assert fit.bounds() is None
        else:
            assert False in believed
            assert fit.bounds() == before


def test_a_fit_that_accepts_keep_contradicting_is_dropped():
    """A fit pinned at half the limit by a mistimed 429 (seen in a real run of the grid's 40/s with a
    bucket of one: [20.5, 20.8]/s, 200 accepts not believed and the pace held at 20/s for a minute):
    one moment of accepts no bucket explains is a stall and is not believed, but such accepts at
    three moments seconds apart show the fit is wrong. It is dropped and the pace grows again."""
    rate = Pacer(clock=lambda: 0.0).rate
    rate.fit = _fitted_to_ten_per_second()
    rate.settle(10.0)
    pace = rate.pace
    moments = [149 / 15 + DISBELIEF_GAP * k for k in range(DISBELIEF)]
    for at in moments:
        for _ in range(3):  # well beyond what any fitted bucket holds, sent at the fit's own pace
            rate.accepted(Send(Kind.CREATE, at, 0, True, pace, result=Result.ACCEPTED))
        assert (rate.fit is None) == (at == moments[-1])
    assert rate.growing and rate.bounds is None
    assert [h[1] for h in rate.history][-2:] == ["fit wrong", "limit rose"]


def test_the_fit_reads_answers_in_the_order_their_requests_left():
    """Creates get their slots two at a time and the second of each pair may leave first (they
    wait for a commit, then for the pace's spacing, in whatever order they wake). The fit must
    read the answers in the order the requests left: read in the order of their slots, times
    went backwards and the fit ruled out the true rate (seen in real runs of scenario 2: the fit
    narrowed to 27-30/s against 50/s after one 429, and the batch took 1.7 times the best)."""

    def fitted(swap: bool) -> tuple[float, float] | None:
        clock = [0.0]
        pacer = Pacer(clock=lambda: clock[0])
        server = _Bucket(rate=10, size=2)
        for k in range(40):
            clock[0] = 0.16 * k
            pair = [pacer.send(Kind.CREATE), pacer.send(Kind.CREATE)]
            for i, ticket in enumerate(reversed(pair) if swap else pair):
                clock[0] = 0.16 * k + 0.08 * i
                pacer.leaving(ticket)
                server.answer(pacer, ticket, clock[0])
        assert pacer.rate.fit is not None
        return pacer.rate.fit.bounds()

    in_order = fitted(swap=False)
    assert in_order is not None and in_order[0] <= 10 * (1 + SPREAD) and in_order[1] >= 10 * (1 - SPREAD)
    assert fitted(swap=True) == in_order


def test_one_429_that_puts_the_rate_at_a_fraction_of_the_pace_restarts_the_fit():
    """A controller that found a limit near 25/s paces inside its fit; after the 429's pause two
    creates are accepted and the third, 30 ms later, is refused, when every bucket of more than a
    few per second must have held a token. Taken as it is, the fit would rule out everything above
    a fraction of the pace (seen in a real run: [0.95, 2.78]/s against 40/s, the pace held at 1.4/s
    for 50 s). A 429 mistimed is likelier than a limit cut that deep: the fit starts over from it,
    as when the limit fell, and the pace backs off by BETA only."""
    rate = Pacer(clock=lambda: 0.0).rate

    def answer(at: float, pace: float, result: Result) -> None:
        send = Send(Kind.CREATE, at, 0, True, pace, result=result)
        if result is Result.REFUSED:
            rate.refused(send, at, 1.0)
        else:
            rate.accepted(send)

    for k in range(16):
        answer(k / 40, 40.0, Result.ACCEPTED)
    answer(0.42, 46.0, Result.REFUSED)
    pace = rate.pace
    assert rate.bounds is not None
    answer(1.45, pace, Result.ACCEPTED)
    answer(1.48, pace, Result.ACCEPTED)
    answer(1.51, pace, Result.REFUSED)
    assert "collapsed" in [h[1] for h in rate.history]
    assert rate.fit is not None and rate.fit.refusals == 0  # a fresh fit, from this 429
    assert rate.pace >= pace * BETA * 0.99


def test_spacing_for_the_wander_does_not_step_the_pace_down_to_nothing():
    """Over a fit that allows every rate with a bucket of one (fresh from a 429), spacing requests
    for 6 ms of wander stepped the pace from 40/s down the whole grid to about 2.5/s; it now stops
    at TOLERABLE_FLOOR of the pace asked for, and a fit whose lowest rate is near the pace still
    spaces requests as before."""
    fresh = BucketFit(0.0, full=False)
    assert fresh.tolerable(40.0, 0.006) == pytest.approx(40.0 * TOLERABLE_FLOOR)
    tight = BucketFit(0.0, full=False)
    tight.alive = [i for i in tight.alive if 38.0 <= GRID[i] <= 42.0]
    assert 38.0 / (1 + 0.006 * 38.0) * 0.98 < tight.tolerable(40.0, 0.006) < 40.0


def test_a_cap_is_judged_by_the_runs_in_flight_when_each_create_leaves():
    """Creates get their slots, then wait (for their attempt's commit) and leave in another order:
    the server counts what is running when each arrives. Judged by the count when its slot was
    given, the 429s of a cap of four came at counts of 0 and 1 and were put down to the rate (seen
    in a real run of the grid's cap of 16: the pace fell to 9/s, where the cap allows 16/s);
    judged when each leaves, they come at four and five and the cap is found."""
    clock = [0.0]
    pacer = Pacer(clock=lambda: clock[0])
    cap, running = 4, 0

    def climb(at: float) -> list[Send]:
        nonlocal running
        clock[0] = at
        tickets = [pacer.send(Kind.CREATE) for _ in range(cap + 2)]
        for ticket in reversed(tickets):  # the last slot given leaves first
            pacer.leaving(ticket)
        for ticket in reversed(tickets):
            if running < cap:
                running += 1
                pacer.accepted(ticket)
            else:
                pacer.refused(ticket, 1.0)
        return tickets

    first = climb(0.0)
    assert sorted(t.in_flight for t in first) == list(range(cap + 2))
    for _ in range(cap):
        running -= 1
        pacer.run_ended()
    second = climb(2.0)
    assert [t.result for t in second[:2]] == [Result.CAPPED] * 2
    assert pacer.running_limit == cap


def test_the_pace_is_not_sent_up_by_an_accept_that_came_late():
    """A controller whose fit holds 10/s, sending below it, is told of a bunch of accepts no
    bucket explains: it notes them as not believed and keeps its pace and fit, where taking them
    for a rise of the limit would start a ramp up that ends in a 429's pause."""
    rate = Pacer(clock=lambda: 0.0).rate
    rate.fit = _fitted_to_ten_per_second()
    rate.settle(10.0)
    pace, bounds = rate.pace, rate.fit.bounds()
    assert bounds is not None and pace < bounds[1]
    for _ in range(3):
        rate.accepted(Send(Kind.CREATE, 149 / 15, 0, True, pace, result=Result.ACCEPTED))
    assert rate.fit is not None and rate.fit.bounds() == bounds
    assert rate.pace == pace and not rate.growing
    assert [h[1] for h in rate.history if h[1] in ("not believed", "limit rose")][-1] == "not believed"


if __name__ == "__main__":  # python -m tests.test_pacing: the grid's figures on the model
    for point in grid():
        out = run_model(point.limits, n=point.n, latency=point.latency, concurrency=point.concurrency)
        settle = ""
        if point.limits.rate is not None:
            times = out.counted_at if point.limits.polls_count else out.accepted_at
            found = convergence(times, schedule_of(point.limits.rate) or [], end=max(out.accepted_at))
            settle = ", ".join(f"{s:.1f}" for s in found)
        status = "limit" if point.name in LIMITS else "met"
        print(
            f"| {point.name} | {out.ratio:.3f} | {out.refused_creates} ({out.refused_share:.1%}) | {settle or 'n/a'} "
            f"| {out.violations} | {out.max_unfinished} | {status} |"
        )


# A server that stalls: 5 % of requests find it begin a pause of up to 20 ms, and every request
# that reaches it meanwhile is decided when the pause ends (tests/pacing_model.py).
STALLS = (0.05, 0.02)
STALLED = ("40/s burst R/4 precise", "10/s burst 1 none", "cap 16 precise", "30/s halved 10-20 s none")


@pytest.mark.parametrize("point", [p for p in grid() if p.name in STALLED], ids=lambda p: p.name)
def test_retry_after_holds_when_the_server_stalls(point: Point):
    """Against a server that now and then stops and then decides a bunch of requests at once:
    however the pace fares, no request goes before a 429's advertised time, and the batch ends."""
    out = run_model(
        point.limits, n=point.n, latency=point.latency, concurrency=point.concurrency, jitter=JITTER, stall=STALLS
    )
    assert out.refused_creates > 0
    assert out.violations == 0
    assert out.finished_at < math.inf


@pytest.mark.xfail(
    strict=True,
    reason="the fit rules a bucket out on one answer: requests a stall bunched are refused where no bucket the "
    "client's send times describe would refuse them, so the fit concludes the limit fell (and cuts the pace) or, "
    "on accepts, that it rose (and probes into a whole-second pause); the real grid's 40/s points show the same",
)
def test_the_pace_keeps_near_the_limit_when_the_server_stalls_longer():
    """40/s with a bucket of 10 and whole-second Retry-After, against a server whose stalls last up
    to 50 ms: over five seeds, the median batch ends within 10 % of the best time."""
    limits = Limits(rate=40, burst=10, retry_after="precise")
    ratios = [
        run_model(limits, n=1160, latency=1.0, concurrency=64, jitter=JITTER, stall=(0.05, 0.05), seed=seed).ratio
        for seed in range(5)
    ]
    assert sorted(ratios)[2] <= MAX_RATIO, ratios
