"""The reuse index: images by the exact request that made them, shared by every batch of a user.

Two jobs that send exactly the same model and input — in one manifest, in two
batches, in two output folders — are generated once: the second gets a copy of
the first's image and the ledger says it was reused. The index lives in the
user's cache folder (``platformdirs.user_cache_dir("batchgen")``, the XDG cache
on Linux; ``$BATCHGEN_CACHE_DIR`` or ``--reuse-index`` overrides it) so that a
mistyped ``--output`` or a lost ledger costs a copy, not a run.

It records, per spec hash, the files a run produced (absolute paths, sizes,
sha256). An entry is only a hint: before a file is used it must still be
there with the bytes recorded, and the copy is hashed again as it is written.
Writes are queued and flushed with the ledger's; the index is an optimisation,
so when it cannot be used the batch goes on without it (and says so).
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..errors import LedgerError
from ..models import SavedOutput

ENV_CACHE_DIR = "BATCHGEN_CACHE_DIR"
INDEX_NAME = "reuse.sqlite"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    service TEXT NOT NULL,         -- the API that made it: a simulator's image never stands in for a real one
    spec_hash TEXT NOT NULL,
    run_id TEXT,
    n INTEGER NOT NULL,
    path TEXT NOT NULL,            -- absolute
    bytes INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    content_type TEXT NOT NULL,
    saved_at REAL NOT NULL,
    PRIMARY KEY (service, spec_hash, path)
);
"""


def default_index_path() -> Path:
    folder = os.environ.get(ENV_CACHE_DIR)
    if folder:
        return Path(folder) / INDEX_NAME
    import platformdirs

    return Path(platformdirs.user_cache_dir("batchgen")) / INDEX_NAME


@dataclass(frozen=True)
class ReusableFile:
    n: int
    path: Path
    bytes: int
    sha256: str
    content_type: str


@dataclass(frozen=True)
class ReusableRun:
    """A complete set of files one run produced for a request (n = 0..k-1)."""

    run_id: str | None
    files: tuple[ReusableFile, ...]


class ReuseIndex:
    def __init__(self, path: Path, service: str):
        """``service`` names the API the images come from (its base URL); only its images are reused."""
        self.path = path
        self.service = service
        self._queued: list[tuple[object, ...]] = []
        self._moves: list[tuple[int, str, str]] = []  # (how many rows were queued before it, from, to)
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, isolation_level=None, timeout=10.0)
            self._db.execute("PRAGMA busy_timeout = 10000")
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = NORMAL")
            self._db.execute(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise LedgerError(f"cannot use the reuse index {path}: {getattr(exc, 'strerror', None) or exc}") from exc

    def __repr__(self) -> str:
        return f"ReuseIndex({str(self.path)!r})"

    def close(self) -> None:
        self._db.close()

    def find(self, spec_hash: str) -> list[ReusableRun]:
        """Runs that produced this request's images, newest first; the files are not checked here."""
        try:
            rows = self._db.execute(
                "SELECT run_id, n, path, bytes, sha256, content_type, saved_at FROM images "
                "WHERE service = ? AND spec_hash = ? ORDER BY saved_at DESC, n",
                (self.service, spec_hash),
            ).fetchall()
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot read the reuse index {self.path}: {exc}") from exc
        runs: dict[tuple[object, float], list[ReusableFile]] = {}
        for run_id, n, path, size, sha256, content_type, saved_at in rows:
            runs.setdefault((run_id, saved_at), []).append(ReusableFile(n, Path(path), size, sha256, content_type))
        found = []
        for (run_id, _), files in runs.items():
            files.sort(key=lambda file: file.n)
            if [file.n for file in files] == list(range(len(files))):
                found.append(ReusableRun(run_id if isinstance(run_id, str) else None, tuple(files)))
        return found

    def holds_any(self) -> bool:
        """Whether the index has any image made through this service."""
        try:
            return (
                self._db.execute("SELECT 1 FROM images WHERE service = ? LIMIT 1", (self.service,)).fetchone()
                is not None
            )
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot read the reuse index {self.path}: {exc}") from exc

    def known(self, spec_hashes: Iterable[str]) -> set[str]:
        """Those of ``spec_hashes`` the index holds any image of (one query per 500; files not checked)."""
        wanted = list(dict.fromkeys(spec_hashes))
        found: set[str] = set()
        try:
            for start in range(0, len(wanted), 500):
                part = wanted[start : start + 500]
                rows = self._db.execute(
                    f"SELECT DISTINCT spec_hash FROM images WHERE service = ? AND spec_hash IN "
                    f"({','.join('?' * len(part))})",
                    (self.service, *part),
                )
                found.update(row[0] for row in rows)
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot read the reuse index {self.path}: {exc}") from exc
        return found

    def add(self, spec_hash: str, run_id: str | None, output_dir: Path, saved: list[SavedOutput]) -> None:
        """Queue a run's files (paths relative to ``output_dir``)."""
        now = time.time()
        base = output_dir.resolve()
        for file in saved:
            path = str(base / file.path)
            self._queued.append(
                (self.service, spec_hash, run_id, file.n, path, file.bytes, file.sha256, file.content_type, now)
            )

    def moved(self, old: Path, new: Path) -> None:
        """A file the index may name was moved (kept aside before another took its name): queue its entries
        following it, in order with the rows queued around it. Its bytes are checked when it is used."""
        self._moves.append((len(self._queued), str(old), str(new)))

    def forget(self, path: Path) -> None:
        """A file that is gone or no longer holds the recorded bytes."""
        try:
            self._db.execute("DELETE FROM images WHERE path = ?", (str(path),))
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot write the reuse index {self.path}: {exc}") from exc

    def flush(self) -> None:
        if not self._queued and not self._moves:
            return
        rows, self._queued = self._queued, []
        moves, self._moves = self._moves, []
        try:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                done = 0
                for position, old, new in moves:  # a move applies before the rows queued after it
                    self._insert(rows[done:position])
                    done = position
                    self._db.execute("UPDATE OR REPLACE images SET path = ? WHERE path = ?", (new, old))
                self._insert(rows[done:])
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot write the reuse index {self.path}: {exc}") from exc

    def _insert(self, rows: list[tuple[object, ...]]) -> None:
        self._db.executemany("INSERT OR REPLACE INTO images VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
