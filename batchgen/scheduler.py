"""The task group that drives a batch: a feeder, submitters, one poller, savers.

    ledger pages ─▶ feeder ─▶ submitters (≤ concurrency runs in flight)
                      ▲            │ Creator: create ─▶ run id committed
                      │ retries    ▼
                      └──────── poller ─▶ savers (OutputSaver) ─▶ files + ledger

Which run is polled when, and what a poll's answer means, is ``batchgen.polling``'s.

Memory stays flat whatever the manifest's size: the feeder reads pending jobs
from the ledger a page at a time, and only runs in flight are held.

The batch is in one of four stop states (``Stop``):

* ``RUNNING``: creating runs and collecting them;
* ``DRAINING``: no new creates; runs already paid for are still polled and
  saved, then the batch ends (the account said 402/403);
* ``HALTING``: no new creates; the batch ends as soon as no create is on the
  wire, so their run ids are recorded (Ctrl-C, the API down); runs in flight
  stay recorded for the next run;
* ``FINISHED``: over; ``outcome`` and ``error`` say why.

Job failures are recorded, never raised. Batch-level errors (ledger, output
folder, account) end the batch through ``_fatal`` rather than escaping the group.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .api import RunbaseClient
from .committer import Committer
from .creating import CreateOutcome, Creator, Result
from .errors import (
    BatchgenError,
    FilesRefused,
    Misaddressed,
    OutputError,
    TransientError,
)
from .events import Events
from .ledger import Ledger
from .models import AttemptStatus, BatchStats, JobSpec, OpenRun, Outcome, PendingJob, RunInfo, SavedOutput
from .outputs import write_sidecar
from .polling import (
    NOT_FOUND_GRACE as NOT_FOUND_GRACE,  # re-exported: the runner's default
    Poller,
    Run,
    Slots,
)
from .pricing import Budget
from .references import ReferenceCheck
from .reusing import Reuser
from .saving import OutputSaver, SaveFailed
from .throttle import PollPlanner, Throttle

MAX_SUBMITTERS = 32
MAX_SAVERS = 16
INTERRUPT_GRACE = 3.0  # seconds creates already sent get to answer after Ctrl-C

# Which reason for ending wins when several come: the more serious, the later in this list.
_PRECEDENCE = (
    Outcome.DONE,
    Outcome.RUNS_KEPT,
    Outcome.CAPPED,
    Outcome.ACCOUNT,
    Outcome.MANIFEST,
    Outcome.UNAVAILABLE,
    Outcome.INTERRUPTED,
    Outcome.UNAUTHORIZED,
    Outcome.ERROR,
)


class Stop(enum.Enum):
    RUNNING = "running"
    DRAINING = "draining"
    HALTING = "halting"
    FINISHED = "finished"


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
        reading_manifest: bool = False,
        not_found_grace: float = NOT_FOUND_GRACE,
        on_file: Callable[[JobSpec, str, SavedOutput], None] | None = None,
        reuser: Reuser | None = None,
        budgets: Sequence[tuple[Budget, Callable[[JobSpec], float]]] = (),
        sidecars: bool = False,
        references: ReferenceCheck | None = None,
        events: Events | None = None,
    ):
        self.ledger = ledger
        self.output_dir = output_dir
        self.max_attempts = max_attempts
        self.sidecars = sidecars
        self.references = references  # reference images asked before their job is paid for
        self.stats = BatchStats()
        self.events = events if events is not None else Events()
        self.reuser = reuser
        self.committer = Committer(ledger, also=reuser.flush if reuser is not None else None)
        self.stop = Stop.RUNNING
        self.outcome = Outcome.DONE
        self.error: BatchgenError | None = None
        self.creator = Creator(
            client=client,
            ledger=ledger,
            throttle=throttle,
            stats=self.stats,
            max_attempts=max_attempts,
            stopping=lambda: self.stop is not Stop.RUNNING,
            durable=self.committer.durable,
            poke=self.committer.poke,
            backoff_base=backoff_base,
            budgets=budgets,
            events=self.events,
        )
        self.saver = OutputSaver(
            client=client,
            output_dir=output_dir,
            throttle=throttle,
            stats=self.stats,
            backoff_base=backoff_base,
            on_file=on_file,
        )
        self._slots = Slots(concurrency)
        self.poller = Poller(
            client=client,
            throttle=throttle,
            planner=planner or PollPlanner(),
            stats=self.stats,
            events=self.events,
            slots=self._slots,
            run_timeout=run_timeout,
            backoff_base=backoff_base,
            not_found_grace=not_found_grace,
            changed=self._changed,
            wake=lambda: self._changed_event,
            on_succeeded=self._succeeded,
            on_failed=self._run_failed,
            on_unreachable=lambda run, error: self._keep_run(run, error, "poll"),
            on_fatal=self._fatal,
        )
        throttle.limit_runs(concurrency)
        self._workers = max(1, min(concurrency, MAX_SUBMITTERS))
        self._savers = max(1, min(concurrency, MAX_SAVERS))
        self._reading_manifest = reading_manifest  # more pending jobs may still arrive from the manifest
        self._active_jobs = 0  # handed out and not yet succeeded or failed for good
        self._creating = 0  # submitters inside a create (waiting for the pace, or on the wire)
        self._saving = 0
        self._retry: deque[PendingJob] = deque()
        self._parked: list[tuple[Run, str]] = []  # runs whose links were refused, until it shows whose fault it is
        self._leaders: dict[str, str] = {}  # spec hash -> the job making that request's image now
        self._followers: dict[str, list[PendingJob]] = {}  # spec hash -> jobs waiting to reuse it
        self._changed_event = anyio.Event()
        self._finished = anyio.Event()
        self._save_send: MemoryObjectSendStream[tuple[Run, RunInfo]] | None = None

    # -- lifecycle -----------------------------------------------------------

    async def run(self, open_runs: list[OpenRun]) -> Outcome:
        """Run the batch to its end; returns why it ended (``self.error`` says more)."""
        job_send, job_receive = anyio.create_memory_object_stream[PendingJob](0)
        save_send, save_receive = anyio.create_memory_object_stream[tuple[Run, RunInfo]](math.inf)
        self._save_send = save_send
        async with save_send, save_receive, job_receive, anyio.create_task_group() as tg:
            for open_run in open_runs:
                self._adopt(open_run)
            tg.start_soon(self._guard, self.committer.run())
            tg.start_soon(self._guard, self._feed(job_send))
            for _ in range(self._workers):
                tg.start_soon(self._guard, self._submit_loop(job_receive.clone()))
            tg.start_soon(self._guard, self._poll_loop())
            for _ in range(self._savers):
                tg.start_soon(self._guard, self._save_loop(save_receive.clone()))
            await self._finished.wait()
            tg.cancel_scope.cancel()
        return self.outcome

    def interrupt(self) -> None:
        """Stop creating; end once creates already sent have answered (or after a grace)."""
        self._end(Stop.HALTING, Outcome.INTERRUPTED)

    def force_finish(self) -> None:
        """End now, even with creates still unanswered (they are recorded as unknown next run)."""
        self._end(Stop.FINISHED, Outcome.INTERRUPTED)

    def more_jobs(self) -> None:
        """The manifest reader committed another chunk of jobs."""
        self._changed()

    def manifest_read(self) -> None:
        self._reading_manifest = False
        self._changed()

    def manifest_rejected(self, error: BatchgenError) -> None:
        """The manifest turned out to have problems: create nothing more, collect what is paid for."""
        self._reading_manifest = False
        self._end(Stop.DRAINING, Outcome.MANIFEST, error)

    def _end(self, stop: Stop, outcome: Outcome, error: BatchgenError | None = None) -> None:
        """Move towards the end: the stop state only ever advances, the most serious reason wins."""
        if _PRECEDENCE.index(outcome) > _PRECEDENCE.index(self.outcome):
            self.outcome = outcome
            self.error = error or self.error
        elif self.error is None:
            self.error = error
        order = list(Stop)
        if self.stop is Stop.RUNNING and stop is not Stop.RUNNING and outcome is not Outcome.DONE:
            reason = "wrong API address" if isinstance(error, Misaddressed) else outcome.value  # not the account's
            reason = "the file host refuses every image" if isinstance(error, FilesRefused) else reason
            self.events.emit("stopped", reason=reason, error=None if error is None else str(error))
        if order.index(stop) > order.index(self.stop):
            self.stop = stop
        self._changed()

    def _fatal(self, error: BatchgenError, outcome: Outcome) -> None:
        self._end(Stop.FINISHED, outcome, error)

    async def _guard(self, work: Awaitable[None]) -> None:
        try:
            await work
        except (BatchgenError, OSError) as exc:
            if isinstance(exc, OSError):
                exc = OutputError(f"cannot write to {self.output_dir}: {exc.strerror or exc}")
            self._fatal(exc, Outcome.ERROR)

    def _changed(self) -> None:
        """Something moved: wake the feeder and poller, and see whether the batch is over."""
        self.stats.in_flight = len(self.poller.in_flight)
        self.committer.poke()
        self._changed_event.set()
        self._changed_event = anyio.Event()
        if self.stop is Stop.HALTING and self.creator.on_the_wire == 0:
            self.stop = Stop.FINISHED
        elif self.stop is Stop.DRAINING and self._creating == 0 and not self.poller.in_flight and self._saving == 0:
            self.stop = Stop.FINISHED
        if self.stop is Stop.FINISHED:
            self._finished.set()

    # -- feeding ---------------------------------------------------------------

    async def _feed(self, send: MemoryObjectSendStream[PendingJob]) -> None:
        async with send:
            page: deque[PendingJob] = deque()
            after, exhausted = -1, False
            while self.stop is Stop.RUNNING:
                changed = self._changed_event
                if self._retry:
                    job = self._retry.popleft()
                else:
                    if not page and (not exhausted or self._reading_manifest):
                        rows = self.ledger.pending_page(after)
                        exhausted = not rows
                        if rows:
                            after = rows[-1][0]
                            page.extend(job for _, job in rows)
                    if not page:
                        if self._active_jobs == 0 and not self._reading_manifest:
                            self._end(Stop.FINISHED, Outcome.DONE)  # nothing left anywhere
                            return
                        if self._parked and self._active_jobs == len(self._parked) + self._following():
                            self._unpark()  # nothing else in flight can show whether the host refuses everything
                            continue
                        await changed.wait()
                        continue
                    job = page.popleft()
                    self._active_jobs += 1
                await send.send(job)

    def _job_finished(self, job: PendingJob) -> None:
        """``job`` is done with for this session (succeeded, failed for good, or left pending)."""
        self._active_jobs -= 1
        spec_hash = job.spec.spec_hash()
        if self._leaders.get(spec_hash) == job.spec.job_id:
            # Jobs asking for the same request waited for this one: now they can reuse its image
            # (or, if it failed, one of them makes its own).
            del self._leaders[spec_hash]
            self._retry.extend(self._followers.pop(spec_hash, []))
        self._changed()

    def _write_sidecars(self, spec: JobSpec, run_id: str | None, saved: list[SavedOutput], source: str) -> None:
        """--sidecar: a JSON file next to each image saying what it is, for tools that watch the folder."""
        for image in saved:
            record = {
                "job_id": spec.job_id,
                "prompt": spec.prompt,
                "model": spec.model,
                "input": spec.input,
                "run_id": run_id,
                "source": source,
                "image": image.path,
                "n": image.n,
                "sha256": image.sha256,
                "metadata": spec.metadata,
            }
            write_sidecar(self.output_dir, image, record)

    async def _reused(self, job: PendingJob) -> bool:
        """True when the job was given an identical request's image, or waits for one being made."""
        if self.reuser is None or job.fresh:
            return False
        spec_hash = job.spec.spec_hash()
        leader = self._leaders.get(spec_hash)
        if leader is not None and leader != job.spec.job_id:
            self._followers.setdefault(spec_hash, []).append(job)
            return True
        if leader is None and (reused := await self.reuser.try_reuse(job.spec)) is not None:
            if self.sidecars:
                self._write_sidecars(job.spec, reused[0], reused[1], "reused")
            self.events.emit("succeeded", job_id=job.spec.job_id, run_id=reused[0], reused=True)
            self.stats.reused += 1
            self.stats.succeeded += 1
            self._job_finished(job)
            return True
        self._leaders[spec_hash] = job.spec.job_id
        return False

    # -- creating runs -------------------------------------------------------------

    async def _submit_loop(self, receive: MemoryObjectReceiveStream[PendingJob]) -> None:
        async with receive:
            async for job in receive:
                if self.stop is Stop.RUNNING and await self._reused(job):
                    continue
                if self.stop is Stop.RUNNING and self.references is not None:
                    reason = await self.references.dead_reference(job.spec)
                    if reason is not None:  # the API would fail it too: fail it here, unpaid
                        self.ledger.job_failed(job.spec.job_id, reason, "reference")
                        self.stats.failed += 1
                        self._job_finished(job)
                        continue
                if self.stop is Stop.RUNNING:
                    await self._slots.acquire()
                    if self.stop is Stop.RUNNING:
                        self._creating += 1
                        try:
                            outcome = await self.creator.create(job)
                            if outcome.result is Result.CREATED:
                                await self.committer.durable()  # the run id, before anything waits on the run
                        finally:
                            self._creating -= 1
                        self._created(outcome)
                        continue
                    self._slots.release()
                self._job_finished(job)  # dropped: it stays pending in the ledger

    def _created(self, outcome: CreateOutcome) -> None:
        """Act on what became of a create."""
        result = outcome.result
        if result is Result.CREATED:
            assert outcome.attempt_id is not None and outcome.run_id is not None
            run = self.poller.created(outcome.job, outcome.attempt_id, outcome.run_id)
            self.events.emit("created", job_id=run.job.spec.job_id, run_id=run.run_id, attempt=run.job.attempts)
            return
        self._slots.release()
        if result is Result.REQUEUE:
            self._retry.append(outcome.job)
            self._changed()
            return
        if result is Result.FAILED:
            self.stats.failed += 1
        elif result is Result.UNAUTHORIZED:
            assert outcome.error is not None
            self._fatal(outcome.error, Outcome.UNAUTHORIZED)
        elif result is Result.ACCOUNT:
            self._end(Stop.DRAINING, Outcome.ACCOUNT, outcome.error)
        elif result is Result.API_DOWN:
            self._end(Stop.HALTING, Outcome.UNAVAILABLE, outcome.error)
        elif result is Result.CAPPED:
            self._end(Stop.DRAINING, Outcome.CAPPED, outcome.error)
        self._job_finished(outcome.job)

    # -- polling ---------------------------------------------------------------

    def _adopt(self, open_run: OpenRun) -> None:
        """A run an earlier session created: poll it now instead of paying again."""
        run = self.poller.adopt(open_run)
        self._active_jobs += 1
        self._leaders.setdefault(run.job.spec.spec_hash(), run.job.spec.job_id)

    async def _poll_loop(self) -> None:
        async with anyio.create_task_group() as tg:
            await self.poller.run(lambda run: tg.start_soon(self._guard, self.poller.poll(run)))

    def _succeeded(self, run: Run, info: RunInfo) -> None:
        """A poll saw the run succeed: hand it to the savers."""
        self._saving += 1  # before untrack: a draining batch must wait for this save
        self.poller.untrack(run)
        assert self._save_send is not None
        self._save_send.send_nowait((run, info))

    def _run_failed(self, run: Run, error: str, *, retry: bool = True, kind: str = "run_failed") -> None:
        """The attempt is over without outputs: try a new run if attempts are left."""
        self.poller.untrack(run)
        self.stats.failed_runs += 1
        if run.refetch:  # its files went missing; fetching them again did not work: do not pay for more
            retry, kind = False, "missing"
            error = (
                f"its file is missing and run {run.run_id} no longer serves it ({error}); "
                "`batchgen retry --missing` makes it again with a new run"
            )
        give_up = not retry or run.job.attempts >= self.max_attempts
        self.ledger.attempt_ended(
            run.attempt_id, run.job.spec.job_id, AttemptStatus.FAILED, error, job_failed=give_up, kind=kind
        )
        event = "failed" if give_up else "retried"
        self.events.emit(event, what="run", job_id=run.job.spec.job_id, run_id=run.run_id, error=error, error_kind=kind)
        if give_up:
            self.stats.failed += 1
            self._job_finished(run.job)
        else:
            self._retry.append(run.job)
            self._changed()

    def _keep_run(self, run: Run, error: str, what: str) -> None:
        """Polls of the run, or downloads of its files, kept failing: its attempt stays open in the ledger,
        so the next session polls it and downloads them. A new run now would pay again for what exists."""
        self.poller.untrack(run)
        self.events.emit("retried", what=what, job_id=run.job.spec.job_id, run_id=run.run_id, error=error)
        self._end(Stop.RUNNING, Outcome.RUNS_KEPT, TransientError(error))
        self._job_finished(run.job)

    def _park(self, run: Run, error: str, host_refusing: FilesRefused | None) -> None:
        """Every link of the run stayed refused: the run's fault, or the file host refusing this machine?
        Its attempt stays open until a download comes (``_unpark``: a new run, as for any failed run) or
        REFUSED_STREAK runs in a row are refused: then buy no more runs the host will not let us download,
        and keep them all open for the next session, which downloads them without paying again."""
        self._parked.append((run, error))
        if host_refusing is None:
            return
        # Runs kept for the next session (what `status` says of this one), and no more bought: the API works.
        self._end(Stop.HALTING, Outcome.RUNS_KEPT, host_refusing)
        for parked, reason in self._parked:
            self._keep_run(parked, reason, "download")
        self._parked.clear()

    def _following(self) -> int:
        """Jobs waiting for an identical request's image (``_reused``)."""
        return sum(map(len, self._followers.values()))

    def _unpark(self) -> None:
        parked, self._parked = self._parked, []
        for run, error in parked:
            self._run_failed(run, error, kind="download")

    # -- saving ---------------------------------------------------------------------

    async def _save_loop(self, receive: MemoryObjectReceiveStream[tuple[Run, RunInfo]]) -> None:
        async with receive:
            async for run, info in receive:
                try:
                    await self._save(run, info)
                    if self._parked and self.saver.refused_streak == 0:
                        self._unpark()  # a download came: the host serves, the parked runs' links were their own
                finally:
                    self._saving -= 1
                    self._changed()

    async def _save(self, run: Run, info: RunInfo) -> None:
        try:
            saved = await self.saver.save(run.job.spec, info)
        except SaveFailed as exc:
            if exc.keep_run:
                return self._keep_run(run, exc.message, "download")
            if exc.refused and not run.refetch:
                return self._park(run, exc.message, exc.host_refusing)
            if exc.saved:  # the images that came are listed with the job, which fails naming the dead ones
                self.ledger.job_succeeded(run.attempt_id, run.job.spec.job_id, exc.saved)
            return self._run_failed(run, exc.message, retry=exc.retry, kind="download")
        if self.sidecars:
            self._write_sidecars(run.job.spec, run.run_id, saved, "run")
        self.ledger.job_succeeded(run.attempt_id, run.job.spec.job_id, saved)
        if self.reuser is not None:
            self.reuser.record(run.job.spec, run.run_id, saved)
        if self.events.wants("succeeded"):
            files = [output.path for output in saved]
            self.events.emit("succeeded", job_id=run.job.spec.job_id, run_id=run.run_id, files=files, reused=False)
        self.stats.succeeded += 1
        self._job_finished(run.job)
