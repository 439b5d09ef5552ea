"""The output folder's own state: its lock and its journal, kept in ``<folder>/.batchgen/``.

The lock belongs to the folder, not to a ledger: two runs with different
ledgers on one folder would overwrite each other's files and delete each
other's partial downloads, so the second one stops at once.

The journal is what survives the ledger. Before its ledger transaction
commits, every money event is appended to it: an attempt whose create is about
to be sent, the run id a create answered, a create that certainly made no run;
and every image, before it is renamed into place, with what it is (job, spec
hash, run id, n, sha256, size). A ledger that was deleted, emptied or rolled
back (its ``-wal`` deleted) is repaired from it at the next run: runs it had
forgotten are polled instead of paid for again, images already in the folder
are adopted, creates that never answered are counted as possible double
charges. The ledger remembers how far into the journal its commits reach
(``journal_offset`` in its meta, committed with the writes), so a run reads
only the part a ledger may lack.

Lines are JSON, one event each, appended with ``O_APPEND`` in one write, so a
killed process leaves at most one partial last line (skipped when read).

An output never overwrites a file with other bytes: whatever held its name (the user's
own file, the image of a job's earlier prompt, an image changed in place) is moved to
``<folder>/.batchgen/replaced/`` first, and the run's log says so.

Partial downloads a crashed run left are removed by the next run. Looking for them
reads the whole folder (seconds at a million images), so a run that ends cleanly
leaves a mark, ``<folder>/.batchgen/clean``, saying that no partial file is left;
the next run to take the lock removes the mark before it does anything and skips
the search. A run killed or crashed leaves no mark, so the run after it searches.

``<folder>/.batchgen/made-by`` says what made the folder's images: ``api``, or
``simulator`` for ``--simulate``. A run of the other kind refuses a folder that still
holds images (``claim``): a real run would take the simulator's placeholders for
done, and a simulated one would mix placeholders in with real images.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import LedgerBusy, OutputError
from .models import SavedOutput
from .outputs import (
    NO_FOLLOW,
    TEMP_PREFIX,
    TEMP_SUFFIX,
    UnsafeName,
    failure_reason,
    file_sha256,
    make_folders,
    numbered,
    output_path,
    rename_below,
)

try:
    import fcntl
except ImportError:  # pragma: no cover - not on POSIX
    fcntl = None  # type: ignore[assignment]

STATE_DIR = ".batchgen"
REPLACED_DIR = "replaced"  # in STATE_DIR: files an output's name held before it (keep_aside)
CLEAN_MARK = "clean"  # in STATE_DIR: the last run to hold the lock left no partial file (module docstring)
MADE_BY = "made-by"  # in STATE_DIR: "api" or "simulator", what made the folder's images (OutputFolder.claim)
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp"})


@dataclass(frozen=True)
class JournalEntry:
    offset: int  # where the line ends in the journal
    event: str  # attempt | run | void | file
    data: dict[str, Any]


class OutputFolder:
    def __init__(self, path: Path):
        self.path = path
        self.state = path / STATE_DIR
        self._lock_fd: int | None = None
        self._journal_fd: int | None = None
        self._buffer: list[bytes] = []
        self._folder_id: str | None = None
        self._clean = False  # no partial file left by an earlier run: the mark was found, or the search done

    def __repr__(self) -> str:
        return f"OutputFolder({str(self.path)!r})"

    # -- lock -------------------------------------------------------------------

    def lock(self) -> None:
        """Take the folder's one-runner lock or raise LedgerBusy; released on close or process death."""
        if fcntl is None or self._lock_fd is not None:
            return
        try:
            self.state.mkdir(mode=0o755, parents=True, exist_ok=True)
            if stat.S_ISLNK(os.lstat(self.state).st_mode):
                raise OutputError(
                    f"{self.state} is a symlink, not batchgen's own folder: batchgen writes nothing through it; "
                    "remove it (the next run starts a new one)"
                )
            fd = os.open(self.state / "lock", os.O_RDWR | os.O_CREAT | NO_FOLLOW, 0o644)
        except OSError as exc:
            raise OutputError(f"cannot use the output folder {self.path}: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LedgerBusy(
                f"another batchgen run is writing to the output folder {self.path}; wait for it to finish, "
                "or stop it first"
            ) from None
        self._lock_fd = fd
        self._journal()  # opened now, once: files may be journaled from a worker thread
        try:
            os.unlink(self.state / CLEAN_MARK)  # before this run can leave anything behind
            self._clean = True
        except OSError:
            self._clean = False

    def close(self) -> None:
        """Write what the journal still holds and release the lock. When the folder was known to hold no
        partial file at the start and nothing is going wrong (no exception on its way: closed in a
        ``finally`` or ``except`` on the way out of an error, the folder is searched again next time),
        leave the mark that lets the next run skip the search."""
        if self._buffer:
            self.write_journal()
        if self._lock_fd is not None and self._clean and sys.exc_info()[0] is None:
            try:
                note = "the last batchgen run on this folder ended cleanly: no partial download left\n"
                _write_own(self.state / CLEAN_MARK, note)
            except OSError:
                pass  # the next run searches the folder
        for fd in (self._journal_fd, self._lock_fd):
            if fd is not None:
                os.close(fd)
        self._journal_fd = self._lock_fd = None
        self._clean = False

    def __enter__(self) -> OutputFolder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- what makes the images -------------------------------------------------

    def claim(self, maker: str) -> str | None:
        """Record that ``maker`` ("api" or "simulator") makes this folder's images. When an earlier run
        recorded the other one and its images are still here, record nothing and return it: the caller
        refuses, as a real run would take the simulator's placeholders for done, and a simulated one would
        put placeholders among real images. A folder without images changes hands freely."""
        path = self.state / MADE_BY
        recorded = _read_mark(path)
        if recorded == maker:
            return None
        if self._other_maker(recorded, maker) is not None:
            return recorded
        try:
            _write_own(path, maker + "\n")
        except OSError as exc:
            raise OutputError(f"cannot write to {path}: {exc.strerror or exc}") from exc
        return None

    def made_by_other(self, maker: str) -> str | None:
        """What an earlier run recorded as making this folder's images, when that is not ``maker`` and its
        images are still here (read only: ``--dry-run`` asks too)."""
        return self._other_maker(_read_mark(self.state / MADE_BY), maker)

    def _other_maker(self, recorded: str, maker: str) -> str | None:
        if recorded and recorded != maker and next(self.images(), None) is not None:
            return recorded
        return None

    # -- journal ----------------------------------------------------------------

    @property
    def journal_path(self) -> Path:
        return self.state / "journal"

    @property
    def folder_id(self) -> str:
        """A name for this folder's journal that survives the folder being moved; made on first use."""
        if self._folder_id is None:
            id_path = self.state / "id"
            try:
                self._folder_id = id_path.read_text(encoding="ascii").strip()
            except FileNotFoundError:
                folder_id = secrets.token_hex(8)
                try:
                    self.state.mkdir(mode=0o755, parents=True, exist_ok=True)
                    _write_own(id_path, folder_id + "\n")
                except OSError as exc:
                    raise OutputError(f"cannot write {id_path}: {exc.strerror or exc}") from exc
                self._folder_id = folder_id
        return self._folder_id

    def record_file(self, job_id: str, spec_hash: str, run_id: str, saved: SavedOutput) -> None:
        """Journal an image before it takes its name (see the module docstring). Written at once, on its
        own: it may come from a worker thread copying a reused image."""
        data = {
            "e": "file",
            "job": job_id,
            "h": spec_hash,
            "run": run_id,
            "n": saved.n,
            "path": saved.path,
            "sha256": saved.sha256,
            "bytes": saved.bytes,
            "type": saved.content_type,
        }
        line = json.dumps(data, separators=(",", ":")).encode() + b"\n"
        try:
            os.write(self._journal(), line)
        except OSError as exc:
            raise OutputError(f"cannot write to {self.journal_path}: {exc.strerror or exc}") from exc

    def note(self, event: str, **data: Any) -> None:
        """Queue a journal line; ``write_journal()`` appends every queued line in one write."""
        self._buffer.append(json.dumps({"e": event, **data}, separators=(",", ":")).encode() + b"\n")

    def write_journal(self) -> int:
        """Append the queued lines; returns the journal's size after them."""
        fd = self._journal()
        if self._buffer:
            data, self._buffer = b"".join(self._buffer), []
            try:
                os.write(fd, data)
            except OSError as exc:
                raise OutputError(f"cannot write to {self.journal_path}: {exc.strerror or exc}") from exc
        return os.fstat(fd).st_size

    def _journal(self) -> int:
        if self._journal_fd is None:
            try:
                self.state.mkdir(mode=0o755, parents=True, exist_ok=True)
                self._journal_fd = os.open(self.journal_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | NO_FOLLOW, 0o644)
            except OSError as exc:
                raise OutputError(f"cannot open {self.journal_path}: {exc.strerror or exc}") from exc
        return self._journal_fd

    def read_journal(self, offset: int = 0) -> Iterator[JournalEntry]:
        """The journal's complete lines from byte ``offset`` on; a torn or garbled line is skipped."""
        try:
            file = open(self.journal_path, "rb")  # noqa: SIM115 - closed below, generator
        except FileNotFoundError:
            return
        with file:
            size = os.fstat(file.fileno()).st_size
            file.seek(min(offset, size))
            position = file.tell()
            for line in file:
                position += len(line)
                if not line.endswith(b"\n"):
                    break
                try:
                    data = json.loads(line)
                except ValueError:
                    continue
                if isinstance(data, dict) and isinstance(data.get("e"), str):
                    yield JournalEntry(position, data.pop("e"), data)

    # -- files ------------------------------------------------------------------

    def remove_stale_partials(self) -> int:
        """Delete ``.part`` files a crashed run left behind (in any subfolder); only while holding the lock.
        Nothing to search for when the run before ended cleanly (see the module docstring)."""
        removed = 0
        if self._clean:
            return removed
        for path in _partials(os.fspath(self.path)):
            try:
                os.unlink(path)
                removed += 1
            except FileNotFoundError:
                pass
        self._clean = self._lock_fd is not None
        return removed

    def keep_aside(self, saved: SavedOutput) -> str | None:
        """Before ``saved`` takes its name: a file already there with other bytes (the user's own, an image
        of the job's earlier prompt, one changed in place) is moved to ``.batchgen/replaced/<its name>``
        (``name.vN.ext`` when that is taken) rather than overwritten. Returns where it went, relative to the
        folder; None when the name was free or held these very bytes."""
        final = output_path(self.path, saved.path)
        try:
            found = os.lstat(final)
        except FileNotFoundError:
            return None
        if stat.S_ISDIR(found.st_mode):
            return None  # a folder by that name: the rename fails and says so
        if stat.S_ISREG(found.st_mode) and found.st_size == saved.bytes and file_sha256(final) == saved.sha256:
            return None
        target = output_path(self.state / REPLACED_DIR, saved.path)
        candidate = next(place for place in numbered(target) if not os.path.lexists(place))
        try:
            make_folders(self.path, candidate.parent)  # never through a symlink: .batchgen/ and below are ours
            rename_below(self.path, final, candidate)  # and not through one put there since
        except (OSError, UnsafeName) as exc:
            raise OutputError(f"cannot keep {final} aside in {candidate.parent}: {failure_reason(exc)}") from exc
        return candidate.relative_to(self.path).as_posix()

    def images(self) -> Iterator[str]:
        """Every image file under the folder, as a path relative to it (batchgen's own state left out)."""
        for folder, subfolders, files in os.walk(self.path):
            subfolders[:] = [name for name in subfolders if name != STATE_DIR]
            base = Path(folder).relative_to(self.path)
            for name in files:
                if Path(name).suffix.lower() in IMAGE_SUFFIXES:
                    yield (base / name).as_posix()


