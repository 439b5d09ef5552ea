"""The token buckets that agree with every answer: the model of the path (see the package docstring)."""

from __future__ import annotations

import math

GRID_RATIO = 1.015  # candidate rates, 1.5 % apart, 0.05/s to 5000/s
GRID = [0.05 * GRID_RATIO**i for i in range(int(math.log(1e5) / math.log(GRID_RATIO)) + 1)]
SPREAD = (GRID_RATIO - 1) / 2  # a candidate stands for the rates this share either side


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

    def accept(self, t: float, eps: float = 0.0) -> None:
        """An answer 'accepted' to a request that reached the server at ``t`` ± ``eps``."""
        tau, count, full = t - self.t0, self.count, self.full
        keep = []
        for i in self.alive:
            r = GRID[i]
            v = r * tau - count
            if not full and v < -r * (SPREAD * tau + eps):
                continue  # from an empty bucket, this rate could not have earned the token
            # How far below the last full bucket, at least: the times of both ends may be off.
            drawdown = self.peak[i] - v - r * (SPREAD * (t - self.peak_at[i]) + eps)
            if v > self.peak[i]:
                self.peak[i], self.peak_at[i] = v, t
            if 1 + drawdown > self.b_lo[i]:
                self.b_lo[i] = 1 + drawdown
                if self.b_lo[i] >= self.b_hi[i]:
                    continue
            keep.append(i)
        self.alive = keep
        self.count += 1

    def refuse(self, t: float, eps: float = 0.0) -> None:
        """A 429 (of the rate) to a request that reached the server at ``t`` ± ``eps``."""
        tau, count, full = t - self.t0, self.count, self.full
        keep = []
        for i in self.alive:
            r = GRID[i]
            v = r * tau - count
            # How far below the last full bucket, at most (0: it may have been full).
            drawdown = max(0.0, self.peak[i] - v + r * (SPREAD * (t - self.peak_at[i]) + eps))
            if full or v >= 1 + r * (SPREAD * tau + eps):  # (else the bucket may simply not have refilled)
                if 1 + drawdown < self.b_hi[i]:
                    self.b_hi[i] = 1 + drawdown
                    if self.b_hi[i] <= self.b_lo[i]:
                        continue
            keep.append(i)
            self.peak[i], self.peak_at[i] = 0.0, t
        self.alive = keep
        self.t0, self.count, self.full = t, 0, False
        self.refusals += 1

    def bounds(self) -> tuple[float, float] | None:
        """(lowest, highest) rate still possible; None when no bucket fits."""
        return (GRID[self.alive[0]], GRID[self.alive[-1]]) if self.alive else None

    def tolerable(self, pace: float, eps: float) -> float:
        """``pace``, or slower if a surviving bucket at its smallest size would refuse requests
        sent that fast that arrive up to ``eps`` closer together than they left. Under its rate
        a bucket is full when a request comes; one arriving 1/pace − eps after the last finds
        B − 1 + R·(1/pace − eps) tokens, which must be one at least: a bucket of two or more
        never minds, a bucket of one needs requests eps further apart than 1/R. (Rates under
        the pace are the pace's own risk, not the jitter's.)"""
        for i in reversed(self.alive):
            r = GRID[i]
            if r < pace:
                break
            if self.b_lo[i] < 2:
                pace = min(pace, 1 / (eps + (2 - self.b_lo[i]) / r))
        return pace

    def held(self, pause: float) -> float:
        """Tokens every surviving bucket surely holds after ``pause`` seconds from empty: the
        least over them of its smallest size and what its rate refills (a low rate may come
        with a big bucket and a high one with a small one, and either may be the server's)."""
        return min((min(self.b_lo[i], GRID[i] * pause) for i in self.alive), default=0.0)
