"""The token buckets that agree with every answer: the model of the path (see the package docstring)."""

from __future__ import annotations

import math

GRID_RATIO = 1.015  # candidate rates, 1.5 % apart, 0.05/s to 5000/s
GRID = [0.05 * GRID_RATIO**i for i in range(int(math.log(1e5) / math.log(GRID_RATIO)) + 1)]
SPREAD = (GRID_RATIO - 1) / 2  # a candidate stands for the rates this share either side
TOLERABLE_FLOOR = 0.3  # the least share of a pace that spacing for the wander may leave


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

    def accept(self, t: float, eps: float = 0.0, *, rise: bool = True) -> bool:
        """An answer 'accepted' to a request that reached the server at ``t`` ± ``eps``; False
        if no bucket explains it and, ``rise`` being False (the request was not sent faster than
        every bucket allows, so more cannot have got through), it was not believed: a stall or a
        late arrival beyond ``eps``, which must not end the fit.

        Every candidate is looked at for every answer, so the loop keeps to arithmetic on local
        lists: candidates ruled out are collected and removed afterwards (seldom), rather than
        the survivors appended to a new list (at every answer, for each of hundreds)."""
        tau, count, full = t - self.t0, self.count, self.full
        peak, peak_at, b_lo, b_hi = self.peak, self.peak_at, self.b_lo, self.b_hi
        slack = SPREAD * tau + eps
        out: list[int] = []
        was: list[float] = []  # their b_lo before this answer (0: unchanged)
        for i in self.alive:
            r = GRID[i]
            v = r * tau - count
            if not full and v < -r * slack:
                out.append(i)  # from an empty bucket, this rate could not have earned the token
                was.append(0.0)
                continue
            # How far below the last full bucket, at least: the times of both ends may be off.
            top = peak[i]
            drawdown = top - v - r * (SPREAD * (t - peak_at[i]) + eps)
            if v > top:
                peak[i], peak_at[i] = v, t
            if 1 + drawdown > b_lo[i]:
                if 1 + drawdown >= b_hi[i]:
                    out.append(i)
                    was.append(b_lo[i])
                b_lo[i] = 1 + drawdown
        self.count += 1
        if out:
            if not rise and len(out) == len(self.alive):
                for i, before in zip(out, was, strict=True):
                    if before:
                        b_lo[i] = before
                return False
            self._rule_out(out)
        return True

    def refuse(self, t: float, eps: float = 0.0) -> None:
        """A 429 (of the rate) to a request that reached the server at ``t`` ± ``eps``."""
        tau, count, full = t - self.t0, self.count, self.full
        peak, peak_at, b_lo, b_hi = self.peak, self.peak_at, self.b_lo, self.b_hi
        slack = SPREAD * tau + eps
        out = []
        for i in self.alive:
            r = GRID[i]
            v = r * tau - count
            # How far below the last full bucket, at most (0: it may have been full).
            drawdown = max(0.0, peak[i] - v + r * (SPREAD * (t - peak_at[i]) + eps))
            if full or v >= 1 + r * slack:  # (else the bucket may simply not have refilled)
                if 1 + drawdown < b_hi[i]:
                    b_hi[i] = 1 + drawdown
                    if b_hi[i] <= b_lo[i]:
                        out.append(i)
                        continue
            peak[i], peak_at[i] = 0.0, t
        if out:
            self._rule_out(out)
        self.t0, self.count, self.full = t, 0, False
        self.refusals += 1

    def _rule_out(self, out: list[int]) -> None:
        gone = set(out)
        self.alive = [i for i in self.alive if i not in gone]

    def bounds(self) -> tuple[float, float] | None:
        """(lowest, highest) rate still possible; None when no bucket fits."""
        return (GRID[self.alive[0]], GRID[self.alive[-1]]) if self.alive else None

    def tolerable(self, pace: float, eps: float) -> float:
        """``pace``, or slower if a surviving bucket at its smallest size would refuse requests
        sent that fast that arrive up to ``eps`` closer together than they left. Under its rate
        a bucket is full when a request comes; one arriving 1/pace − eps after the last finds
        B − 1 + R·(1/pace − eps) tokens, which must be one at least: a bucket of two or more
        never minds, a bucket of one needs requests eps further apart than 1/R. (Rates under
        the pace are the pace's own risk, not the jitter's.) Each step down brings rates under the
        old pace into reach, so over a fit that still allows every rate down to a vague lower end
        (after a restart) the steps went on to about 0.015 / eps, 2.5/s at 6 ms, where nothing
        sent could narrow the fit again (seen in real runs: 2.5/s for 20 s against 40/s); they
        stop at TOLERABLE_FLOOR of the pace asked for."""
        least = pace * TOLERABLE_FLOOR
        for i in reversed(self.alive):
            r = GRID[i]
            if r < pace or pace <= least:
                break
            if self.b_lo[i] < 2:
                pace = min(pace, 1 / (eps + (2 - self.b_lo[i]) / r))
        return max(pace, least)

    def closest(self, pace: float, eps: float) -> float:
        """The least gap between two requests (sent at ``pace`` on average, so each surviving
        bucket at or above the pace is full) that every such bucket at its smallest size takes
        without a refusal, arrivals wandering by up to ``eps``: none for a bucket of two or more,
        ``(2 - B)/R + eps`` for a smaller one (as in ``tolerable``)."""
        gap = 0.0
        for i in reversed(self.alive):
            r = GRID[i]
            if r < pace:
                break
            if self.b_lo[i] < 2:
                gap = max(gap, eps + (2 - self.b_lo[i]) / r)
        return gap

    def held(self, pause: float) -> float:
        """Tokens every surviving bucket surely holds after ``pause`` seconds from empty: the
        least over them of its smallest size and what its rate refills (a low rate may come
        with a big bucket and a high one with a small one, and either may be the server's)."""
        return min((min(self.b_lo[i], GRID[i] * pause) for i in self.alive), default=0.0)
