"""What the ledger writes: the manifest's jobs, attempts and their runs, files, repairs, sessions.

Every method here queues its statements (``Ledger._queue``) and returns at once;
``Ledger.flush()`` commits them (see store.py for when the scheduler waits for that).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from ..models import AttemptStatus, JobSpec, JobState, SavedOutput, SyncSummary

SYNC_CHUNK = 2000  # jobs per queued upsert while syncing a manifest

_UPSERT_JOB = """
    INSERT INTO jobs (job_id, seq, generation, spec_json, spec_hash, metadata_json, updated_at)
    VALUES (?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (job_id) DO UPDATE SET
      seq = excluded.seq,
      generation = excluded.generation,
      metadata_json = excluded.metadata_json,
      state = CASE WHEN jobs.spec_hash = excluded.spec_hash THEN jobs.state ELSE 'pending' END,
      attempts = CASE WHEN jobs.spec_hash = excluded.spec_hash THEN jobs.attempts ELSE 0 END,
      error = CASE WHEN jobs.spec_hash = excluded.spec_hash THEN jobs.error ELSE NULL END,
      error_kind = CASE WHEN jobs.spec_hash = excluded.spec_hash THEN jobs.error_kind ELSE NULL END,
      updated_at = CASE WHEN jobs.spec_hash = excluded.spec_hash THEN jobs.updated_at ELSE excluded.updated_at END,
      spec_json = excluded.spec_json,
      spec_hash = excluded.spec_hash"""
# Inside DO UPDATE, "jobs.x" is the row as it was: hashes are compared before replacing.


class LedgerWrites:
    """The write methods; mixed into ``Ledger``, which provides the queue and the reads they use."""

    _next_attempt: int
    _next_session: int
    journal: Callable[..., None] | None

    @property
    def generation(self) -> int:  # pragma: no cover - LedgerReads'
        raise NotImplementedError

    def _queue(self, sql: str, params: tuple[Any, ...] = ()) -> None:  # pragma: no cover - Ledger's
        raise NotImplementedError

    def _queue_many(self, sql: str, rows: list[tuple[Any, ...]]) -> None:  # pragma: no cover - Ledger's
        raise NotImplementedError

    def flush(self, *, hold: bool = False) -> None:  # pragma: no cover - Ledger's
        raise NotImplementedError

    def rollback(self) -> None:  # pragma: no cover - Ledger's
        raise NotImplementedError

    def _query(self, sql: str, params: Iterable[Any] = ()) -> Any:  # pragma: no cover - Ledger's
        raise NotImplementedError

    def _meta(self, key: str, default: str) -> str:  # pragma: no cover - LedgerReads'
        raise NotImplementedError

    def counts(self) -> dict[str, int]:  # pragma: no cover - LedgerReads'
        raise NotImplementedError

    # -- manifest → jobs --------------------------------------------------------

    def sync_needed(self, fingerprint: str | None, output_dir: str, *, retry_failed: bool = False) -> bool:
        """False when the last complete sync read these very bytes into this folder."""
        same = fingerprint is not None and self._meta("fingerprint", "") == fingerprint
        return not (same and not retry_failed and self._meta("output_dir", "") == output_dir)

    def sync_begin(self, manifest: str, output_dir: str) -> int:
        """Queue the start of a sync; returns the generation the manifest's jobs get."""
        generation = self.generation + 1
        self._set_meta("fingerprint", "")  # set again by sync_end, only if the sync completes
        self._set_meta("manifest_read", "0")  # "1" once every row is read in (sync_end)
        self._set_meta("generation", str(generation))
        self._set_meta("manifest", manifest)
        self._set_meta("output_dir", output_dir)
        return generation

    def sync_chunk(self, jobs: list[tuple[int, JobSpec]], generation: int, *, retry_failed: bool = False) -> None:
        """Queue (seq, job) pairs. A job whose spec hash changed goes back to pending with its attempt
        count reset; an unchanged one keeps its state, so a succeeded job is never made again."""
        if not jobs:
            return
        now = time.time()
        self._queue_many(_UPSERT_JOB, [_job_row(job, seq, generation, now) for seq, job in jobs])
        first, last = jobs[0][0], jobs[-1][0]
        # Runs still open for a spec that has since changed will never be used.
        self._queue(
            """UPDATE attempts SET status = 'superseded', finished_at = ?
               WHERE status IN ('creating', 'running') AND job_id IN
                 (SELECT job_id FROM jobs WHERE generation = ? AND seq BETWEEN ? AND ?)
               AND spec_hash != (SELECT spec_hash FROM jobs WHERE jobs.job_id = attempts.job_id)""",
            (now, generation, first, last),
        )
        if retry_failed:
            self._queue(
                "UPDATE jobs SET state = 'pending', attempts = 0, error = NULL, error_kind = NULL, updated_at = ? "
                "WHERE generation = ? AND state = 'failed' AND seq BETWEEN ? AND ?",
                (now, generation, first, last),
            )

    def sync_end(self, fingerprint: str | None) -> None:
        self._set_meta("manifest_read", "1")
        if fingerprint is not None:
            self._set_meta("fingerprint", fingerprint)

    def sync_manifest(
        self,
        manifest: str,
        jobs: Iterable[JobSpec],
        *,
        output_dir: str,
        retry_failed: bool = False,
        fingerprint: str | None = None,
    ) -> SyncSummary:
        """Record the manifest's jobs in one transaction (nothing is written if ``jobs`` raises).

        ``fingerprint`` identifies the manifest's bytes: when it matches the last
        sync's, the jobs are already recorded and ``jobs`` is not even read.
        """
        if self.sync_needed(fingerprint, output_dir, retry_failed=retry_failed):
            self.flush()
            try:
                generation = self.sync_begin(manifest, output_dir)
                chunk: list[tuple[int, JobSpec]] = []
                for seq, job in enumerate(jobs):
                    chunk.append((seq, job))
                    if len(chunk) >= SYNC_CHUNK:
                        self.sync_chunk(chunk, generation, retry_failed=retry_failed)
                        chunk = []
                self.sync_chunk(chunk, generation, retry_failed=retry_failed)
                self.sync_end(fingerprint)
            except BaseException:
                self.rollback()
                raise
            self.flush()
        return self.summary()

    def summary(self) -> SyncSummary:
        counts = self.counts()
        return SyncSummary(
            jobs=sum(counts.values()),
            succeeded=counts["succeeded"],
            failed=counts["failed"],
            to_do=counts["pending"] + counts["running"],
        )

    def recover(self) -> int:
        """After a crash: creates that never answered become 'unknown'. Returns how many. Commits at once."""
        self.flush()
        now = time.time()
        lost = self._query("SELECT count(*) FROM attempts WHERE status = 'creating'").fetchone()[0]
        self._queue(
            """UPDATE jobs SET unknown = unknown +
                 (SELECT count(*) FROM attempts a WHERE a.job_id = jobs.job_id AND a.status = 'creating')
               WHERE job_id IN (SELECT job_id FROM attempts WHERE status = 'creating')"""
        )
        self._queue(
            "UPDATE attempts SET status = 'unknown', finished_at = ?, error_kind = 'unknown', "
            "error = 'the process stopped before the create request was answered' "
            "WHERE status = 'creating'",
            (now,),
        )
        # A job marked running with no open run left (its create never answered,
        # or its run was superseded) is simply pending again.
        # Found through jobs_todo (generation, state, seq) one generation at a time: `state = 'running'`
        # alone would read every job (0.2 s at a million), for the few it finds.
        self._queue(
            """WITH RECURSIVE g(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM g WHERE n < ?)
               UPDATE jobs SET state = 'pending'
               WHERE job_id IN (SELECT j.job_id FROM g JOIN jobs j ON j.generation = g.n AND j.state = 'running')
               AND NOT EXISTS (SELECT 1 FROM attempts a WHERE a.job_id = jobs.job_id AND a.status = 'running')""",
            (self.generation,),
        )
        self.flush()
        return int(lost)

    # -- attempts (queued: see the module docstring) ------------------------------

    def begin_attempt(self, job: JobSpec) -> int:
        """Queue the attempt as 'creating'; flush before its create request is sent."""
        attempt_id = self._next_attempt
        self._next_attempt += 1
        now = time.time()
        if self.journal is not None:
            self.journal("attempt", a=attempt_id, job=job.job_id, h=job.spec_hash())
        self._queue(
            "INSERT INTO attempts (attempt_id, job_id, spec_hash, status, started_at) VALUES (?, ?, ?, 'creating', ?)",
            (attempt_id, job.job_id, job.spec_hash(), now),
        )
        self._queue(
            "UPDATE jobs SET state = 'running', attempts = attempts + 1, updated_at = ? WHERE job_id = ?",
            (now, job.job_id),
        )
        return attempt_id

    def run_created(self, attempt_id: int, run_id: str, job: JobSpec) -> float:
        """The create answered: queue the run id; flush before anything waits on the run."""
        now = time.time()
        if self.journal is not None:
            self.journal("run", a=attempt_id, job=job.job_id, h=job.spec_hash(), run=run_id, t=round(now, 3))
        self._queue(
            "UPDATE attempts SET run_id = ?, status = 'running', created_at = ? WHERE attempt_id = ?",
            (run_id, now, attempt_id),
        )
        self._queue("UPDATE jobs SET run_id = ?, source = NULL WHERE job_id = ?", (run_id, job.job_id))
        return now

    def not_created(self, attempt_id: int, job_id: str) -> None:
        """The create certainly made no run (refused before it was made): forget the attempt."""
        if self.journal is not None:
            self.journal("void", a=attempt_id, job=job_id)
        self._queue("DELETE FROM attempts WHERE attempt_id = ?", (attempt_id,))
        self._queue(
            "UPDATE jobs SET state = 'pending', attempts = max(0, attempts - 1) WHERE job_id = ?",
            (job_id,),
        )

    def attempt_ended(
        self,
        attempt_id: int,
        job_id: str,
        status: AttemptStatus,
        error: str,
        *,
        job_failed: bool,
        kind: str | None = None,
    ) -> None:
        """An attempt ended without outputs: ``unknown``, ``failed`` or ``rejected``."""
        now = time.time()
        if status is AttemptStatus.REJECTED and self.journal is not None:
            self.journal("void", a=attempt_id, job=job_id)  # answered: no run was made
        self._queue(
            "UPDATE attempts SET status = ?, error = ?, error_kind = ?, finished_at = ? WHERE attempt_id = ?",
            (str(status), error, kind, now, attempt_id),
        )
        state = JobState.FAILED if job_failed else JobState.PENDING
        self._queue(
            "UPDATE jobs SET state = ?, error = ?, error_kind = ?, updated_at = ?, unknown = unknown + ? "
            "WHERE job_id = ?",
            (str(state), error, kind, now, int(status is AttemptStatus.UNKNOWN), job_id),
        )

    def job_failed(self, job_id: str, error: str, kind: str | None = None) -> None:
        """The job failed for good without a live attempt (e.g. the create kept failing)."""
        self._queue(
            "UPDATE jobs SET state = 'failed', error = ?, error_kind = ?, updated_at = ? WHERE job_id = ?",
            (error, kind, time.time(), job_id),
        )

    def job_succeeded(self, attempt_id: int, job_id: str, outputs: list[SavedOutput]) -> None:
        """Queue the job's files (already complete on disk) and its success."""
        now = time.time()
        self._queue("DELETE FROM outputs WHERE job_id = ?", (job_id,))
        self._queue_many(
            "INSERT INTO outputs (job_id, n, attempt_id, path, bytes, sha256, content_type, saved_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [(job_id, o.n, attempt_id, o.path, o.bytes, o.sha256, o.content_type, now) for o in outputs],
        )
        self._queue("UPDATE attempts SET status = 'succeeded', finished_at = ? WHERE attempt_id = ?", (now, attempt_id))
        self._queue(
            "UPDATE jobs SET state = 'succeeded', error = NULL, error_kind = NULL, fresh = 0, updated_at = ? "
            "WHERE job_id = ?",
            (now, job_id),
        )

    def job_satisfied(
        self,
        job_id: str,
        spec_hash: str,
        outputs: list[SavedOutput],
        *,
        status: AttemptStatus,
        run_id: str | None,
        note: str,
    ) -> int:
        """The job's image came without a run of its own: ``reused`` (an identical request's
        image) or ``adopted`` (found in the folder). Recorded as an attempt of that status."""
        attempt_id = self._next_attempt
        self._next_attempt += 1
        now = time.time()
        self._queue(
            "INSERT INTO attempts (attempt_id, job_id, spec_hash, run_id, status, error, started_at, created_at, "
            "finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (attempt_id, job_id, spec_hash, run_id, str(status), note, now, now, now),
        )
        self.job_succeeded(attempt_id, job_id, outputs)
        # job_succeeded marked it 'succeeded'; keep the status that says where the image came from
        self._queue("UPDATE attempts SET status = ? WHERE attempt_id = ?", (str(status), attempt_id))
        self._queue("UPDATE jobs SET source = ?, run_id = ? WHERE job_id = ?", (str(status), run_id, job_id))
        return attempt_id

    def refetch(self, job_id: str, attempt_id: int) -> None:
        """A succeeded job's file is missing or changed: open its run again, to fetch the files (not to pay)."""
        self._queue(
            "UPDATE attempts SET status = 'running', error_kind = 'refetch', finished_at = NULL WHERE attempt_id = ?",
            (attempt_id,),
        )
        self._queue("UPDATE jobs SET state = 'running', updated_at = ? WHERE job_id = ?", (time.time(), job_id))

    def mark_for_retry(self, job_ids: list[str], versions: list[dict[str, Any]]) -> None:
        """``batchgen retry``: the jobs go back to pending for a new run of their own (``fresh``: no reuse),
        with a fresh set of attempts; the files listed for them are forgotten, and ``versions``
        (earlier images already moved aside: job_id, attempt_id, n, path, bytes, sha256,
        content_type, saved_at) recorded. Jobs with a run in flight are left alone. Commits at once."""
        now = time.time()
        self._queue_many(
            "INSERT INTO versions (job_id, attempt_id, n, path, bytes, sha256, content_type, saved_at, replaced_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (v["job_id"], v["attempt_id"], v["n"], v["path"], v["bytes"], v["sha256"], v["content_type"],
                 v["saved_at"], now)
                for v in versions
            ],
        )  # fmt: skip
        rows = [(job_id,) for job_id in job_ids]
        self._queue_many("DELETE FROM outputs WHERE job_id = ?", rows)
        self._queue_many(
            "UPDATE jobs SET state = 'pending', attempts = 0, error = NULL, error_kind = NULL, fresh = 1, "
            "updated_at = ? WHERE job_id = ? AND state != 'running'",
            [(now, job_id) for job_id in job_ids],
        )
        self.flush()

    # -- repairs from the folder's journal (recovery.py) --------------------------

    def reserve_attempt_ids(self, highest_used: int) -> None:
        """Ids up to ``highest_used`` appear in the journal: never hand them out again."""
        self._next_attempt = max(self._next_attempt, highest_used + 1)

    def reopen_run(self, job_id: str, spec_hash: str, attempt_id: int, run_id: str, created_at: float) -> None:
        """A run the ledger had forgotten: record it open again, to be polled rather than paid for twice."""
        self._queue(
            "INSERT OR REPLACE INTO attempts (attempt_id, job_id, spec_hash, run_id, status, started_at, created_at) "
            "VALUES (?, ?, ?, ?, 'running', ?, ?)",
            (attempt_id, job_id, spec_hash, run_id, created_at, created_at),
        )
        self._queue(
            "UPDATE jobs SET state = 'running', attempts = attempts + 1, run_id = ?, source = NULL, updated_at = ? "
            "WHERE job_id = ?",
            (run_id, time.time(), job_id),
        )

    def lost_create(self, job_id: str, spec_hash: str, attempt_id: int) -> None:
        """A create the ledger had forgotten and whose answer never came: a possible double charge."""
        self._queue(
            "INSERT OR IGNORE INTO attempts (attempt_id, job_id, spec_hash, status, error, error_kind, started_at, "
            "finished_at) VALUES (?, ?, ?, 'unknown', ?, 'unknown', ?, ?)",
            (
                attempt_id,
                job_id,
                spec_hash,
                "the create was sent and its answer is not recorded",
                time.time(),
                time.time(),
            ),
        )
        # export and status read the job's own count of possible double charges
        self._queue(
            "UPDATE jobs SET unknown = (SELECT count(*) FROM attempts a WHERE a.job_id = jobs.job_id "
            "AND a.status = 'unknown') WHERE job_id = ?",
            (job_id,),
        )

    def set_journal_offset(self, folder_id: str, offset: int) -> None:
        """How far into the folder's journal this ledger's commits reach; committed with them."""
        self._set_meta(f"journal_offset:{folder_id}", str(offset))

    # -- sessions -------------------------------------------------------------

    def session_started(self, manifest: str) -> int:
        session_id = self._next_session
        self._next_session += 1
        self._queue(
            "INSERT INTO sessions (session_id, manifest, started_at) VALUES (?, ?, ?)",
            (session_id, manifest, time.time()),
        )
        return session_id

    def session_finished(self, session_id: int, outcome: str, exit_code: int, stats_json: str) -> None:
        self._queue(
            "UPDATE sessions SET finished_at = ?, outcome = ?, exit_code = ?, stats_json = ? WHERE session_id = ?",
            (time.time(), outcome, exit_code, stats_json, session_id),
        )

    # -- meta ------------------------------------------------------------------

    def _set_meta(self, key: str, value: str) -> None:
        self._queue(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )


def _job_row(job: JobSpec, seq: int, generation: int, now: float) -> tuple[Any, ...]:
    spec_json, metadata_json = job.to_record()
    return (job.job_id, seq, generation, spec_json, job.spec_hash(), metadata_json, now)
