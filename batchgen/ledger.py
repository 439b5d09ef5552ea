"""The ledger: every line of SQL batchgen runs, in one sqlite file per output folder.

It records each job (its spec and the spec's hash), each attempt at a run
(run id, times, status, error) and each output file (path, bytes, sha256).

What makes resume safe:

* An attempt row is committed as ``creating`` *before* its create request is
  sent, and its run id the moment the create answers. A crash at any instant
  either leaves the run id on disk, so the next run polls that run instead of
  paying for another, or leaves a ``creating`` row, which the next run turns
  into ``unknown``: a create whose outcome we never heard, counted as a
  possible double charge.
* Every write is one short transaction. Calls are synchronous and quick, so a
  cancelled task never leaves one half done.

Schema changes go in ``MIGRATIONS``: each step and its ``user_version`` bump
commit together, and a ledger newer than this code is refused. The interface
is deliberately narrow (jobs, attempts, outputs, counts) so a PostgreSQL
backend for batches shared by several hosts can implement the same methods.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from .errors import LedgerBusy, LedgerError
from .models import JobSpec, OpenRun, PendingJob, SavedOutput, SyncSummary

try:
    import fcntl
except ImportError:  # pragma: no cover - not on POSIX
    fcntl = None  # type: ignore[assignment]

MIGRATIONS: list[str] = [
    # 1: the first schema.
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE jobs (
        job_id TEXT PRIMARY KEY,
        seq INTEGER NOT NULL,              -- position in the manifest of the latest sync
        generation INTEGER NOT NULL,       -- which sync last saw this job in the manifest
        spec_json TEXT NOT NULL,           -- {"model": ..., "input": {...}}
        spec_hash TEXT NOT NULL,
        metadata_json TEXT NOT NULL DEFAULT '{}',
        state TEXT NOT NULL DEFAULT 'pending'
            CHECK (state IN ('pending', 'running', 'succeeded', 'failed')),
        attempts INTEGER NOT NULL DEFAULT 0,  -- attempts at the current spec
        error TEXT,
        updated_at REAL NOT NULL
    );
    CREATE INDEX jobs_todo ON jobs (generation, state, seq);
    CREATE TABLE attempts (
        attempt_id INTEGER PRIMARY KEY,
        job_id TEXT NOT NULL REFERENCES jobs (job_id),
        spec_hash TEXT NOT NULL,
        run_id TEXT,
        status TEXT NOT NULL CHECK (status IN
            ('creating', 'running', 'succeeded', 'failed', 'unknown', 'rejected', 'superseded')),
        error TEXT,
        started_at REAL NOT NULL,
        created_at REAL,                   -- when the create answered with a run id
        finished_at REAL
    );
    CREATE INDEX attempts_by_job ON attempts (job_id, attempt_id);
    CREATE INDEX attempts_open ON attempts (status) WHERE status IN ('creating', 'running');
    CREATE TABLE outputs (
        job_id TEXT NOT NULL REFERENCES jobs (job_id),
        n INTEGER NOT NULL,
        attempt_id INTEGER NOT NULL REFERENCES attempts (attempt_id),
        path TEXT NOT NULL,                -- relative to the output folder
        bytes INTEGER NOT NULL,
        sha256 TEXT NOT NULL,
        content_type TEXT NOT NULL,
        saved_at REAL NOT NULL,
        PRIMARY KEY (job_id, n)
    );
    CREATE TABLE sessions (
        session_id INTEGER PRIMARY KEY,
        manifest TEXT NOT NULL,
        started_at REAL NOT NULL,
        finished_at REAL,
        outcome TEXT
    );
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)


def sql_statements(script: str) -> Iterator[str]:
    """The statements of an SQL script, split where sqlite says a statement is complete
    (so a ';' inside a string literal or a trigger body does not split it)."""
    statement = ""
    for piece in script.split(";"):
        statement += piece + ";"
        if sqlite3.complete_statement(statement):
            if statement.strip(" \t\n;"):
                yield statement.strip()
            statement = ""
    if statement.strip(" \t\n;"):
        yield statement.strip()


PAGE_SIZE = 500


class Ledger:
    """All of batchgen's state for one output folder."""

    def __init__(self, path: str | os.PathLike[str], *, readonly: bool = False):
        """Open (creating and migrating as needed) the ledger at ``path``.

        ``readonly`` is for status and export: no lock, no migration, no write, so
        they also work on a ledger in a read-only folder.
        """
        self.path = Path(path)
        self._lock_file: int | None = None
        if readonly:
            self._db = self._open_readonly()
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, so nothing is implicit.
            self._db = sqlite3.connect(self.path, isolation_level=None, timeout=30.0)
        except (OSError, sqlite3.Error) as exc:
            raise LedgerError(self._cannot_open(exc)) from exc
        try:
            self._db.execute("PRAGMA busy_timeout = 30000")
            if self._db.execute("PRAGMA journal_mode = WAL").fetchone()[0].lower() != "wal":
                raise LedgerError(f"{self.path}: the file system does not support sqlite's WAL mode")
            # NORMAL in WAL mode: a commit survives a crash or kill of this process; only
            # a power loss can take back the last few commits.
            self._db.execute("PRAGMA synchronous = NORMAL")
            self._db.execute("PRAGMA foreign_keys = ON")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise LedgerError(self._cannot_open(exc)) from exc
        except LedgerError:
            self._db.close()
            raise

    def _open_readonly(self) -> sqlite3.Connection:
        uri = self.path.resolve().as_uri()
        # mode=ro still needs the -shm file of a WAL ledger; in a read-only folder where
        # it cannot be made, immutable=1 reads the file as it is (a snapshot, fine for a report).
        for query in ("?mode=ro", "?immutable=1"):
            try:
                db = sqlite3.connect(uri + query, uri=True, isolation_level=None, timeout=30.0)
                version = db.execute("PRAGMA user_version").fetchone()[0]
                db.execute("SELECT count(*) FROM meta").fetchone()
            except sqlite3.Error as exc:
                error: sqlite3.Error = exc
                continue
            if version != SCHEMA_VERSION:
                db.close()
                raise LedgerError(
                    f"{self.path} has schema {version}, this batchgen reads {SCHEMA_VERSION}: "
                    "run `batchgen run` on it with this version first, or use the matching batchgen"
                )
            return db
        raise LedgerError(f"{self.path} is not a readable batchgen ledger: {error}")

    def _cannot_open(self, exc: BaseException) -> str:
        folder = self.path.parent
        if not os.access(folder, os.W_OK) or (self.path.exists() and not os.access(self.path, os.W_OK)):
            return f"cannot write the ledger {self.path}: the folder {folder} is read-only or not writable"
        if isinstance(exc, OSError):
            return f"cannot open the ledger {self.path}: {exc.strerror or exc}"
        return f"{self.path} is not a usable batchgen ledger: {exc}"

    def __repr__(self) -> str:
        return f"Ledger({str(self.path)!r})"

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if hasattr(self, "_db"):
            self._db.close()
        if self._lock_file is not None:
            os.close(self._lock_file)  # releases the flock
            self._lock_file = None

    # -- plumbing -------------------------------------------------------------

    def _migrate(self) -> None:
        version = self._query("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise LedgerError(
                f"{self.path} was written by a newer batchgen (schema {version}, this one knows "
                f"{SCHEMA_VERSION}); upgrade batchgen to use it"
            )
        for number in range(version + 1, SCHEMA_VERSION + 1):
            with self._transaction():
                for statement in sql_statements(MIGRATIONS[number - 1]):
                    self._query(statement)
                self._query(f"PRAGMA user_version = {number}")

    def _transaction(self) -> _Transaction:
        return _Transaction(self)

    def _query(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Cursor:
        """Run one statement; sqlite's errors become LedgerError (callers never see sqlite3)."""
        try:
            return self._db.execute(sql, tuple(params))
        except sqlite3.Error as exc:
            raise self._error(exc) from exc

    def _query_many(self, sql: str, rows: Iterable[tuple[Any, ...]]) -> sqlite3.Cursor:
        try:
            return self._db.executemany(sql, rows)
        except sqlite3.Error as exc:
            raise self._error(exc) from exc

    def _error(self, exc: sqlite3.Error) -> LedgerError:
        if isinstance(exc, sqlite3.DatabaseError) and ("malformed" in str(exc) or "not a database" in str(exc)):
            return LedgerError(
                f"the ledger {self.path} is damaged ({exc}); move it aside to start a new one, "
                "or restore it from a backup"
            )
        return LedgerError(f"cannot use the ledger {self.path}: {exc}")

    def _write(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Cursor:
        with self._transaction():
            return self._query(sql, tuple(params))

    # -- the runner lock --------------------------------------------------------

    def lock_for_run(self) -> None:
        """Take the one-runner lock or raise LedgerBusy. Released on close or process death."""
        if fcntl is None or self._lock_file is not None:
            return
        lock_path = str(self.path) + ".lock"
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise LedgerError(f"cannot create the lock file {lock_path}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LedgerBusy(
                f"another batchgen run is using {self.path} (lock {lock_path}); wait for it to finish, or stop it first"
            ) from None
        self._lock_file = fd

    # -- manifest → jobs --------------------------------------------------------

    def sync_manifest(
        self,
        manifest: str,
        jobs: Iterable[JobSpec],
        *,
        output_dir: str,
        retry_failed: bool = False,
        fingerprint: str | None = None,
    ) -> SyncSummary:
        """Record the manifest's jobs in one transaction (rolled back if ``jobs`` raises).

        A job whose spec hash changed goes back to pending with its attempt count
        reset; an unchanged one keeps its state, so a succeeded job is never re-run.
        ``fingerprint`` identifies the manifest's bytes: when it matches the last
        sync's, the jobs are already recorded and ``jobs`` is not even read.
        """
        now = time.time()
        same_manifest = fingerprint is not None and self._meta("fingerprint", "") == fingerprint
        if same_manifest and not retry_failed and self._meta("output_dir", "") == output_dir:
            return self._summary()
        with self._transaction():
            self._set_meta("fingerprint", "")  # set again below only if this sync completes
            generation = int(self._meta("generation", "0")) + 1
            self._set_meta("generation", str(generation))
            self._set_meta("manifest", manifest)
            self._set_meta("output_dir", output_dir)
            batch: list[tuple[Any, ...]] = []
            for seq, job in enumerate(jobs):
                batch.append(_job_row(job, seq, generation, now))
                if len(batch) >= 1000:
                    self._upsert_jobs(batch)
                    batch.clear()
            if batch:
                self._upsert_jobs(batch)
            # Runs still open for a spec that has since changed will never be used.
            self._query(
                """UPDATE attempts SET status = 'superseded', finished_at = ?
                   WHERE status IN ('creating', 'running')
                     AND spec_hash != (SELECT spec_hash FROM jobs WHERE jobs.job_id = attempts.job_id)""",
                (now,),
            )
            if retry_failed:
                self._query(
                    "UPDATE jobs SET state = 'pending', attempts = 0, error = NULL, updated_at = ? "
                    "WHERE generation = ? AND state = 'failed'",
                    (now, generation),
                )
            if fingerprint is not None:
                self._set_meta("fingerprint", fingerprint)
        return self._summary()

    def _summary(self) -> SyncSummary:
        counts = self.counts()
        return SyncSummary(
            jobs=sum(counts.values()),
            succeeded=counts["succeeded"],
            failed=counts["failed"],
            to_do=counts["pending"] + counts["running"],
        )

    def _upsert_jobs(self, rows: list[tuple[Any, ...]]) -> None:
        # Inside DO UPDATE, "jobs.x" is the row as it was: compare hashes before replacing.
        self._query_many(
            """INSERT INTO jobs (job_id, seq, generation, spec_json, spec_hash, metadata_json, updated_at)
               VALUES (?, ?, ?, ?, ?, ?, ?)
               ON CONFLICT (job_id) DO UPDATE SET
                 seq = excluded.seq,
                 generation = excluded.generation,
                 metadata_json = excluded.metadata_json,
                 state = CASE WHEN jobs.spec_hash = excluded.spec_hash THEN jobs.state ELSE 'pending' END,
                 attempts = CASE WHEN jobs.spec_hash = excluded.spec_hash THEN jobs.attempts ELSE 0 END,
                 error = CASE WHEN jobs.spec_hash = excluded.spec_hash THEN jobs.error ELSE NULL END,
                 updated_at = CASE WHEN jobs.spec_hash = excluded.spec_hash
                                   THEN jobs.updated_at ELSE excluded.updated_at END,
                 spec_json = excluded.spec_json,
                 spec_hash = excluded.spec_hash""",
            rows,
        )

    def recover(self) -> int:
        """After a crash: creates that never answered become 'unknown'. Returns how many."""
        now = time.time()
        with self._transaction():
            lost = self._query(
                "UPDATE attempts SET status = 'unknown', finished_at = ?, "
                "error = 'the process stopped before the create request was answered' "
                "WHERE status = 'creating'",
                (now,),
            ).rowcount
            # A job marked running with no open run left (its create never answered,
            # or its run was superseded) is simply pending again.
            self._query(
                """UPDATE jobs SET state = 'pending' WHERE state = 'running' AND NOT EXISTS
                   (SELECT 1 FROM attempts a WHERE a.job_id = jobs.job_id AND a.status = 'running')"""
            )
        return lost

    def open_runs(self) -> list[OpenRun]:
        """Runs created earlier and not yet seen finished, for the current manifest."""
        generation = self.generation
        rows = self._query(
            """SELECT a.attempt_id, a.run_id, a.created_at, j.job_id, j.spec_json, j.metadata_json, j.attempts
               FROM attempts a JOIN jobs j ON j.job_id = a.job_id
               WHERE a.status = 'running' AND j.generation = ? ORDER BY j.seq""",
            (generation,),
        ).fetchall()
        return [
            OpenRun(attempt_id=r[0], run_id=r[1], created_at=r[2], job=_pending(r[3], r[4], r[5], r[6])) for r in rows
        ]

    def pending_page(self, after_seq: int, limit: int = PAGE_SIZE) -> list[tuple[int, PendingJob]]:
        """The next ``limit`` jobs waiting for a run, after manifest position ``after_seq``."""
        rows = self._query(
            """SELECT seq, job_id, spec_json, metadata_json, attempts FROM jobs
               WHERE generation = ? AND state = 'pending' AND seq > ? ORDER BY seq LIMIT ?""",
            (self.generation, after_seq, limit),
        ).fetchall()
        return [(r[0], _pending(r[1], r[2], r[3], r[4])) for r in rows]

    @property
    def generation(self) -> int:
        return int(self._meta("generation", "0"))

    @property
    def manifest(self) -> str | None:
        return self._meta("manifest", "") or None

    @property
    def output_dir(self) -> str | None:
        """The output folder, absolute, as of the latest sync."""
        return self._meta("output_dir", "") or None

    # -- attempts ------------------------------------------------------------

    def begin_attempt(self, job: JobSpec) -> int:
        """Committed before the create request is sent."""
        now = time.time()
        with self._transaction():
            attempt_id = self._query(
                "INSERT INTO attempts (job_id, spec_hash, status, started_at) VALUES (?, ?, 'creating', ?)",
                (job.job_id, job.spec_hash(), now),
            ).lastrowid
            self._query(
                "UPDATE jobs SET state = 'running', attempts = attempts + 1, updated_at = ? WHERE job_id = ?",
                (now, job.job_id),
            )
        assert attempt_id is not None
        return attempt_id

    def run_created(self, attempt_id: int, run_id: str) -> float:
        """The create answered: commit the run id before anything waits on the run."""
        now = time.time()
        self._write(
            "UPDATE attempts SET run_id = ?, status = 'running', created_at = ? WHERE attempt_id = ?",
            (run_id, now, attempt_id),
        )
        return now

    def not_created(self, attempt_id: int, job_id: str) -> None:
        """The create certainly made no run (refused before it was made): forget the attempt."""
        with self._transaction():
            self._query("DELETE FROM attempts WHERE attempt_id = ?", (attempt_id,))
            self._query(
                "UPDATE jobs SET state = 'pending', attempts = max(0, attempts - 1) WHERE job_id = ?",
                (job_id,),
            )

    def attempt_ended(self, attempt_id: int, job_id: str, status: str, error: str, *, job_failed: bool) -> None:
        """An attempt ended without outputs: ``unknown``, ``failed`` or ``rejected``."""
        now = time.time()
        with self._transaction():
            self._query(
                "UPDATE attempts SET status = ?, error = ?, finished_at = ? WHERE attempt_id = ?",
                (status, error, now, attempt_id),
            )
            self._query(
                "UPDATE jobs SET state = ?, error = ?, updated_at = ? WHERE job_id = ?",
                ("failed" if job_failed else "pending", error, now, job_id),
            )

    def job_failed(self, job_id: str, error: str) -> None:
        """The job failed for good without a live attempt (e.g. the create kept failing)."""
        self._write(
            "UPDATE jobs SET state = 'failed', error = ?, updated_at = ? WHERE job_id = ?",
            (error, time.time(), job_id),
        )

    def job_succeeded(self, attempt_id: int, job_id: str, outputs: list[SavedOutput]) -> None:
        now = time.time()
        with self._transaction():
            self._query("DELETE FROM outputs WHERE job_id = ?", (job_id,))
            self._query_many(
                "INSERT INTO outputs (job_id, n, attempt_id, path, bytes, sha256, content_type, saved_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(job_id, o.n, attempt_id, o.path, o.bytes, o.sha256, o.content_type, now) for o in outputs],
            )
            self._query(
                "UPDATE attempts SET status = 'succeeded', finished_at = ? WHERE attempt_id = ?",
                (now, attempt_id),
            )
            self._query(
                "UPDATE jobs SET state = 'succeeded', error = NULL, updated_at = ? WHERE job_id = ?",
                (now, job_id),
            )

    # -- sessions -------------------------------------------------------------

    def session_started(self, manifest: str) -> int:
        cursor = self._write("INSERT INTO sessions (manifest, started_at) VALUES (?, ?)", (manifest, time.time()))
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def session_finished(self, session_id: int, outcome: str) -> None:
        self._write(
            "UPDATE sessions SET finished_at = ?, outcome = ? WHERE session_id = ?",
            (time.time(), outcome, session_id),
        )

    # -- reading ---------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        """Jobs of the current manifest by state."""
        counts = dict.fromkeys(("pending", "running", "succeeded", "failed"), 0)
        for state, n in self._query(
            "SELECT state, count(*) FROM jobs WHERE generation = ? GROUP BY state", (self.generation,)
        ):
            counts[state] = n
        return counts

    def attempt_counts(self) -> dict[str, int]:
        """Attempts of the current manifest's jobs by status (all sessions)."""
        rows = self._query(
            """SELECT a.status, count(*) FROM attempts a JOIN jobs j ON j.job_id = a.job_id
               WHERE j.generation = ? GROUP BY a.status""",
            (self.generation,),
        )
        return dict(rows.fetchall())

    def recent_errors(self, limit: int = 5) -> list[tuple[str, str]]:
        return self._query(
            """SELECT job_id, error FROM jobs WHERE generation = ? AND error IS NOT NULL
               ORDER BY updated_at DESC LIMIT ?""",
            (self.generation, limit),
        ).fetchall()

    def last_session(self) -> dict[str, Any] | None:
        row = self._query(
            "SELECT session_id, manifest, started_at, finished_at, outcome FROM sessions "
            "ORDER BY session_id DESC LIMIT 1"
        ).fetchone()
        if row is None:
            return None
        return dict(zip(("session", "manifest", "started_at", "finished_at", "outcome"), row, strict=True))

    def iter_export(self) -> Iterator[dict[str, Any]]:
        """One record per job of the current manifest, in manifest order, read in pages."""
        generation, after = self.generation, -1
        while True:
            rows = self._query(
                """SELECT j.seq, j.job_id, j.state, j.spec_json, j.metadata_json, j.attempts, j.error,
                     (SELECT run_id FROM attempts a WHERE a.job_id = j.job_id AND a.run_id IS NOT NULL
                      ORDER BY a.attempt_id DESC LIMIT 1),
                     (SELECT count(*) FROM attempts a WHERE a.job_id = j.job_id AND a.status = 'unknown'),
                     (SELECT json_group_array(json_object('path', path, 'bytes', bytes, 'sha256', sha256))
                      FROM (SELECT path, bytes, sha256 FROM outputs o WHERE o.job_id = j.job_id ORDER BY n))
                   FROM jobs j WHERE j.generation = ? AND j.seq > ? ORDER BY j.seq LIMIT ?""",
                (generation, after, PAGE_SIZE),
            ).fetchall()
            if not rows:
                return
            for seq, job_id, state, spec_json, metadata_json, attempts, error, run_id, unknown, outs in rows:
                after = seq
                spec = json.loads(spec_json)
                yield {
                    "job_id": job_id,
                    "state": "pending" if state == "running" else state,
                    "run_id": run_id,
                    "outputs": json.loads(outs),
                    "error": error if state != "succeeded" else None,
                    "attempts": attempts,
                    "unknown_creates": unknown,
                    "input": spec["input"],
                    "metadata": json.loads(metadata_json),
                }

    # -- meta ------------------------------------------------------------------

    def _meta(self, key: str, default: str) -> str:
        row = self._query("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def _set_meta(self, key: str, value: str) -> None:
        self._query(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )


class _Transaction:
    """BEGIN IMMEDIATE … COMMIT, ROLLBACK on any exception; sqlite errors become LedgerError."""

    def __init__(self, ledger: Ledger):
        self._ledger = ledger

    def __enter__(self) -> None:
        try:
            self._ledger._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot write the ledger {self._ledger.path}: {exc}") from exc

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        db = self._ledger._db
        if exc_type is None:
            try:
                db.execute("COMMIT")
                return
            except sqlite3.Error as commit_exc:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise LedgerError(f"cannot write the ledger {self._ledger.path}: {commit_exc}") from commit_exc
        if db.in_transaction:
            db.execute("ROLLBACK")
        if isinstance(exc, sqlite3.Error):
            raise LedgerError(f"cannot write the ledger {self._ledger.path}: {exc}") from exc


def _job_row(job: JobSpec, seq: int, generation: int, now: float) -> tuple[Any, ...]:
    spec_json, metadata_json = job.to_record()
    return (job.job_id, seq, generation, spec_json, job.spec_hash(), metadata_json, now)


def _pending(job_id: str, spec_json: str, metadata_json: str, attempts: int) -> PendingJob:
    return PendingJob(spec=JobSpec.from_record(job_id, spec_json, metadata_json), attempts=attempts)
