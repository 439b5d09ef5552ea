"""The ledger: every line of SQL batchgen runs, in one sqlite file per output folder.

It records each job (its spec and the spec's hash), each attempt at a run (run
id, times, status, error) and each output file (path, bytes, sha256).

Writes are grouped. Each write method queues its statements and returns at
once; ``flush()`` commits everything queued in one transaction. The scheduler
flushes once per tick and waits for the flush only where a promise needs it:

* an attempt row is durable, as ``creating``, *before* its create request is
  sent, and its run id *before* anything waits on the run. A crash at any
  instant either leaves the run id on disk, so the next run polls that run
  instead of paying for another, or leaves a ``creating`` row, which the next
  run turns into ``unknown``: a create whose outcome we never heard, counted as
  a possible double charge;
* a file is listed only after it is complete on disk under its final name.

A write that nobody waited for and that a crash took back costs nothing: the
run it concerned is still recorded as open, and is polled again.

The write methods themselves are in writes.py (mixed in); this module opens,
locks, queues and commits. Attempt and session ids are handed out by the ledger, not by sqlite, so a queued row
has its id at once; one process writes (the run lock), so they cannot clash.
Every sqlite error becomes a ``LedgerError``: callers never see sqlite3.
"""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ..errors import LedgerBusy, LedgerError
from ..models import LEDGER_SIDE_FILES
from ..outputs import NO_FOLLOW
from .reads import LedgerExports, LedgerReads
from .schema import READABLE_FROM, SCHEMA_VERSION, check_version, migrate
from .writes import (
    SYNC_CHUNK as SYNC_CHUNK,  # re-exported: syncing reads it from here
    LedgerWrites,
)

try:
    import fcntl
except ImportError:  # pragma: no cover - not on POSIX
    fcntl = None  # type: ignore[assignment]

SIDE_FILES = LEDGER_SIDE_FILES  # beside the ledger: sqlite's, and the run lock


