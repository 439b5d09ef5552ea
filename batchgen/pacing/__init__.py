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
  nothing better is known. So does a 429 that leaves the fit's top COLLAPSE times under the
  pace it was sent at: a request mistimed is likelier than a limit cut that deep.
* **Probe upward after quiet periods, fast once clear of the old limit** (CUBIC's
  max-probing: slow near the last known maximum, then ever faster): after QUIET seconds
  without a 429 the pace rises above the fit's upper bound as exp(a·t²). Answers beyond
  every surviving bucket mean the limit rose and the ramp continues, but only if they were
  sent faster than every surviving bucket allows: sent slower, no more can have got through
  than the buckets allowed, so such an answer reached the server later than it seemed (a
  stall, a busy loop) and is noted and not believed, rather than taken for a rise that would
  ramp the pace into a 429's pause. Such accepts at three moments seconds apart are more
  than one stall: the fit itself is wrong (a 429 it learnt from was mistimed), and it is
  dropped and the pace grows from where it is. The quiet period is set by two budgets: a 429 whose
  pause the bucket does not refill costs the batch that pause, so probes come at most every
  cost / TIME_BUDGET seconds (50 s with whole-second Retry-After and a small bucket); and
  at most one create in 1 / REFUSAL_BUDGET is a failed probe (10 s at 10/s, 2 s at 50/s
  and above).
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
* **Arrival times wander** (a network's jitter, a busy client; the same reason TCP's RTO
  keeps a variance term, RFC 6298): every answer is read as if its request may have reached
  the server up to ``eps`` earlier or later than it left, with ``eps`` half the spread of
  recent create round trips (90th percentile less the least: the request's share of it).
  A bucket of one refuses two requests that arrive closer than 1/R, so where the fit allows
  so small a bucket the pace keeps them ``eps`` further apart (``BucketFit.tolerable``, never
  below TOLERABLE_FLOOR of the pace: over a vague fit the steps would go on down the grid);
  after a pause only what every surviving bucket surely holds is sent at once
  (``BucketFit.held``).
* **A request is timed when its bytes leave, not when it got its slot**: between the two a
  create waits for its attempt to be committed, and creates that waited for one commit would
  leave together. ``Pacer.hold`` keeps the pace's spacing at that last moment and holds
  everything while a pause is on (a create whose pause began meanwhile goes back for a new
  slot: it was never sent), and ``Pacer.leaving`` stamps the moment the fit learns from.
* A user's rate is a ceiling: the pace starts there and never exceeds it, and 429s still
  slow it.

The controller is pure: it reads an injected clock and does no I/O. ``Pacer`` is its face:
``delay(kind)`` says how long a request must wait, ``send(kind)`` records one leaving, and
``accepted`` / ``refused`` / ``lost`` / ``run_ended`` report what became of it.
"""

from .cap import CAP_EVIDENCE, CAP_PROBE_EVERY, CAP_QUIET, RunningLimit
from .fit import GRID, SPREAD, BucketFit
from .pacer import MAX_PAUSE, Pacer
from .rate import QUIET_MIN, REFUSAL_BUDGET, START_PACE, TIME_BUDGET, RateControl
from .send import Clock, Kind, Result, Send

__all__ = [
    "CAP_EVIDENCE",
    "CAP_PROBE_EVERY",
    "CAP_QUIET",
    "GRID",
    "MAX_PAUSE",
    "QUIET_MIN",
    "REFUSAL_BUDGET",
    "SPREAD",
    "START_PACE",
    "TIME_BUDGET",
    "BucketFit",
    "Clock",
    "Kind",
    "Pacer",
    "RateControl",
    "Result",
    "RunningLimit",
    "Send",
]
