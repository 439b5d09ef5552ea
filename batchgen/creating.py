"""Creating one run for one job: the create state machine.

    wait for the pace ─▶ attempt committed ─▶ POST /runs ─┬─ run id ─▶ committed ─▶ CREATED
          ▲                                               ├─ 429 ─▶ attempt forgotten, pause, again
          │                                               ├─ 5xx / reset ─▶ backoff, again (bounded)
          └───────────────────────────────────────────────┤   lost answer ─▶ 'unknown', next attempt
                                                          ├─ 400 ─▶ job FAILED ('rejected')
                                                          └─ 401/402/403 ─▶ STOP the batch

The attempt row is durable before the request leaves, and only while the request
is on the wire is it ``creating``; the run id is queued the moment the answer
comes, and the scheduler waits for it to be durable before polling the run: a 429 or a refused connection certainly made
no run, so that attempt is forgotten rather than left to count as a possible
double charge. ``Creator`` holds what all creates share (the gentle start, the
streak of failures that says the API is down); ``create()`` returns what became
of the job and leaves slots and queues to the scheduler.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import anyio

from .api import RunbaseClient
from .errors import (
    AccountError,
    ApiError,
    CapReached,
    JobError,
    RateLimited,
    TransientError,
    Unauthorized,
    UnusableRun,
)
from .events import Events
from .ledger import Ledger
from .models import AttemptStatus, BatchStats, JobSpec, PendingJob
from .pacing import Send
from .pricing import Budget
from .throttle import GentleStart, Throttle, backoff
from .words import plural

MAX_CREATE_TRIES = 6  # transient failures of one create before the job fails
# Creates failing in a row across the whole batch, with no success between them, that
# mean the API itself is down rather than one job's input upsetting it.
API_DOWN_STREAK = 2 * MAX_CREATE_TRIES
# Creates sent whose answers were lost, in a row across the batch with no run id answered between
# them: each may have made a run that is charged, so an API that loses every answer (a proxy that
# drops them, a gateway timing out) would be paid for up to --max-attempts runs for every job.
# Stop instead; a lost answer now and then (a reset) is retried as before.
LOST_STREAK = 5


class Result(enum.Enum):
    CREATED = "created"  # a run exists and its id is recorded: poll it
    FAILED = "failed"  # the job failed for good; recorded
    REQUEUE = "requeue"  # not this job's fault and no create has worked yet: let another job try
    DROPPED = "dropped"  # the batch is stopping: the job stays pending
    CAPPED = "capped"  # --max-runs / --max-credits reached: create nothing more, collect what is paid for
    UNAUTHORIZED = "unauthorized"  # 401: end the batch now
    ACCOUNT = "account"  # 402/403: stop creating, collect what is in flight
    API_DOWN = "api down"  # creates fail everywhere: stop, every job stays pending


@dataclass
class CreateOutcome:
    result: Result
    job: PendingJob  # with the attempts made so far
    attempt_id: int | None = None  # CREATED: the attempt that owns the run
    run_id: str | None = None
    error: ApiError | CapReached | None = None  # UNAUTHORIZED, ACCOUNT, API_DOWN, CAPPED


class Creator:
    def __init__(
        self,
        *,
        client: RunbaseClient,
        ledger: Ledger,
        throttle: Throttle,
        stats: BatchStats,
        max_attempts: int,
        stopping: Callable[[], bool],
        durable: Callable[[], Awaitable[None]],
        poke: Callable[[], None],
        backoff_base: float = 0.5,
        budgets: Sequence[tuple[Budget, Callable[[JobSpec], float]]] = (),
        events: Events | None = None,
    ):
        self.client = client
        self.events = events if events is not None else Events()
        self.ledger = ledger
        self.throttle = throttle
        self.stats = stats
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self.gate = GentleStart()
        self.on_the_wire = 0  # create requests sent and not yet answered
        self._stopping = stopping
        self.durable = durable
        self.poke = poke  # queued writes no one waits for: flush them soon anyway
        self.budgets = budgets  # (budget, cost of a job) pairs: --max-runs, --max-credits
        self._failure_streak = 0  # transient create failures since the last success
        self._lost_streak = 0  # creates whose answers were lost since a run id was last answered

    async def create(self, job: PendingJob) -> CreateOutcome:
        """Create a run for ``job``; see the module docstring for what can become of it."""
        spec, attempts = job.spec, job.attempts
        failures = 0
        # Until one create has succeeded, a job keeps the gate through all its tries.
        async with self.gate.admit():
            while True:
                ticket = await self.throttle.wait_create()
                if self._stopping():
                    self.throttle.done(ticket)
                    return CreateOutcome(Result.DROPPED, PendingJob(spec, attempts))
                reserved = await self._reserve(spec)
                if isinstance(reserved, CapReached):
                    return CreateOutcome(Result.CAPPED, PendingJob(spec, attempts), error=reserved)
                sent = _Attempt(self, spec, reserved, ticket)
                try:
                    info = await self.client.create_run(spec, before_send=sent.begin)
                except _PauseBegan:
                    sent.forget()  # never sent: it waits for a slot again
                    continue
                except RateLimited as exc:
                    sent.forget()
                    self.stats.rate_limited += 1
                    pause = self.throttle.rate_limited(exc.retry_after, create=True, ticket=ticket)
                    self.events.emit(
                        "throttled",
                        what="create",
                        job_id=spec.job_id,
                        run_id=None,
                        pause=pause,
                        **self.throttle.state(),
                    )
                    continue
                except TransientError as exc:
                    failures += 1
                    self._failure_streak += 1
                    if exc.maybe_created and sent.attempt_id is not None:
                        attempts += 1
                        self.stats.unknown_creates += 1
                        self._lost_streak += 1
                        give_up = attempts >= self.max_attempts
                        error = f"the create was sent but its answer lost; the run may exist: {exc.message}"
                        sent.end(AttemptStatus.UNKNOWN, error, job_failed=give_up, kind="unknown")
                        if give_up:
                            self.events.emit(
                                "failed", job_id=spec.job_id, run_id=None, error=error, error_kind="unknown"
                            )
                        if self._lost_streak >= LOST_STREAK:
                            return self._answers_lost(spec, attempts, exc, failed=give_up)
                        if give_up:
                            return CreateOutcome(Result.FAILED, PendingJob(spec, attempts))
                    else:
                        sent.forget()
                        if failures >= MAX_CREATE_TRIES:
                            if self._failure_streak >= API_DOWN_STREAK:
                                # Not this job's fault: stop the batch, the job stays pending.
                                return CreateOutcome(Result.API_DOWN, PendingJob(spec, attempts), error=exc)
                            if not self.gate.is_open:
                                # No create has worked yet: let another job try before blaming this one.
                                return CreateOutcome(Result.REQUEUE, PendingJob(spec, attempts))
                            kind = "rate_limit" if exc.status == 429 else "server_error"
                            error = f"create kept failing: {exc.message}"
                            self.ledger.job_failed(spec.job_id, error, kind)
                            self.events.emit("failed", job_id=spec.job_id, run_id=None, error=error, error_kind=kind)
                            return CreateOutcome(Result.FAILED, PendingJob(spec, attempts))
                    self.stats.retries += 1
                    self.events.emit(
                        "retried", what="create", job_id=spec.job_id, error=exc, tries=self._failure_streak
                    )
                    await anyio.sleep(backoff(failures, base=self.backoff_base))
                    continue
                except Unauthorized as exc:
                    sent.forget()
                    return CreateOutcome(Result.UNAUTHORIZED, PendingJob(spec, attempts), error=exc)
                except AccountError as exc:
                    sent.forget()
                    return CreateOutcome(Result.ACCOUNT, PendingJob(spec, attempts), error=exc)
                except UnusableRun as exc:  # a run made that cannot be polled: another would be the same
                    attempts += 1
                    self.stats.unknown_creates += 1
                    error = f"{exc.message}; no other run is bought for this job (the API would answer alike)"
                    sent.end(AttemptStatus.UNKNOWN, error, job_failed=True, kind="unknown")
                    self.events.emit("failed", job_id=spec.job_id, run_id=None, error=error, error_kind="unknown")
                    return CreateOutcome(Result.FAILED, PendingJob(spec, attempts))
                except JobError as exc:  # 400: the API refuses this job's input
                    attempts += 1
                    sent.end(AttemptStatus.REJECTED, exc.message, job_failed=True, kind="rejected")
                    self.events.emit(
                        "failed", job_id=spec.job_id, run_id=None, error=exc.message, error_kind="rejected"
                    )
                    return CreateOutcome(Result.FAILED, PendingJob(spec, attempts))
                else:
                    self.throttle.accepted(create=True, ticket=ticket)
                finally:
                    sent.answered()
                    self.throttle.done(ticket)  # any other answer tells the pace nothing
                # No await between the answer and this commit: the run id cannot be lost.
                attempt_id = sent.created(info.run_id)
                attempts += 1
                self.gate.open()
                self._failure_streak = self._lost_streak = 0
                self.stats.created += 1
                return CreateOutcome(Result.CREATED, PendingJob(spec, attempts), attempt_id, info.run_id)

    def _answers_lost(self, spec: JobSpec, attempts: int, exc: TransientError, *, failed: bool) -> CreateOutcome:
        """LOST_STREAK answers lost in a row: stop the batch before buying more runs nobody hears of."""
        if failed:  # (its 'failed' event is emitted): counted here, as the scheduler counts a FAILED outcome
            self.stats.failed += 1
        streak = self._lost_streak
        error = TransientError(
            f"{streak} creates in a row were sent and got no answer (the last: {exc.message.rstrip('. ')}); each "
            "may have made a run that is charged (counted as possible double charges), so no more were sent",
            status=exc.status,
        )
        return CreateOutcome(Result.API_DOWN, PendingJob(spec, attempts), error=error)

    async def _reserve(self, spec: JobSpec) -> list[tuple[Budget, float]] | CapReached:
        """Reserve this create's cost in every budget, or say which one is used up."""
        reserved: list[tuple[Budget, float]] = []
        for budget, cost_of in self.budgets:
            cost = cost_of(spec)
            if not await budget.reserve(cost):
                for other, other_cost in reserved:
                    other.give_back(other_cost)
                used = plural(budget.spent, budget.unit.removesuffix("s"), budget.unit)
                return CapReached(f"--max-{budget.unit} {budget.limit:g} reached ({budget.spent:g} {used} used)")
            reserved.append((budget, cost))
        return reserved