class Ledger(LedgerReads, LedgerExports, LedgerWrites):
    """All of batchgen's state for one output folder."""

    def __init__(self, path: str | os.PathLike[str], *, readonly: bool = False):
        """Open (creating and migrating as needed) the ledger at ``path``.

        ``readonly`` is for status and export: no lock, no migration, no write, so
        they also work on a ledger in a read-only folder.
        """
        self.path = Path(path)
        self._lock_file: int | None = None
        self._ops: list[tuple[str, Any]] = []  # (sql, params) or (sql, [rows]) for executemany
        self._many: set[int] = set()  # indexes in _ops that are executemany
        self.readonly = readonly
        self._closed = False
        # Called with (event, data) for every money event, before it is queued: the output
        # folder's journal (folder.py), which must outlive this file.
        self.journal: Callable[..., None] | None = None
        # Called at the start of every flush, before anything is committed: writes that journal out.
        self.before_flush: Callable[[], None] | None = None
        if readonly:
            self._db = self._open_readonly()
            return
        if self.path.is_dir():
            raise LedgerError(f"cannot use {self.path} as the ledger: it is a folder")
        self._refuse_symlinks()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, so nothing is implicit.
            self._db = sqlite3.connect(self.path, isolation_level=None, timeout=30.0)
        except (OSError, sqlite3.Error) as exc:
            raise LedgerError(self._cannot_open(exc)) from exc
        try:
            self._db.execute("PRAGMA busy_timeout = 30000")
            check_version(self._db, self.path)  # before anything changes the file
            if self._db.execute("PRAGMA journal_mode = WAL").fetchone()[0].lower() != "wal":
                raise LedgerError(f"{self.path}: the file system does not support sqlite's WAL mode")
            # NORMAL in WAL mode: a commit survives a crash or kill of this process; only
            # a power loss can take back the last few commits.
            self._db.execute("PRAGMA synchronous = NORMAL")
            migrate(self._db, self.path)
            self._db.execute("PRAGMA foreign_keys = ON")
            self._next_attempt = self._next_id("attempt_id", "attempts")
            self._next_session = self._next_id("session_id", "sessions")
        except sqlite3.Error as exc:
            self._db.close()
            raise LedgerError(self._cannot_open(exc)) from exc
        except LedgerError:
            self._db.close()
            raise

    def _refuse_symlinks(self) -> None:
        """Refuse a ledger (or one of the files sqlite keeps beside it, or its lock) that is a symlink: sqlite
        would write through it, to a file outside the folder someone pointed it at between runs."""
        for side in (self.path, *(Path(f"{self.path}{suffix}") for suffix in SIDE_FILES)):
            try:
                found = os.lstat(side)
            except OSError:
                continue
            if stat.S_ISLNK(found.st_mode):
                raise LedgerError(
                    f"{side} is a symlink, not a file of batchgen's ledger: batchgen writes nothing through it; "
                    "remove it (the ledger is repaired from the folder's journal), or give the file it points "
                    "to with --ledger"
                )

    def _next_id(self, column: str, table: str) -> int:
        return int(self._db.execute(f"SELECT coalesce(max({column}), 0) + 1 FROM {table}").fetchone()[0])

    def _open_readonly(self) -> sqlite3.Connection:
        if not self.path.is_file():
            raise LedgerError(
                f"no ledger at {self.path}: run `batchgen run MANIFEST` first (or pass --output/--ledger)"
            )
        uri = self.path.resolve().as_uri()
        # mode=ro still needs the -shm file of a WAL ledger; in a read-only folder where
        # it cannot be made, immutable=1 reads the file as it is (a snapshot, fine for a report).
        error: sqlite3.Error | None = None
        for query in ("?mode=ro", "?immutable=1"):
            try:
                db = sqlite3.connect(uri + query, uri=True, isolation_level=None, timeout=30.0)
                version = db.execute("PRAGMA user_version").fetchone()[0]
                db.execute("SELECT count(*) FROM meta").fetchone()
            except sqlite3.Error as exc:
                error = exc
                continue
            if not READABLE_FROM <= version <= SCHEMA_VERSION:
                db.close()
                newer = version > SCHEMA_VERSION
                raise LedgerError(
                    f"{self.path} has schema {version}, this batchgen reads {SCHEMA_VERSION}: "
                    + (
                        "it was written by a newer batchgen; upgrade batchgen to read it"
                        if newer
                        else "run `batchgen run` on it once with this version to upgrade it"
                    )
                )
            return db
        assert error is not None
        raise self._error(error)

    def _cannot_open(self, exc: BaseException) -> str:
        folder = self.path.parent
        file_on_the_way = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
        if file_on_the_way is not None:
            return f"cannot make the folder {folder} for the ledger: {file_on_the_way} is a file, not a folder"
        if not os.access(folder, os.W_OK) or (self.path.exists() and not os.access(self.path, os.W_OK)):
            return f"cannot write the ledger {self.path}: the folder {folder} is read-only or not writable"
        if isinstance(exc, OSError):
            return f"cannot open the ledger {self.path}: {exc.strerror or exc}"
        if isinstance(exc, sqlite3.Error):
            return str(self._error(exc))
        return f"{self.path} is not a usable batchgen ledger: {exc}"

    def __repr__(self) -> str:
        return f"Ledger({str(self.path)!r})"

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        try:
            if exc_type is None and self._ops and not self._closed:
                self.flush()
        finally:
            self.close()

    def close(self) -> None:
        """Close without writing what is still queued (``flush()`` first to keep it)."""
        if hasattr(self, "_db") and not self._closed:
            self._closed = True
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            self._db.close()
        if self._lock_file is not None:
            os.close(self._lock_file)  # releases the flock
            self._lock_file = None

    # -- plumbing -------------------------------------------------------------

    def _query(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Cursor:
        """Run one statement; sqlite's errors become LedgerError (callers never see sqlite3)."""
        try:
            return self._db.execute(sql, tuple(params))
        except sqlite3.Error as exc:
            raise self._error(exc) from exc

    def _error(self, exc: sqlite3.Error) -> LedgerError:
        text = str(exc)
        if isinstance(exc, sqlite3.DatabaseError) and ("malformed" in text or "not a database" in text):
            return LedgerError(
                f"the ledger {self.path} is damaged ({text}); nothing was changed. Move it aside "
                "(`mv` it with its -wal and -shm files) and run again to start a new ledger: images "
                "already in the output folder are recognised and not paid for again"
            )
        if "database or disk is full" in text:
            return LedgerError(f"cannot write the ledger {self.path}: {text}")
        return LedgerError(f"cannot use the ledger {self.path}: {text}")

    def _queue(self, sql: str, params: tuple[Any, ...] = ()) -> None:
        self._ops.append((sql, params))

    def _queue_many(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        self._many.add(len(self._ops))
        self._ops.append((sql, rows))

    @property
    def queued(self) -> int:
        """Writes waiting for the next ``flush()``."""
        return len(self._ops)

    def flush(self, *, hold: bool = False) -> None:
        """Commit every queued write in one transaction; on error none of them is kept.

        ``hold`` writes them but keeps the transaction open, so that a later flush
        commits them together with its own, or ``rollback()`` drops them all.
        """
        if not self._ops and not (self._db.in_transaction and not hold):
            return
        if self.before_flush is not None:
            self.before_flush()
        ops, many = self._ops, self._many
        self._ops, self._many = [], set()
        try:
            if not self._db.in_transaction:
                self._db.execute("BEGIN IMMEDIATE")
            for index, (sql, params) in enumerate(ops):
                if index in many:
                    self._db.executemany(sql, params)
                else:
                    self._db.execute(sql, params)
            if not hold:
                self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise self._error(exc) from exc
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise

    def rollback(self) -> None:
        """Forget every queued write, and those a ``flush(hold=True)`` wrote but did not commit."""
        self._ops, self._many = [], set()
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")

    # -- the runner lock --------------------------------------------------------

    def lock_for_run(self) -> None:
        """Take the one-runner lock of this ledger or raise LedgerBusy. Released on close or process death."""
        if fcntl is None or self._lock_file is not None:
            return
        lock_path = str(self.path) + ".lock"
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | NO_FOLLOW, 0o644)
        except OSError as exc:
            raise LedgerError(f"cannot create the lock file {lock_path}: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LedgerBusy(
                f"another batchgen run is using {self.path} (lock {lock_path}); wait for it to finish, or stop it first"
            ) from None
        self._lock_file = fd
