"""What polling can do at best for lognormal generation times (scenario 4's targets).

A client that does not know a run's duration polls every run on the same schedule
t1 < t2 < ...; the run is seen finished at the first t_k >= its duration d. Then
polls = k and added latency = t_k - d. This model (no network, no event loop) gives:

1. the "first poll at quantile q, then every growth×age" family batchgen uses;
2. the best schedule found by coordinate descent, for a few polls/latency trade-offs.

    python bench/poll_model.py [--sigma 0.5] [--samples 20000]

Coordinate descent finds good schedules; it cannot show that no better one exists, so what
it prints is an example of what polling can do, not a bound. Its output is not stored.
"""

from __future__ import annotations

import argparse
import bisect
import math
import random
from statistics import NormalDist


def family(durations: list[float], median: float, sigma: float, q: float, growth: float) -> tuple[float, float]:
    first = median * math.exp(sigma * NormalDist().inv_cdf(q))
    polls = added = 0.0
    for d in durations:
        age, n = first, 1
        while age < d:
            age, n = age * (1 + growth), n + 1
        polls += n
        added += age - d
    return polls / len(durations), added / len(durations)


def schedule_cost(durations: list[float], times: list[float]) -> tuple[float, float]:
    polls = added = 0.0
    for d in durations:
        i = bisect.bisect_left(times, d)
        if i < len(times):
            polls += i + 1
            added += times[i] - d
        else:  # past the schedule: 10 % steps
            age, n = times[-1], len(times)
            while age < d:
                age, n = age * 1.1, n + 1
            polls += n
            added += age - d
    return polls / len(durations), added / len(durations)


def best_schedule(durations: list[float], median: float, sigma: float, weight: float) -> list[float]:
    """Coordinate descent on 10 poll times, minimising added/mean + weight × polls."""
    mean = sum(durations) / len(durations)
    times = [median * math.exp(sigma * z) for z in (-1.0, -0.5, 0, 0.4, 0.8, 1.2, 1.6, 2.0, 2.5, 3.0)]
    for _ in range(12):
        for j in range(len(times)):
            low = times[j - 1] if j else 0.05 * median
            high = times[j + 1] if j + 1 < len(times) else times[j] * 2
            options = [low + (high - low) * k / 16 for k in range(1, 16)] + [times[j]]
            scored = []
            for option in options:
                trial = times[:j] + [option] + times[j + 1 :]
                polls, added = schedule_cost(durations, trial)
                scored.append((added / mean + weight * polls, option))
            times[j] = min(scored)[1]
    return times


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sigma", type=float, default=0.5)
    parser.add_argument("--median", type=float, default=4.0)
    parser.add_argument("--samples", type=int, default=10000)
    args = parser.parse_args()
    rng = random.Random(1)
    durations = sorted(args.median * math.exp(args.sigma * rng.gauss(0, 1)) for _ in range(args.samples))
    mean = sum(durations) / len(durations)
    print(f"lognormal median {args.median:g} s, sigma {args.sigma:g} (mean {mean:.2f} s)")
    print("first poll at quantile q, then every growth × age (batchgen's family), added latency < 10 %:")
    rows = []
    for q in (0.05, 0.1, 0.2, 0.3, 0.4, 0.5):
        for growth in (0.1, 0.12, 0.15, 0.2, 0.25, 0.3):
            polls, added = family(durations, args.median, args.sigma, q, growth)
            rows.append((polls, added / mean, q, growth))
    for polls, share, q, growth in sorted(r for r in rows if r[1] < 0.10)[:6]:
        print(f"  q={q:<4} growth={growth:<4}  {polls:.2f} polls/run, added {share:.1%}")
    print("best schedule found (any poll times):")
    for weight in (0.02, 0.03, 0.05):
        times = best_schedule(durations, args.median, args.sigma, weight)
        polls, added = schedule_cost(durations, times)
        shown = ", ".join(f"{t:.1f}" for t in times[:6])
        print(f"  {polls:.2f} polls/run, added {added / mean:.1%}  (polls at {shown} ... s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
