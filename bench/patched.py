"""``batchgen`` with experimental patches, to measure a suggested change before making it.

    python bench/patched.py limit16 run jobs.csv --output out ...

The first argument names the patches (comma-separated); the rest is the usual
``batchgen`` command line. Nothing in ``batchgen/`` is edited: the patches are
applied in this process only. Each one mirrors a change proposed in
bench/RESULTS.md, so its effect on the real CLI can be measured by bench/run.py
(``--clients 'batchgen,batchgen[limit16]'``).

Patches:

* ``poolN`` (e.g. ``pool16``): both connection pools hold N connections instead of
  2×concurrency (httpcore scans every pooled connection on each request).
* ``limitN``: pools of N, and batchgen itself lets at most N requests per client into
  httpx at once (an anyio.CapacityLimiter), so none queue inside httpcore, whose queue
  handling is O(queued × connections) per request start and end.
* ``gapfirstN``: after a miss, the next poll waits at least N% of the current
  first-poll delay (today only ``growth`` × the run's age), which bounds the polls
  of the first wave of runs, polled at 0.5 s before anything was learned.
"""

from __future__ import annotations

import re
import sys


def patch_pool(size: int) -> None:
    """Both httpx pools (API and files) hold at most ``size`` connections (today: 2×concurrency)."""
    from batchgen import api, runner

    original_init = api.RunbaseClient.__init__

    def __init__(self, *args, max_connections: int = 64, **kwargs):  # type: ignore[no-untyped-def]
        original_init(self, *args, max_connections=size, **kwargs)

    api.RunbaseClient.__init__ = __init__
    runner.RunbaseClient = api.RunbaseClient


def patch_limit(size: int) -> None:
    """Pools of ``size`` connections, and at most ``size`` requests handed to each at once.

    httpcore's pool, on every request start and end, walks its queued requests and, for
    each, its connections; a request queued inside httpcore therefore costs
    O(queue × pool). Waiting on an anyio.CapacityLimiter in batchgen instead keeps
    httpcore's queue empty.
    """
    import anyio

    from batchgen import api

    patch_pool(size)
    limiters: dict[int, tuple[anyio.CapacityLimiter, anyio.CapacityLimiter]] = {}

    def pair(client) -> tuple[anyio.CapacityLimiter, anyio.CapacityLimiter]:  # type: ignore[no-untyped-def]
        if id(client) not in limiters:
            limiters[id(client)] = (anyio.CapacityLimiter(size), anyio.CapacityLimiter(size))
        return limiters[id(client)]

    create_run, get_run, download = api.RunbaseClient.create_run, api.RunbaseClient.get_run, api.RunbaseClient.download

    async def limited_create(self, job):  # type: ignore[no-untyped-def]
        async with pair(self)[0]:
            return await create_run(self, job)

    async def limited_get(self, run_id):  # type: ignore[no-untyped-def]
        async with pair(self)[0]:
            return await get_run(self, run_id)

    async def limited_download(self, url, sink):  # type: ignore[no-untyped-def]
        async with pair(self)[1]:
            return await download(self, url, sink)

    api.RunbaseClient.create_run = limited_create
    api.RunbaseClient.get_run = limited_get
    api.RunbaseClient.download = limited_download


def patch_gapfirst(percent: int) -> None:
    """After a miss, wait at least ``percent``% of the current first-poll delay, not only
    ``growth`` × the run's age.

    Runs created before the planner has learned anything (the first wave) are first
    polled at the initial 0.5 s; if generations take seconds, the purely geometric gaps
    (12% of the age) then cost log(d/0.5)/log(1.12) polls each: ~19 for a 4 s run. The
    first-poll delay itself learns from those misses within a few polls, so tying the
    gap to it bounds the wave's polls.
    """
    from batchgen import throttle

    share = percent / 100

    def next_poll(self, age: float) -> float:  # type: ignore[no-untyped-def]
        if age <= 0:
            return self.first
        return min(self.max_gap, max(self.min_gap, age * self.growth, share * self.first))

    throttle.PollPlanner.next_poll = next_poll


PATCHES: dict = {}
SIZED = {"pool": patch_pool, "limit": patch_limit, "gapfirst": patch_gapfirst}  # pool16, limit8, ...


def main() -> int:
    names = [n for n in sys.argv[1].split(",") if n]
    for name in names:
        sized = re.fullmatch(r"([a-z]+)(\d+)", name)
        if sized and sized[1] in SIZED:
            SIZED[sized[1]](int(sized[2]))
        else:
            PATCHES[name]()
    from batchgen.cli import main as batchgen_main

    return batchgen_main(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
