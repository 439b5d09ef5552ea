"""Backoff and the shared 429 pause, on an injected clock and random source: exact values, no waiting.

The pacing controller's own tests are tests/test_pacing.py and tests/test_throttle.py; these pin
the two functions every retry and every 429 goes through, so a changed default or jitter is seen.
"""

from __future__ import annotations

import anyio
import pytest

from batchgen.throttle import Throttle, backoff


@pytest.mark.parametrize(
    ("attempt", "lowest", "highest"), [(1, 0.25, 0.5), (2, 0.5, 1.0), (3, 1.0, 2.0), (7, 16.0, 32.0), (8, 30.0, 60.0)]
)
def test_backoff_doubles_from_half_a_second_with_equal_jitter_up_to_a_minute(attempt, lowest, highest):
    """Retry n waits between half and all of 0.5·2^(n-1) s, capped at 60 s; the jitter spans that half."""
    assert backoff(attempt, rng=lambda: 0.0) == lowest
    assert backoff(attempt, rng=lambda: 1.0) == highest
    assert backoff(attempt, rng=lambda: 0.5) == (lowest + highest) / 2


def test_backoff_takes_its_base_and_cap():
    """--backoff-base and the cap scale every delay; attempt 0 or less counts as the first."""
    assert backoff(3, base=0.01, rng=lambda: 1.0) == 0.04
    assert backoff(4, cap=5.0, rng=lambda: 1.0) == 4.0 and backoff(5, cap=5.0, rng=lambda: 1.0) == 5.0
    assert backoff(0, rng=lambda: 1.0) == backoff(1, rng=lambda: 1.0) == 0.5


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@pytest.mark.parametrize("create", [True, False], ids=["create", "poll"])
def test_a_429_without_a_ticket_pauses_every_request_for_its_retry_after(create):
    """A 429 on a request that did not wait for a ticket (a download, a poll outside the pace) still pauses
    every request: wait_api sleeps until Retry-After has passed, and a later, shorter one does not shorten it."""
    time = FakeTime()
    throttle = Throttle(clock=time.clock, sleep=time.sleep)
    pause = throttle.rate_limited(5.0, create=create)
    assert pause >= 5.0
    throttle.rate_limited(1.0, create=create)
    anyio.run(throttle.wait_api)
    assert time.now >= 105.0 and sum(time.slept) >= 5.0
