"""The task group that drives a batch: a feeder, submitters, one poller, downloaders.

    ledger pages ─▶ feeder ─▶ submitters (≤ concurrency runs in flight)
                      ▲            │ create ─▶ run id committed
                      │ retries    ▼
                      └──────── poller ─▶ downloaders ─▶ files + ledger

Memory stays flat whatever the manifest's size: the feeder reads pending jobs
from the ledger a page at a time, and only runs in flight are held.

How a batch stops:
* done: nothing left to feed and nothing in flight;
* account (402/403): creating stops at once; runs already paid for are still
  polled and downloaded; then the batch ends;
* 401: at once;
* interrupt: creating stops; creates already sent get a few seconds to answer
  so their run ids are recorded; everything else is cancelled. Every state
  change was already committed, so the next run resumes from the ledger.

Job failures are recorded, never raised. Batch-level errors (ledger, output
folder, account) end the batch through ``_fatal`` rather than escaping the group.
"""

from __future__ import annotations

import enum
import heapq
import math
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .api import RunbaseClient
from .errors import (
    AccountError,
    BatchgenError,
    DownloadRefused,
    JobError,
    OutputError,
    RateLimited,
    RunNotFound,
    TransientError,
    Unauthorized,
)
from .ledger import Ledger, OpenRun, PendingJob, SavedOutput
from .models import RunInfo
from .outputs import PartialFile, UnsafeName, extension_for, output_name
from .throttle import GentleStart, PollPlanner, Throttle, backoff

MAX_CREATE_TRIES = 6  # transient failures of one create before the job fails
# Creates failing in a row across the whole batch, with no success between them, that
# mean the API itself is down rather than one job's input upsetting it.
API_DOWN_STREAK = 2 * MAX_CREATE_TRIES
MAX_DOWNLOAD_TRIES = 5
MAX_SUBMITTERS = 32
MAX_DOWNLOADERS = 16
INTERRUPT_GRACE = 3.0  # seconds creates already sent get to answer after Ctrl-C


class Outcome(enum.Enum):
    DONE = "done"
    ACCOUNT = "stopped by the account"
    UNAUTHORIZED = "unauthorized"
    INTERRUPTED = "interrupted"
    UNAVAILABLE = "the API kept failing"
    ERROR = "error"


@dataclass
class BatchStats:
    succeeded: int = 0
    failed: int = 0
    created: int = 0
    unknown_creates: int = 0  # creates whose answer never came: possible double charges
    rate_limited: int = 0
    retries: int = 0  # transient failures retried (creates, polls, downloads)
    failed_runs: int = 0  # runs that failed or vanished and were tried again or gave up
    polls: int = 0
    last_poll_age: float = 0.0
    first_delay: float = 0.0
    downloads: int = 0
    url_refreshes: int = 0
    in_flight: int = 0


@dataclass(eq=False)
class _Run:
    """A run created and not yet finished with."""

    job: PendingJob
    attempt_id: int
    run_id: str
    created_at: float  # on the scheduler's clock
    due: float = 0.0
    errors: int = 0
    polls: int = 0
    last_poll_age: float = 0.0
    first_delay: float = 0.0
    adopted: bool = False  # created by an earlier session: its first poll teaches nothing


@dataclass
class _Slots:
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