class _PauseBegan(Exception):
    """A 429's pause began while a create waited for its attempt to be committed: it must not go."""


class _Attempt:
    """One create request's attempt row: begun just before the request leaves, then
    ended one way or another. Left 'creating' only if the task is cancelled while
    the request may be on the wire; the next run records it as unknown.

    It also settles the create's reservations in the budgets: kept when a run was
    made or may have been, given back when the API certainly made none."""

    def __init__(self, creator: Creator, spec: JobSpec, reserved: list[tuple[Budget, float]], ticket: Send):
        self._creator = creator
        self._spec = spec
        self._reserved = reserved
        self._ticket = ticket
        self.attempt_id: int | None = None

    def _settle(self, *, spent: bool) -> None:
        for budget, cost in self._reserved:
            budget.keep(cost) if spent else budget.give_back(cost)
        self._reserved = []

    async def begin(self) -> None:
        """Called with a connection slot in hand, just before the request leaves: the attempt
        is committed first, and counts as on the wire from here."""
        self.attempt_id = self._creator.ledger.begin_attempt(self._spec)
        self._creator.on_the_wire += 1
        await self._creator.durable()
        # The commit may have taken a while: a 429 may have paused everyone since this create
        # got its slot, and other creates may be leaving with it.
        if not await self._creator.throttle.may_send(self._ticket):
            raise _PauseBegan

    def answered(self) -> None:
        """The request is over (answered, failed, or cancelled): whatever is not settled yet is kept
        if the request may have left, given back if it never did."""
        if self.attempt_id is not None:
            self._creator.on_the_wire -= 1
        self._settle(spent=self.attempt_id is not None)

    def forget(self) -> None:
        """The create certainly made no run: the attempt goes, and soon, not at the next create (a 429
        pause may be long, and a kill meanwhile must not find it still 'creating')."""
        self._settle(spent=False)
        if self.attempt_id is not None:
            self._creator.ledger.not_created(self.attempt_id, self._spec.job_id)
            self._creator.poke()

    def end(self, status: AttemptStatus, error: str, *, job_failed: bool, kind: str) -> None:
        assert self.attempt_id is not None
        self._settle(spent=status is not AttemptStatus.REJECTED)
        self._creator.ledger.attempt_ended(
            self.attempt_id, self._spec.job_id, status, error, job_failed=job_failed, kind=kind
        )
        self._creator.poke()

    def created(self, run_id: str) -> int:
        assert self.attempt_id is not None
        self._creator.ledger.run_created(self.attempt_id, run_id, self._spec)
        return self.attempt_id
