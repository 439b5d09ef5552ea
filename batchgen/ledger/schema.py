"""The ledger's schema and its migrations.

Each migration is an SQL script; ``migrate`` runs every step the file has not
seen, each step and its ``PRAGMA user_version`` bump in one transaction, and
refuses a ledger written by a newer batchgen. Foreign keys are off while a
step runs (sqlite ignores the pragma inside a transaction, and a step may
rebuild a table others refer to); ``PRAGMA foreign_key_check`` must come back
empty before the step commits.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

from ..errors import LedgerError

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
    # 2: attempts may be satisfied without a run of their own (an identical request's image
    # reused, an image found in the folder adopted); failures have a kind that `retry` picks
    # by; a job can ask for a new run ('fresh'); earlier images of a regenerated job are kept;
    # sessions keep their figures; jobs are read in manifest order by their own index, and carry
    # their latest run id, possible double charges and where their image came from.
    """
    CREATE TABLE attempts_new (
        attempt_id INTEGER PRIMARY KEY,
        job_id TEXT NOT NULL REFERENCES jobs (job_id),
        spec_hash TEXT NOT NULL,
        run_id TEXT,
        status TEXT NOT NULL CHECK (status IN
            ('creating', 'running', 'succeeded', 'failed', 'unknown', 'rejected', 'superseded',
             'reused', 'adopted')),
        error TEXT,
        error_kind TEXT,
        started_at REAL NOT NULL,
        created_at REAL,
        finished_at REAL
    );
    INSERT INTO attempts_new (attempt_id, job_id, spec_hash, run_id, status, error, started_at, created_at,
                              finished_at)
        SELECT attempt_id, job_id, spec_hash, run_id, status, error, started_at, created_at, finished_at
        FROM attempts;
    DROP TABLE attempts;
    ALTER TABLE attempts_new RENAME TO attempts;
    CREATE INDEX attempts_by_job ON attempts (job_id, attempt_id);
    CREATE INDEX attempts_open ON attempts (status) WHERE status IN ('creating', 'running');
    CREATE INDEX attempts_by_run ON attempts (run_id) WHERE run_id IS NOT NULL;
    ALTER TABLE jobs ADD COLUMN error_kind TEXT;
    ALTER TABLE jobs ADD COLUMN fresh INTEGER NOT NULL DEFAULT 0;  -- 1: make it with a new run, reuse nothing
    -- Kept on the job as its attempts change, so that status and export read one row per job.
    ALTER TABLE jobs ADD COLUMN run_id TEXT;                        -- its latest run
    ALTER TABLE jobs ADD COLUMN unknown INTEGER NOT NULL DEFAULT 0; -- its creates whose answer never came
    ALTER TABLE jobs ADD COLUMN source TEXT;                        -- 'reused' or 'adopted' when no run of its own
    UPDATE jobs SET
        run_id = (SELECT run_id FROM attempts a WHERE a.job_id = jobs.job_id AND a.run_id IS NOT NULL
                  ORDER BY a.attempt_id DESC LIMIT 1),
        unknown = (SELECT count(*) FROM attempts a WHERE a.job_id = jobs.job_id AND a.status = 'unknown');
    CREATE INDEX jobs_by_seq ON jobs (generation, seq);
    CREATE TABLE versions (
        job_id TEXT NOT NULL REFERENCES jobs (job_id),
        attempt_id INTEGER,
        n INTEGER NOT NULL,
        path TEXT NOT NULL,                -- where the earlier image was moved, relative to the output folder
        bytes INTEGER NOT NULL,
        sha256 TEXT NOT NULL,
        content_type TEXT NOT NULL,
        saved_at REAL NOT NULL,
        replaced_at REAL NOT NULL
    );
    CREATE INDEX versions_by_job ON versions (job_id, replaced_at);
    ALTER TABLE sessions ADD COLUMN exit_code INTEGER;
    ALTER TABLE sessions ADD COLUMN stats_json TEXT;
    """,
    # 3: what `status` reads, from small indexes instead of every row (bench/status_bench.py, a
    # million jobs): attempts by status (0.65 s -> 0.1 s), and the errors of jobs not succeeded
    # from a partial index holding only those jobs (0.3 s -> 0.1 s).
    """
    CREATE INDEX attempts_by_status ON attempts (status);
    CREATE INDEX jobs_errors ON jobs (generation, state, error_kind, error, job_id) WHERE error IS NOT NULL;
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)
# The oldest schema a read-only open (status, export, report) can query as it is: migration 3
# only added indexes, so a ledger no run has upgraded yet is read without them, just slower.
READABLE_FROM = 2


def sql_statements(script: str) -> Iterator[str]:
    """The statements of an SQL script, split where sqlite says a statement is complete
    (so a ';' inside a string literal or a trigger body does not split it)."""
    statement = ""
    for piece in script.split(";"):
        statement += piece + ";"
        if sqlite3.complete_statement(statement):
            if _has_sql(statement):
                yield statement.strip()
            statement = ""
    if _has_sql(statement):
        raise ValueError(f"incomplete SQL statement: {statement.strip()[:80]!r}")


def _has_sql(statement: str) -> bool:
    lines = (line.split("--", 1)[0] for line in statement.splitlines())
    return bool("".join(lines).strip(" \t\n;"))


def check_version(db: sqlite3.Connection, path: Path) -> int:
    """The ledger's schema version; a ledger written by a newer batchgen is refused untouched."""
    version = int(db.execute("PRAGMA user_version").fetchone()[0])
    if version > SCHEMA_VERSION:
        raise LedgerError(
            f"{path} was written by a newer batchgen (schema {version}, this one knows "
            f"{SCHEMA_VERSION}); upgrade batchgen to use it"
        )
    return version


def migrate(db: sqlite3.Connection, path: Path) -> None:
    """Bring the ledger at ``path`` to SCHEMA_VERSION; see the module docstring."""
    if check_version(db, path) == SCHEMA_VERSION:
        return
    db.execute("PRAGMA foreign_keys = OFF")
    try:
        for number in range(check_version(db, path) + 1, SCHEMA_VERSION + 1):
            db.execute("BEGIN IMMEDIATE")
            try:
                for statement in sql_statements(MIGRATIONS[number - 1]):
                    db.execute(statement)
                broken = db.execute("PRAGMA foreign_key_check").fetchall()
                if broken:
                    raise LedgerError(f"{path}: migration {number} would break references: {broken[:3]}")
                db.execute(f"PRAGMA user_version = {number}")
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
    finally:
        db.execute("PRAGMA foreign_keys = ON")
