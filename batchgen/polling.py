"""Watching the runs in flight: when each is polled next, and what its answer means.

``Poller`` holds every run created and not yet finished with, in a heap by the time
it is due, and polls each when its time comes (``PollPlanner`` chooses the delays).
An answer becomes one of: poll again later, the run succeeded (handed to
``on_succeeded``, which saves its outputs), or the attempt failed (``on_failed``,
which decides whether a new run is paid for). Rate limits, transient errors and
a 404 within the grace only reschedule the run; 401 and 403 end the batch
(``on_fatal``). What a job is worth, retries and the ledger stay with the scheduler.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio

from .api import RunbaseClient
from .errors import (
    AccountError,
    BatchgenError,
    RateLimited,
    RunIdRefused,
    RunNotFound,
    TransientError,
    Unauthorized,
)
from .events import Events
from .models import BatchStats, OpenRun, Outcome, PendingJob, RunInfo
from .throttle import PollPlanner, Throttle, backoff

# A run the ledger knows was paid for: a 404 may only mean the API has not caught up with
# it yet (eventually consistent reads), so it is polled again for this long before it is gone.
NOT_FOUND_GRACE = 180.0


@dataclass(eq=False)
class Run:
    """A run created and not yet finished with."""

    job: PendingJob
    attempt_id: int
    run_id: str
    created_at: float  # on the scheduler's clock
    due: float = 0.0
    errors: int = 0
    polls: int = 0
    last_poll_age: float = 0.0  # its age when the last poll's request left
    sent_age: float = 0.0  # its age when this poll's request left: when the server looked
    adopted: bool = False  # created by an earlier session: its first poll teaches nothing
    refetch: bool = False  # open only to fetch files that went missing: a failure never buys a new run
    not_found_since: float | None = None
    failing_since: float | None = None  # when the polls now failing in a row began


@dataclass
class Slots:
    """At most ``size`` runs in flight; runs adopted from an earlier session may exceed it."""

    size: int
    used: int = 0
    _freed: anyio.Event = field(default_factory=anyio.Event)

    async def acquire(self) -> None:
        while self.used >= self.size:
            await self._freed.wait()
        self.used += 1

    def take(self) -> None:
        self.used += 1

    def release(self) -> None:
        self.used -= 1
        self._freed.set()
        self._freed = anyio.Event()


class Poller:
    def __init__(
        self,
        *,
        client: RunbaseClient,
        throttle: Throttle,
        planner: PollPlanner,
        stats: BatchStats,
        events: Events,
        slots: Slots,
        run_timeout: float,
        backoff_base: float,
        not_found_grace: float,
        changed: Callable[[], None],
        wake: Callable[[], anyio.Event],
        on_succeeded: Callable[[Run, RunInfo], None],
        on_failed: Callable[[Run, str], None],
        on_unreachable: Callable[[Run, str], None],
        on_fatal: Callable[[BatchgenError, Outcome], None],
    ):
        self.client = client
        self.throttle = throttle
        self.planner = planner
        self.stats = stats
        self.events = events
        self.slots = slots
        self.run_timeout = run_timeout
        self.backoff_base = backoff_base
        self.not_found_grace = not_found_grace
        self._changed = changed  # something moved: the scheduler looks again
        self._wake = wake  # the event the scheduler sets at its next change
        self._on_succeeded = on_succeeded
        self._on_failed = on_failed
        self._on_unreachable = on_unreachable  # polls failed for run_timeout: keep the run, buy none
        self._on_fatal = on_fatal
        self._clock = anyio.current_time
        # By attempt, not run id: a server that deduplicates identical creates answers two with one id.
        self.in_flight: dict[int, Run] = {}
        self._heap: list[tuple[float, int, Run]] = []
        self._seq = 0

    def created(self, job: PendingJob, attempt_id: int, run_id: str) -> Run:
        """A run this session created: first polled after the planner's first delay."""
        run = Run(job, attempt_id, run_id, self._clock())
        self.track(run, self.planner.next_poll(0.0))
        return run

    def adopt(self, open_run: OpenRun) -> Run:
        """A run an earlier session created: poll it now instead of paying again."""
        age = max(0.0, time.time() - (open_run.created_at or time.time()))
        run = Run(
            open_run.job,
            open_run.attempt_id,
            open_run.run_id,
            self._clock() - age,
            adopted=True,
            refetch=open_run.refetch,
        )
        self.slots.take()
        self.throttle.run_started()
        self.track(run, 0.0)
        return run

    def track(self, run: Run, delay: float) -> None:
        self.in_flight[run.attempt_id] = run
        self.schedule(run, delay)

    def schedule(self, run: Run, delay: float) -> None:
        run.due = self._clock() + delay
        self._seq += 1
        heapq.heappush(self._heap, (run.due, self._seq, run))
        self._changed()

    def untrack(self, run: Run) -> None:
        if self.in_flight.pop(run.attempt_id, None) is run:
            self.slots.release()
            self.throttle.run_ended()
        self._changed()

    async def run(self, guard: Callable[[Run], object]) -> None:
        """Poll each run when it is due; ``guard(run)`` starts ``poll(run)`` in the caller's guard."""
        while True:
            changed = self._wake()
            now = self._clock()
            while self._heap and self._heap[0][0] <= now:
                due, _, run = heapq.heappop(self._heap)
                if run.due == due and self.in_flight.get(run.attempt_id) is run:
                    guard(run)
            wait = self._heap[0][0] - now if self._heap else math.inf
            with anyio.move_on_after(wait):
                await changed.wait()

    async def poll(self, run: Run) -> None:
        ticket = await self.throttle.wait_poll()

        async def leaving() -> None:
            await self.throttle.wait_to_send(ticket)
            run.sent_age = self._clock() - run.created_at

        try:
            info = await self.client.get_run(run.run_id, before_send=leaving)
        except RateLimited as exc:
            self.stats.rate_limited += 1
            pause = self.throttle.rate_limited(exc.retry_after, create=False, ticket=ticket)
            self._emit("throttled", run, pause=pause, **self.throttle.state())
            self.schedule(run, pause + 0.01)
            return
        except TransientError as exc:
            run.errors += 1
            self._emit("retried", run, error=exc, tries=run.errors)
            self.stats.retries += 1
            # Polls failing say nothing about the run, which may well have finished: after run_timeout of
            # them the run is kept for the next session rather than paid for again.
            run.failing_since = run.failing_since if run.failing_since is not None else self._clock()
            if self._clock() - run.failing_since > self.run_timeout:
                return self._on_unreachable(
                    run, f"no answer about run {run.run_id} for {self.run_timeout:.0f} s: {exc.message}"
                )
            self.schedule(run, backoff(run.errors, base=self.backoff_base, cap=30.0))
            return
        except RunIdRefused as exc:  # not a 404: no grace would change the id
            return self._on_failed(run, exc.message)
        except RunNotFound:
            now = self._clock()
            if run.not_found_since is None:
                run.not_found_since = now
            if now - run.not_found_since < self.not_found_grace:
                run.errors += 1
                self.schedule(run, backoff(run.errors, base=self.backoff_base, cap=30.0))
                return
            return self._on_failed(
                run, f"run {run.run_id} no longer exists: the API answered 404 for {self.not_found_grace:.0f} s"
            )
        except Unauthorized as exc:
            return self._on_fatal(exc, Outcome.UNAUTHORIZED)
        except AccountError as exc:  # 403 on a poll: we cannot even watch our runs
            return self._on_fatal(exc, Outcome.ACCOUNT)
        else:
            self.throttle.accepted(create=False, ticket=ticket)
        finally:
            self.throttle.done(ticket)  # any other answer tells the pace nothing
        self.stats.polls += 1
        self.answered(run, info)

    def _emit(self, event: str, run: Run, **fields: Any) -> None:
        """An event about one poll of ``run``."""
        self.events.emit(event, what="poll", job_id=run.job.spec.job_id, run_id=run.run_id, **fields)

    def answered(self, run: Run, info: RunInfo) -> None:
        """What a run's status says: save it, fail the attempt, or poll again later."""
        run.errors = 0
        run.not_found_since = run.failing_since = None
        age = self._clock() - run.created_at
        # What the run's status says is about the moment the poll left, not when it was due (a
        # poll waits for the pace when polls count against the limit) nor when the answer came.
        seen = run.sent_age or age
        if not run.adopted:
            if run.polls == 0:
                self.planner.first_poll_result(info.finished, seen)
            elif info.finished:
                self.planner.finished_between(run.last_poll_age, seen)
            else:
                self.planner.still_running(seen)
        run.polls += 1
        run.last_poll_age = seen
        if info.succeeded:
            self._on_succeeded(run, info)
        elif info.failed:
            self._on_failed(run, info.error or f"run {run.run_id} ended '{info.status}'")
        elif age > self.run_timeout:
            self._on_failed(run, f"run {run.run_id} still '{info.status}' after {self.run_timeout:.0f} s")
        else:
            self.schedule(run, self.planner.next_poll(age))