class Scheduler:
    def __init__(
        self,
        *,
        ledger: Ledger,
        client: RunbaseClient,
        output_dir: Path,
        concurrency: int,
        max_attempts: int,
        throttle: Throttle,
        run_timeout: float = 900.0,
        planner: PollPlanner | None = None,
        backoff_base: float = 0.5,
    ):
        self.ledger = ledger
        self.client = client
        self.output_dir = output_dir
        self.max_attempts = max_attempts
        self.throttle = throttle
        self.run_timeout = run_timeout
        self.planner = planner or PollPlanner()
        self.backoff_base = backoff_base
        self.stats = BatchStats()
        self.outcome = Outcome.DONE
        self.error: BatchgenError | None = None
        self._slots = _Slots(concurrency)
        self._workers = max(1, min(concurrency, MAX_SUBMITTERS))
        self._downloaders = max(1, min(concurrency, MAX_DOWNLOADERS))
        self._gate = GentleStart()
        self._clock = anyio.current_time
        self._stopping = False  # no new creates
        self._interrupted = False
        self._active_jobs = 0  # handed out and not yet succeeded or failed for good
        self._creating = 0
        self._create_failure_streak = 0  # transient create failures since the last success
        self._downloading = 0
        self._retry: deque[PendingJob] = deque()
        self._in_flight: dict[str, _Run] = {}
        self._poll_heap: list[tuple[float, int, _Run]] = []
        self._poll_seq = 0
        self._changed_event = anyio.Event()
        self._finished = anyio.Event()
        self._download_send: MemoryObjectSendStream[tuple[_Run, RunInfo]] | None = None

    # -- lifecycle -----------------------------------------------------------

    async def run(self, open_runs: list[OpenRun]) -> Outcome:
        """Run the batch to its end; returns why it ended (``self.error`` says more)."""
        job_send, job_receive = anyio.create_memory_object_stream[PendingJob](0)
        download_send, download_receive = anyio.create_memory_object_stream[tuple[_Run, RunInfo]](math.inf)
        self._download_send = download_send
        async with download_send, download_receive, job_receive, anyio.create_task_group() as tg:
            for open_run in open_runs:
                self._adopt(open_run)
            tg.start_soon(self._guard, self._feed(job_send))
            for _ in range(self._workers):
                tg.start_soon(self._guard, self._submit_loop(job_receive.clone()))
            tg.start_soon(self._guard, self._poll_loop())
            for _ in range(self._downloaders):
                tg.start_soon(self._guard, self._download_loop(download_receive.clone()))
            await self._finished.wait()
            tg.cancel_scope.cancel()
        return self.outcome

    def interrupt(self) -> None:
        """Stop creating; end once creates already sent have answered (or after a grace)."""
        self._stop_soon(Outcome.INTERRUPTED)

    def _stop_soon(self, outcome: Outcome, error: BatchgenError | None = None) -> None:
        """End as soon as no create is awaiting its answer; runs in flight stay recorded."""
        if self._finished.is_set():
            return
        self._stopping = True
        self._interrupted = True
        if self.outcome in (Outcome.DONE, Outcome.ACCOUNT, Outcome.UNAVAILABLE):
            self.outcome = outcome
            self.error = error or self.error
        self._changed()

    def _backoff(self, attempt: int, cap: float = 60.0) -> float:
        return backoff(attempt, base=self.backoff_base, cap=cap)

    def force_finish(self) -> None:
        """End now, even with creates still unanswered (they are recorded as unknown next run)."""
        self._finished.set()

    async def _guard(self, work) -> None:  # type: ignore[no-untyped-def]
        try:
            await work
        except (BatchgenError, OSError) as exc:
            if isinstance(exc, OSError):
                exc = OutputError(f"cannot write to {self.output_dir}: {exc.strerror or exc}")
            self._fatal(exc, Outcome.ERROR)

    def _fatal(self, error: BatchgenError, outcome: Outcome) -> None:
        if self.error is None:
            self.error, self.outcome = error, outcome
        self._stopping = True
        self._finished.set()

    def _stop_creating(self, error: AccountError) -> None:
        if not self._stopping:
            self.error, self.outcome = error, Outcome.ACCOUNT
        self._stopping = True
        self._changed()

    def _changed(self) -> None:
        """Something moved: wake the feeder and poller, and see whether the batch is over."""
        self.stats.in_flight = len(self._in_flight)
        self._changed_event.set()
        self._changed_event = anyio.Event()
        if self._interrupted:
            if self._creating == 0:
                self._finished.set()
        elif self._stopping:
            if self._creating == 0 and not self._in_flight and self._downloading == 0:
                self._finished.set()

    # -- feeding ---------------------------------------------------------------

    async def _feed(self, send: MemoryObjectSendStream[PendingJob]) -> None:
        async with send:
            page: deque[PendingJob] = deque()
            after, exhausted = -1, False
            while not self._stopping:
                changed = self._changed_event
                if self._retry:
                    job = self._retry.popleft()
                else:
                    if not page and not exhausted:
                        rows = self.ledger.pending_page(after)
                        exhausted = not rows
                        if rows:
                            after = rows[-1][0]
                            page.extend(job for _, job in rows)
                    if not page:
                        if self._active_jobs == 0:
                            self._finished.set()  # nothing left anywhere
                            return
                        await changed.wait()
                        continue
                    job = page.popleft()
                    self._active_jobs += 1
                await send.send(job)

    def _job_finished(self) -> None:
        self._active_jobs -= 1
        self._changed()

    # -- creating runs -------------------------------------------------------------

    async def _submit_loop(self, receive: MemoryObjectReceiveStream[PendingJob]) -> None:
        async with receive:
            async for job in receive:
                if not self._stopping:
                    await self._slots.acquire()
                    if not self._stopping:
                        await self._create(job)
                        continue
                    self._slots.release()
                self._job_finished()  # dropped: it stays pending in the ledger

    async def _create(self, job: PendingJob) -> None:
        """Create a run for ``job``; on return it is in flight, done with, or back to pending."""
        spec = job.spec
        attempts = job.attempts
        open_attempt: int | None = None  # committed as 'creating', outcome not yet recorded
        sending = False  # True only while a create request may be in the air
        failures = 0
        self._creating += 1
        try:
            # Until one create has succeeded, a job keeps the gate through all its tries.
            async with self._gate.admit():
                while True:
                    await self.throttle.wait_create()
                    if self._stopping:
                        return self._drop_slot_and_job()
                    if open_attempt is None:
                        open_attempt = self.ledger.begin_attempt(spec)
                        attempts += 1
                    sending = True
                    try:
                        info = await self.client.create_run(spec)
                    except RateLimited as exc:
                        sending = False
                        self.stats.rate_limited += 1
                        self.throttle.rate_limited(exc.retry_after, create=True)
                        continue
                    except TransientError as exc:
                        sending = False
                        failures += 1
                        self._create_failure_streak += 1
                        if exc.maybe_created:
                            self.stats.unknown_creates += 1
                            give_up = attempts >= self.max_attempts
                            error = f"the create was sent but its answer lost; the run may exist: {exc.message}"
                            self.ledger.attempt_ended(open_attempt, spec.job_id, "unknown", error, job_failed=give_up)
                            open_attempt = None
                            if give_up:
                                return self._fail_job_now()
                        elif failures >= MAX_CREATE_TRIES:
                            self.ledger.not_created(open_attempt, spec.job_id)
                            open_attempt, attempts = None, attempts - 1
                            if self._create_failure_streak >= API_DOWN_STREAK:
                                # Not this job's fault: stop the batch, the job stays pending.
                                self._stop_soon(Outcome.UNAVAILABLE, exc)
                                return self._drop_slot_and_job()
                            if not self._gate.is_open:
                                # No create has worked yet: let another job try before blaming this one.
                                self._retry.append(PendingJob(spec, attempts))
                                self._slots.release()
                                return
                            self.ledger.job_failed(spec.job_id, f"create kept failing: {exc.message}")
                            return self._fail_job_now()
                        self.stats.retries += 1
                        await anyio.sleep(self._backoff(failures))
                        continue
                    except Unauthorized as exc:
                        sending = False
                        return self._fatal(exc, Outcome.UNAUTHORIZED)
                    except AccountError as exc:
                        sending = False
                        self._stop_creating(exc)
                        return self._drop_slot_and_job()
                    except JobError as exc:  # 400: the API refuses this job's input
                        sending = False
                        self.ledger.attempt_ended(open_attempt, spec.job_id, "rejected", exc.message, job_failed=True)
                        open_attempt = None
                        return self._fail_job_now()
                    # No await between the answer and this commit: the run id cannot be lost.
                    sending = False
                    attempt_id, open_attempt = open_attempt, None
                    self.ledger.run_created(attempt_id, info.run_id)
                    self._gate.open()
                    self._create_failure_streak = 0
                    self.throttle.accepted(create=True)
                    self.stats.created += 1
                    run = _Run(PendingJob(spec, attempts), attempt_id, info.run_id, self._clock())
                    run.first_delay = self.planner.next_poll(0.0)
                    self._track(run, run.first_delay)
                    return
        finally:
            # Certainly never sent (refused, or cancelled while waiting): forget the attempt.
            # Cancelled mid-request: leave it 'creating'; the next run records it as unknown.
            if open_attempt is not None and not sending:
                self.ledger.not_created(open_attempt, spec.job_id)
            self._creating -= 1
            self._changed()

    def _drop_slot_and_job(self) -> None:
        self._slots.release()
        self._job_finished()

    def _fail_job_now(self) -> None:
        self.stats.failed += 1
        self._drop_slot_and_job()

    # -- polling ---------------------------------------------------------------

    def _adopt(self, open_run: OpenRun) -> None:
        """A run an earlier session created: poll it now instead of paying again."""
        age = max(0.0, time.time() - (open_run.created_at or time.time()))
        run = _Run(open_run.job, open_run.attempt_id, open_run.run_id, self._clock() - age, adopted=True)
        self._slots.take()
        self._active_jobs += 1
        self._track(run, 0.0)

    def _track(self, run: _Run, delay: float) -> None:
        self._in_flight[run.run_id] = run
        self._schedule(run, delay)

    def _schedule(self, run: _Run, delay: float) -> None:
        run.due = self._clock() + delay
        self._poll_seq += 1
        heapq.heappush(self._poll_heap, (run.due, self._poll_seq, run))
        self._changed()

    async def _poll_loop(self) -> None:
        async with anyio.create_task_group() as tg:
            while True:
                changed = self._changed_event
                now = self._clock()
                while self._poll_heap and self._poll_heap[0][0] <= now:
                    due, _, run = heapq.heappop(self._poll_heap)
                    if run.due == due and self._in_flight.get(run.run_id) is run:
                        tg.start_soon(self._guard, self._poll(run))
                wait = self._poll_heap[0][0] - now if self._poll_heap else math.inf
                with anyio.move_on_after(wait):
                    await changed.wait()

    async def _poll(self, run: _Run) -> None:
        await self.throttle.wait_api()
        try:
            info = await self.client.get_run(run.run_id)
        except RateLimited as exc:
            self.stats.rate_limited += 1
            self._schedule(run, self.throttle.rate_limited(exc.retry_after, create=False) + 0.01)
            return
        except TransientError:
            run.errors += 1
            self.stats.retries += 1
            if self._clock() - run.created_at > self.run_timeout:
                return self._run_failed(run, f"no answer about run {run.run_id} for {self.run_timeout:.0f} s")
            self._schedule(run, self._backoff(run.errors, cap=30.0))
            return
        except RunNotFound:
            return self._run_failed(run, f"run {run.run_id} no longer exists (404)")
        except Unauthorized as exc:
            return self._fatal(exc, Outcome.UNAUTHORIZED)
        except AccountError as exc:  # 403 on a poll: we cannot even watch our runs
            return self._fatal(exc, Outcome.ACCOUNT)
        self.throttle.accepted(create=False)
        self.stats.polls += 1
        run.errors = 0
        age = self._clock() - run.created_at
        if not run.adopted:
            if run.polls == 0:
                # The delay it was scheduled at: the age at the answer also counts our own lag.
                self.planner.first_poll_result(info.finished, run.first_delay)
            elif info.finished:
                self.planner.finished_between(run.last_poll_age, age)
            else:
                self.planner.still_running(age)
        run.polls += 1
        run.last_poll_age = age
        if info.succeeded:
            self._downloading += 1  # before _untrack: a stopping batch must wait for this download
            self._untrack(run)
            assert self._download_send is not None
            self._download_send.send_nowait((run, info))
        elif info.failed:
            self._run_failed(run, info.error or f"run {run.run_id} ended '{info.status}'")
        elif age > self.run_timeout:
            self._run_failed(run, f"run {run.run_id} still '{info.status}' after {self.run_timeout:.0f} s")
        else:
            self._schedule(run, self.planner.next_poll(age))

    def _untrack(self, run: _Run) -> None:
        if self._in_flight.pop(run.run_id, None) is run:
            self._slots.release()
        self._changed()

    def _run_failed(self, run: _Run, error: str, *, retry: bool = True) -> None:
        """The attempt is over without outputs: try a new run if attempts are left."""
        self._untrack(run)
        self.stats.failed_runs += 1
        give_up = not retry or run.job.attempts >= self.max_attempts
        self.ledger.attempt_ended(run.attempt_id, run.job.spec.job_id, "failed", error, job_failed=give_up)
        if give_up:
            self.stats.failed += 1
            self._job_finished()
        else:
            self._retry.append(run.job)
            self._changed()

    # -- downloading -------------------------------------------------------------

    async def _download_loop(self, receive: MemoryObjectReceiveStream[tuple[_Run, RunInfo]]) -> None:
        async with receive:
            async for run, info in receive:
                try:
                    await self._save_outputs(run, info)
                finally:
                    self._downloading -= 1
                    self._changed()

    async def _save_outputs(self, run: _Run, info: RunInfo) -> None:
        urls = list(info.urls)
        if not urls:
            return self._run_failed(run, f"run {run.run_id} succeeded without output URLs")
        saved: list[SavedOutput] = []
        refreshed = False
        n = tries = 0
        while n < len(urls):
            try:
                saved.append(await self._download(run, urls[n], n, len(urls)))
                n, tries = n + 1, 0
            except DownloadRefused as exc:
                # Signed URLs expire: ask the API for fresh ones once before giving up.
                if refreshed:
                    return self._run_failed(run, f"download refused: {exc.message}")
                refreshed = True
                self.stats.url_refreshes += 1
                fresh = await self._refresh(run)
                if fresh is None or len(fresh.urls) != len(urls):
                    return self._run_failed(run, f"download refused and no fresh URLs: {exc.message}")
                urls = list(fresh.urls)
            except TransientError as exc:
                tries += 1
                if tries >= MAX_DOWNLOAD_TRIES:
                    return self._run_failed(run, f"download kept failing: {exc.message}")
                self.stats.retries += 1
                await anyio.sleep(self._backoff(tries))
            except UnsafeName as exc:
                return self._run_failed(run, str(exc), retry=False)
        self.ledger.job_succeeded(run.attempt_id, run.job.spec.job_id, saved)
        self.stats.succeeded += 1
        self._job_finished()

    async def _download(self, run: _Run, url: str, n: int, total: int) -> SavedOutput:
        job_id = run.job.spec.job_id
        with PartialFile(self.output_dir, job_id) as part:
            download = await self.client.download(url, part)
            self.stats.downloads += 1
            name = output_name(job_id, n, total, extension_for(download.content_type, url))
            return part.commit(name, n, download.content_type or "application/octet-stream")

    async def _refresh(self, run: _Run) -> RunInfo | None:
        for attempt in range(1, 4):
            await self.throttle.wait_api()
            try:
                info = await self.client.get_run(run.run_id)
            except RateLimited as exc:
                self.throttle.rate_limited(exc.retry_after, create=False)
                continue
            except TransientError:
                await anyio.sleep(self._backoff(attempt))
                continue
            except (JobError, AccountError):
                return None
            return info if info.succeeded else None
        return None