def mixed_folder(out: Path, simulated: bool) -> str:
    """Why a run (or its --dry-run) refuses a folder whose images the other kind of run made (``claim``)."""
    if simulated:
        return (
            f"the output folder {out} holds images made through the API; --simulate would put the "
            "simulator's placeholder images among them. Give the simulation a folder of its own "
            "(--output simulated)"
        )
    return (
        f"the output folder {out} holds images made by --simulate: placeholders, not real images, and a "
        f"real run would take their jobs as done. Give the real batch a folder of its own (--output images), "
        f"or delete {out} first"
    )


def _write_own(path: Path, text: str) -> None:
    """Write one of the state folder's small ASCII files, never through a symlink under its name."""
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | NO_FOLLOW, 0o644), "w", encoding="ascii") as f:
        f.write(text)


def _read_mark(path: Path) -> str:
    try:
        return path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return ""


def _partials(top: str) -> Iterator[str]:
    """Paths of the ``.part`` files under ``top``, streamed from ``os.scandir``: a folder of a million
    images is read without holding its listing (``Path.rglob`` lists each folder whole first, which
    took hundreds of MB and seconds at that size)."""
    folders = [top]
    while folders:
        try:
            entries = os.scandir(folders.pop())
        except FileNotFoundError:
            continue
        with entries:
            for entry in entries:
                name = entry.name
                if entry.is_dir(follow_symlinks=False):
                    folders.append(entry.path)
                elif name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX):
                    yield entry.path
