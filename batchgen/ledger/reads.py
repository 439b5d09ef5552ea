"""What the ledger answers: the queries of the runner, ``status``, ``export`` and ``report``.

Every query here runs in time linear in the jobs it returns, streams its rows
(one statement, read as it goes, never a page that rescans what came before),
and concerns the jobs of the current manifest (the latest sync's generation).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ..models import JobSpec, OpenRun, PendingJob

PAGE_SIZE = 500
FETCH = 2000  # rows fetched from sqlite at a time by the streaming queries


class LedgerReads:
    """Read-only queries; mixed into ``Ledger``."""

    path: Path

    def _query(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Cursor:  # pragma: no cover - Ledger's
        raise NotImplementedError

    def _stream(self, sql: str, params: Iterable[Any] = ()) -> Iterator[Any]:
        for rows in self._chunks(sql, params):
            yield from rows

    def _chunks(self, sql: str, params: Iterable[Any] = ()) -> Iterator[list[Any]]:
        """The rows of one statement, FETCH at a time."""
        cursor = self._query(sql, params)
        while rows := self._fetch(cursor):
            yield rows

    def _fetch(self, cursor: sqlite3.Cursor) -> list[Any]:
        try:
            return cursor.fetchmany(FETCH)
        except sqlite3.Error as exc:
            raise self._error(exc) from exc  # type: ignore[attr-defined]

    def _meta(self, key: str, default: str) -> str:
        row = self._query("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return str(row[0]) if row else default

    @property
    def generation(self) -> int:
        return int(self._meta("generation", "0"))

    @property
    def manifest(self) -> str | None:
        return self._meta("manifest", "") or None

    @property
    def manifest_read(self) -> bool:
        """False while the latest manifest is read in only in part (a batch of a large one stopped early):
        its jobs in the ledger are those read so far, and the next run reads the rest."""
        return self._meta("manifest_read", "1") == "1"

    @property
    def output_dir(self) -> str | None:
        """The output folder, absolute, as of the latest sync."""
        return self._meta("output_dir", "") or None

    # -- what the runner reads ---------------------------------------------------

    def open_runs(self) -> list[OpenRun]:
        """Runs created earlier and not yet seen finished, for the current manifest."""
        rows = self._stream(
            """SELECT a.attempt_id, a.run_id, a.created_at, a.error_kind, j.job_id, j.spec_json, j.metadata_json,
                      j.attempts
               FROM attempts a JOIN jobs j ON j.job_id = a.job_id
               WHERE a.status = 'running' AND j.generation = ? ORDER BY j.seq""",
            (self.generation,),
        )
        return [
            OpenRun(
                attempt_id=r[0],
                run_id=r[1],
                created_at=r[2],
                job=_pending(r[4], r[5], r[6], r[7]),
                refetch=r[3] == "refetch",
            )
            for r in rows
        ]

    def pending_page(self, after_seq: int, limit: int = PAGE_SIZE) -> list[tuple[int, PendingJob]]:
        """The next ``limit`` jobs waiting for a run, after manifest position ``after_seq``."""
        rows = self._query(
            """SELECT seq, job_id, spec_json, metadata_json, attempts, fresh FROM jobs
               WHERE generation = ? AND state = 'pending' AND seq > ? ORDER BY seq LIMIT ?""",
            (self.generation, after_seq, limit),
        ).fetchall()
        return [(r[0], _pending(r[1], r[2], r[3], r[4], bool(r[5]))) for r in rows]

    # -- counts ------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        """Jobs of the current manifest by state.

        One statement (one snapshot): all the generation's jobs counted on its smallest
        index, and those not succeeded (a few percent, usually) on the state index; the
        succeeded are the difference. Half the time of grouping every job by state."""
        counts = dict.fromkeys(("pending", "running", "succeeded", "failed"), 0)
        total = 0
        for state, n in self._query(
            """SELECT NULL, count(*) FROM jobs INDEXED BY jobs_by_seq WHERE generation = ?
               UNION ALL
               SELECT state, count(*) FROM jobs WHERE generation = ? AND state IN ('failed', 'pending', 'running')
               GROUP BY state""",
            (self.generation, self.generation),
        ):
            if state is None:
                total = int(n)
            else:
                counts[state] = int(n)
        counts["succeeded"] = total - counts["pending"] - counts["running"] - counts["failed"]
        return counts

    def attempt_counts(self) -> dict[str, int]:
        """Attempts of the current manifest's jobs by status (all sessions).

        Counted as all attempts less those of jobs no longer in the manifest (older
        generations, usually few): a join of every attempt with its job takes seconds
        on a million jobs, these two scans a fraction of that."""
        generation = self.generation
        counts: dict[str, int] = {}
        for status, n in self._query("SELECT status, count(*) FROM attempts GROUP BY status"):
            counts[str(status)] = int(n)
        for status, n in self._query(
            """SELECT a.status, count(*) FROM
                 (SELECT job_id FROM jobs WHERE generation < ? UNION ALL SELECT job_id FROM jobs WHERE generation > ?)
                 AS j CROSS JOIN attempts a ON a.job_id = j.job_id GROUP BY a.status""",
            (generation, generation),
        ):
            counts[str(status)] -= int(n)
        return {status: n for status, n in counts.items() if n}

    def images_left_behind(self) -> int:
        """Jobs with images that the current manifest no longer has (an earlier or another manifest's)."""
        row = self._query(
            "SELECT count(*) FROM jobs WHERE generation < ? AND state = 'succeeded'", (self.generation,)
        ).fetchone()
        return int(row[0])

    def recent_errors(self, limit: int = 5) -> list[tuple[str, str]]:
        rows = self._query(
            """SELECT job_id, error FROM jobs WHERE generation = ? AND state IN ('failed', 'pending', 'running')
               AND error IS NOT NULL ORDER BY updated_at DESC LIMIT ?""",
            (self.generation, limit),
        ).fetchall()
        return [(str(job_id), str(error)) for job_id, error in rows]

    def error_summary(self, limit: int = 5) -> list[dict[str, Any]]:
        """The most common errors of jobs not succeeded, with how many jobs each and one example job."""
        rows = self._query(
            """SELECT error, error_kind, count(*) AS jobs, min(job_id) FROM jobs
               WHERE generation = ? AND state IN ('failed', 'pending', 'running') AND error IS NOT NULL
               GROUP BY error, error_kind ORDER BY jobs DESC, error LIMIT ?""",
            (self.generation, limit),
        ).fetchall()
        return [{"error": r[0], "kind": r[1], "jobs": r[2], "example": r[3]} for r in rows]

    def last_session(self) -> dict[str, Any] | None:
        sessions = self.sessions(limit=1)
        return sessions[0] if sessions else None

    def sessions(self, limit: int = 20) -> list[dict[str, Any]]:
        """The latest sessions, newest first, with the figures each recorded."""
        rows = self._query(
            "SELECT session_id, manifest, started_at, finished_at, outcome, exit_code, stats_json FROM sessions "
            "ORDER BY session_id DESC LIMIT ?",
            (limit,),
        ).fetchall()
        keys = ("session", "manifest", "started_at", "finished_at", "outcome", "exit_code")
        return [{**dict(zip(keys, r[:6], strict=True)), "stats": json.loads(r[6]) if r[6] else None} for r in rows]

    # -- files -------------------------------------------------------------------

    def recorded_outputs(self) -> Iterator[tuple[str, int, str, int]]:
        """(job_id, attempt_id, path, bytes) of every file of a succeeded job of the current manifest."""
        yield from self._stream(
            """SELECT o.job_id, o.attempt_id, o.path, o.bytes FROM outputs o JOIN jobs j ON j.job_id = o.job_id
               WHERE j.generation = ? AND j.state = 'succeeded'""",
            (self.generation,),
        )

    def output_files(self) -> Iterator[list[tuple[str, str, int]]]:
        """(job_id, path, bytes) of every file the outputs table lists, whatever its job's state or
        generation (recovery.check_files leaves those out afterwards), in the table's order, in lists
        of FETCH rows (a generator layer per row is a tenth of the time at a million files)."""
        yield from self._chunks("SELECT job_id, path, bytes FROM outputs")

    def versions(self, job_id: str) -> list[dict[str, Any]]:
        """Earlier images of a regenerated job, newest first."""
        rows = self._query(
            "SELECT n, path, bytes, sha256, saved_at, replaced_at FROM versions WHERE job_id = ? "
            "ORDER BY replaced_at DESC, n",
            (job_id,),
        ).fetchall()
        keys = ("n", "path", "bytes", "sha256", "saved_at", "replaced_at")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    def jobs_by_id(self, job_ids: Iterable[str], *, any_manifest: bool = False) -> dict[str, tuple[str, str]]:
        """{job_id: (spec_hash, state)} for those of ``job_ids`` in the current manifest; with ``any_manifest``,
        also those an earlier manifest left in the ledger (a sync of a job keeps its state when its spec is
        the same, whichever manifest recorded it: what a plan must know)."""
        found: dict[str, tuple[str, str]] = {}
        ids = list(dict.fromkeys(job_ids))
        generation = -1 if any_manifest else self.generation
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for job_id, spec_hash, state in self._query(
                f"SELECT job_id, spec_hash, state FROM jobs WHERE (generation = ? OR ? < 0) AND job_id IN ({marks})",
                (generation, generation, *chunk),
            ):
                found[job_id] = (spec_hash, state)
        return found

    def ids_ignoring_case(self, names: Iterable[str]) -> dict[str, str]:
        """{name in lower case: the job id it matches ignoring case} in the current manifest (ids are unique so)."""
        found: dict[str, str] = {}
        wanted = list(dict.fromkeys(name.lower() for name in names))
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for (job_id,) in self._query(
                f"SELECT job_id FROM jobs WHERE generation = ? AND lower(job_id) IN ({marks})",
                (self.generation, *chunk),
            ):
                found[job_id.lower()] = job_id
        return found

    def attempts_by_id(self, attempt_ids: Iterable[int]) -> dict[int, tuple[str, str | None]]:
        """{attempt_id: (status, run_id)} for those of ``attempt_ids`` the ledger has."""
        found: dict[int, tuple[str, str | None]] = {}
        ids = list(dict.fromkeys(attempt_ids))
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for attempt_id, status, run_id in self._query(
                f"SELECT attempt_id, status, run_id FROM attempts WHERE attempt_id IN ({marks})", chunk
            ):
                found[attempt_id] = (status, run_id)
        return found

    def failed_by_kind(self) -> dict[str | None, int]:
        """Jobs of the current manifest that failed for good, by the kind of their error."""
        rows = self._query(
            "SELECT error_kind, count(*) FROM jobs WHERE generation = ? AND state = 'failed' GROUP BY error_kind",
            (self.generation,),
        ).fetchall()
        return {kind: int(n) for kind, n in rows}

    def failed_jobs(self, kinds: Iterable[str] | None = None) -> list[str]:
        """Ids of the current manifest's jobs that failed for good (of one of ``kinds``), in manifest order."""
        if kinds is None:
            rows = self._stream(
                "SELECT job_id FROM jobs WHERE generation = ? AND state = 'failed' ORDER BY seq", (self.generation,)
            )
        else:
            wanted = sorted(set(kinds))
            marks = ",".join("?" * len(wanted))
            rows = self._stream(
                f"SELECT job_id FROM jobs WHERE generation = ? AND state = 'failed' AND error_kind IN ({marks}) "
                "ORDER BY seq",
                (self.generation, *wanted),
            )
        return [str(job_id) for (job_id,) in rows]

    def outputs_of(self, job_ids: Iterable[str]) -> list[dict[str, Any]]:
        """The files the ledger lists for ``job_ids`` (any state), as the outputs table has them."""
        keys = ("job_id", "attempt_id", "n", "path", "bytes", "sha256", "content_type", "saved_at")
        found: list[dict[str, Any]] = []
        ids = list(dict.fromkeys(job_ids))
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._query(
                f"SELECT {', '.join(keys)} FROM outputs WHERE job_id IN ({marks}) ORDER BY job_id, n", chunk
            ).fetchall()
            found.extend(dict(zip(keys, row, strict=True)) for row in rows)
        return found

    def status_figures(self, errors_shown: int = 5) -> dict[str, Any]:
        """What ``batchgen status`` shows, in four statements and no per-job work in Python
        (bench/status_bench.py: a few tenths of a second on a million jobs)."""
        errors, distinct, with_errors, failed_by_kind = self.error_overview(errors_shown)
        return {
            "jobs": self.counts(),
            "attempts": self.attempt_counts(),
            "failed_by_kind": {str(kind or "unknown"): n for kind, n in failed_by_kind.items()},
            "errors": errors,
            "errors_distinct": distinct,
            "jobs_with_errors": with_errors,
            "last_session": self.last_session(),
            "manifest_read": self.manifest_read,
        }

    def error_overview(self, limit: int = 5) -> tuple[list[dict[str, Any]], int, int, dict[str | None, int]]:
        """``(error_summary(limit), distinct errors, jobs carrying one, failed_by_kind())``: the jobs not
        succeeded that carry an error (every failed one does) are read once from their partial index,
        grouped, and the groups summed three ways."""
        rows = self._query(
            """WITH g AS MATERIALIZED (
                 SELECT state = 'failed' AS failed, error, error_kind, count(*) AS jobs, min(job_id) AS example
                 FROM jobs WHERE generation = ? AND state IN ('failed', 'pending', 'running') AND error IS NOT NULL
                 GROUP BY 1, 2, 3),
               e AS MATERIALIZED (
                 SELECT error, error_kind, sum(jobs) AS jobs, min(example) AS example FROM g GROUP BY error, error_kind)
               SELECT * FROM (SELECT 'top', error, error_kind, jobs, example FROM e ORDER BY jobs DESC, error LIMIT ?)
               UNION ALL SELECT 'totals', NULL, NULL, count(*), coalesce(sum(jobs), 0) FROM e
               UNION ALL SELECT 'kind', NULL, error_kind, sum(jobs), NULL FROM g WHERE failed GROUP BY error_kind""",
            (self.generation, limit),
        ).fetchall()
        top = [{"error": r[1], "kind": r[2], "jobs": r[3], "example": r[4]} for r in rows if r[0] == "top"]
        (totals,) = [(int(r[3]), int(r[4])) for r in rows if r[0] == "totals"]
        kinds = {r[2]: int(r[3]) for r in rows if r[0] == "kind"}
        return top, totals[0], totals[1], kinds

    def journal_offset(self, folder_id: str) -> int:
        return int(self._meta(f"journal_offset:{folder_id}", "0"))

    @property
    def is_empty(self) -> bool:
        """No job was ever recorded here."""
        return bool(self._query("SELECT NOT EXISTS (SELECT 1 FROM jobs)").fetchone()[0])

    def iter_attempts(self) -> Iterator[tuple[str, str, str | None, str | None, float | None, float | None]]:
        """(job_id, status, run_id, error, started_at, finished_at) of every attempt of the current
        manifest's jobs, a job's attempts together and in order."""
        yield from self._stream(
            """SELECT a.job_id, a.status, a.run_id, a.error, a.started_at, a.finished_at
               FROM jobs j JOIN attempts a ON a.job_id = j.job_id
               WHERE j.generation = ? ORDER BY j.seq, a.attempt_id""",
            (self.generation,),
        )

    def iter_versions(self) -> Iterator[dict[str, Any]]:
        """Every earlier image of the current manifest's jobs (see ``versions``), by job, newest first."""
        keys = ("job_id", "n", "path", "bytes", "sha256", "saved_at", "replaced_at")
        for row in self._stream(
            """SELECT v.job_id, v.n, v.path, v.bytes, v.sha256, v.saved_at, v.replaced_at
               FROM jobs j JOIN versions v ON v.job_id = j.job_id
               WHERE j.generation = ? ORDER BY j.seq, v.replaced_at DESC, v.n""",
            (self.generation,),
        ):
            yield dict(zip(keys, row, strict=True))

    def runs_created(self) -> int:
        """Runs the API made for the current manifest's jobs (every attempt that got a run id)."""
        row = self._query(
            """SELECT count(*) FROM jobs j JOIN attempts a ON a.job_id = j.job_id
               WHERE j.generation = ? AND a.run_id IS NOT NULL AND a.status NOT IN ('reused', 'adopted')""",
            (self.generation,),
        ).fetchone()
        return int(row[0])

    # -- export -----------------------------------------------------------------

    def iter_export(self) -> Iterator[dict[str, Any]]:
        """One record per job of the current manifest, in manifest order, with its files."""
        record: dict[str, Any] | None = None
        for row in self.export_rows():  # type: ignore[attr-defined]
            if record is None or record["job_id"] != row[0]:
                if record is not None:
                    yield _sorted(record)
                job_id, state, run_id, error, kind, attempts, unknown, source, spec_json, metadata = row[:10]
                spec = json.loads(spec_json)
                done = state == "succeeded"
                record = {
                    "job_id": job_id,
                    "state": "pending" if state == "running" else state,
                    "run_id": run_id,
                    "error": None if done else error,
                    "error_kind": None if done else kind,
                    "attempts": attempts,
                    "unknown_creates": unknown,
                    "source": source if done else None,
                    "model": spec.get("model"),
                    "input": spec.get("input"),
                    "metadata": json.loads(metadata),
                    "outputs": [],
                }
            if row[10] is not None:
                record["outputs"].append({"n": row[10], "bytes": row[11], "sha256": row[13], "path": row[12]})
        if record is not None:
            yield _sorted(record)


def _sorted(record: dict[str, Any]) -> dict[str, Any]:
    if len(record["outputs"]) > 1:
        record["outputs"].sort(key=lambda output: output["n"])
    return record


def _pending(job_id: str, spec_json: str, metadata_json: str, attempts: int, fresh: bool = False) -> PendingJob:
    return PendingJob(spec=JobSpec.from_record(job_id, spec_json, metadata_json), attempts=attempts, fresh=fresh)


_EXPORT_FROM = "FROM jobs j LEFT JOIN outputs o ON o.job_id = j.job_id WHERE j.generation = ? ORDER BY j.seq"


class LedgerExports:
    """Export at a million jobs: one streamed statement, one row per file (or per job without files)."""

    def export_rows(self: Any) -> Iterator[tuple[Any, ...]]:
        """The rows of ``export_chunks``, one at a time."""
        for rows in self.export_chunks():
            yield from rows

    def export_chunks(self: Any) -> Iterator[list[tuple[Any, ...]]]:
        """job_id, state, run_id, error, error_kind, attempts, unknown, source, spec_json, metadata_json,
        then n, bytes, path, sha256 of one of its files (None when it has none); in manifest order,
        a job's rows together (its files in the order of the outputs' key, (job_id, n), that the join
        reads them by; callers sort a job's files by n all the same). In lists of FETCH rows: at a
        million rows, each layer of generator a row passes through costs a few percent.

        Plain columns: every JSON function (json_extract, json_each) sqlite would run per row costs
        more than the Python that cuts the same text out of the stored JSON (exporting.split_spec),
        and ordering by n as well would sort every job's files in a temporary b-tree."""
        yield from self._chunks(
            f"""SELECT j.job_id, j.state, j.run_id, j.error, j.error_kind, j.attempts, j.unknown, j.source,
                       j.spec_json, j.metadata_json, o.n, o.bytes, o.path, o.sha256 {_EXPORT_FROM}""",
            (self.generation,),
        )

    def csv_export_chunks(self: Any, metadata: bool = True) -> Iterator[list[tuple[Any, ...]]]:
        """The rows of ``export_chunks`` with only the columns a CSV line shows: job_id, state, run_id,
        error, attempts, unknown, spec_json, metadata_json (None without ``metadata``: no job has any),
        then n, bytes, path of one of its files. Each text column fetched costs about a microsecond a
        row (sqlite's API calls, each under a lock, and a Python object): the columns left out are a
        sixth of the time of reading the rows.

        json_extract of the four input fields here instead of spec_json adds about 3 microseconds a
        row (200,000 jobs); the regular expression that cuts them out of it (exporting.plain_input)
        takes half a microsecond."""
        yield from self._chunks(
            f"""SELECT j.job_id, j.state, j.run_id, j.error, j.attempts, j.unknown, j.spec_json,
                       {"j.metadata_json" if metadata else "NULL"}, o.n, o.bytes, o.path {_EXPORT_FROM}""",
            (self.generation,),
        )

    def metadata_keys(self: Any) -> list[str]:
        """Every metadata key of the current manifest's jobs, in the order they first appear (jobs without
        metadata, stored as '{}', are passed over without parsing it: half the time when most have none)."""
        rows = self._query(
            """SELECT m.key FROM jobs j, json_each(j.metadata_json) m
               WHERE j.generation = ? AND j.metadata_json != '{}'
               GROUP BY m.key ORDER BY min(j.seq), min(m.id)""",
            (self.generation,),
        ).fetchall()
        return [str(row[0]) for row in rows]
