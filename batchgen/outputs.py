"""Output files: names, temporary files, atomic renames, hashes.

A file under its final name is always complete: bytes stream into a hidden
``.batchgen-*.part`` file in the output folder and are renamed into place
only once the whole body has arrived (and its declared length matched). A
crash leaves at most a ``.part`` file, which the next run removes.

Every name is built here from a job's stem: its id, which the manifest already
limited to letters, digits, ``.``, ``_`` and ``-``, or a ``filename:`` made of
such segments joined by ``/``. ``output_path`` checks again, so no name built
from manifest data can point outside the output folder.

Names are unique by construction: a run's first output is ``<stem>.<ext>`` and
any further ones ``<stem>~<n>.<ext>``; ``~`` cannot appear in a stem, so job
``lamp``'s second image can never be job ``lamp-2``'s file, however many images
the API chooses to return.
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import json
import os
import re
import secrets
import stat
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

from .models import SavedOutput

TEMP_PREFIX = ".batchgen-"
TEMP_SUFFIX = ".part"
EXTENSIONS = {
    "image/png": "png",
    "image/jpeg": "jpg",
    "image/jpg": "jpg",
    "image/webp": "webp",
    "image/gif": "gif",
    "image/avif": "avif",
}
# Opening a file of batchgen's own: never through a symlink under its name, not inherited by children.
NO_FOLLOW = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
# Flags for a file batchgen creates: new (never an existing file, nor a symlink's target), not inherited.
NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | NO_FOLLOW
_SAFE_SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._~-]{0,199}")


class UnsafeName(ValueError):
    """A name that could leave the output folder."""


def extension_for(content_type: str, url: str) -> str:
    """From the content type; else from the URL's path; else ``bin``."""
    if content_type in EXTENSIONS:
        return EXTENSIONS[content_type]
    suffix = Path(urlsplit(url).path).suffix.lower().lstrip(".")
    if suffix in set(EXTENSIONS.values()) | {"jpeg"}:
        return "jpg" if suffix == "jpeg" else suffix
    return "bin"


def output_name(stem: str, n: int, extension: str) -> str:
    """``<stem>.<ext>`` for a run's first output (n = 0), ``<stem>~<n+1>.<ext>`` for the others."""
    return f"{stem}.{extension}" if n == 0 else f"{stem}~{n + 1}.{extension}"


def output_path(output_dir: Path, name: str) -> Path:
    """``output_dir / name``, refusing anything that could leave the folder.

    ``name`` is relative, made of ``/``-separated segments that are each a plain
    file name (no ``..``, no leading dot, no NUL, no backslash).
    """
    segments = name.split("/")
    if (
        len(name) > 1024
        or len(segments) > 16
        or not all(_SAFE_SEGMENT.fullmatch(segment) and segment not in (".", "..") for segment in segments)
    ):
        raise UnsafeName(f"refusing unsafe output file name {name!r}")
    path = output_dir.joinpath(*segments)
    if path.parent != output_dir and output_dir not in path.parents:
        raise UnsafeName(f"refusing unsafe output file name {name!r}")
    return path


class PartialFile:
    """A temporary file in the output folder that becomes an output on ``commit``."""

    def __init__(self, output_dir: Path, job_id: str, before_rename: Callable[[SavedOutput], None] | None = None):
        """``before_rename`` is called with what the file is, once it is complete and before it takes its
        name: the folder's journal records it there, so a file under its final name is always accounted for."""
        self.output_dir = output_dir
        self._before_rename = before_rename
        self.temp_path = output_dir / f"{TEMP_PREFIX}{job_id[:40]}-{secrets.token_hex(8)}{TEMP_SUFFIX}"
        # Mode 0666 filtered by the umask at this moment: the file gets the user's usual permissions.
        self._file = os.fdopen(os.open(self.temp_path, NEW_FILE, 0o666), "wb")
        self._sha256 = hashlib.sha256()
        self.size = 0
        self._renamed = False

    @property
    def sha256(self) -> str:
        """The hex sha256 of what was written so far."""
        return self._sha256.hexdigest()

    def write(self, chunk: bytes) -> None:
        self._file.write(chunk)
        self._sha256.update(chunk)
        self.size += len(chunk)

    def commit(self, name: str, n: int, content_type: str) -> SavedOutput:
        final = output_path(self.output_dir, name)
        self._file.close()
        if final.parent != self.output_dir:
            make_folders(self.output_dir, final.parent)
        saved = SavedOutput(n=n, path=name, bytes=self.size, sha256=self._sha256.hexdigest(), content_type=content_type)
        if self._before_rename is not None:
            self._before_rename(saved)
        if final.parent == self.output_dir:
            os.replace(self.temp_path, final)
        else:  # into the folder checked above even if it was swapped for a symlink since
            rename_below(self.output_dir, self.temp_path, final)
        self._renamed = True
        return saved

    def discard(self) -> None:
        self._file.close()
        if self._renamed:  # the temporary name is gone: nothing to remove
            return
        try:
            self.temp_path.unlink()
        except FileNotFoundError:
            pass

    def __enter__(self) -> PartialFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        # Runs on success too: after commit the temp name no longer exists.
        self.discard()


def numbered(target: Path) -> Iterator[Path]:
    """``target``, then ``name.v2.ext``, ``name.v3.ext``, ...: the places an earlier version may be kept."""
    yield target
    for number in itertools.count(2):
        yield target.with_name(f"{target.stem}.v{number}{target.suffix}")


def file_sha256(path: Path) -> str:
    """The hex sha256 of a file's bytes, read a megabyte at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@contextmanager
def lookup_below(folder: str) -> Iterator[tuple[str, int | None]]:
    """``(prefix, fd)`` such that ``os.stat(prefix + path, dir_fd=fd)`` looks up ``path``, relative
    to ``folder``: for checking a million files in a row.

    Each file is looked up through a descriptor of the folder held open meanwhile (``prefix``
    empty), so the kernel walks only the path below the folder, not the folder's own path again
    for every file: about a quarter less time a file. Where the platform cannot look up relative
    to a descriptor, or the folder cannot be opened, by the whole path (``fd`` None)."""
    base = folder.rstrip(os.sep) + os.sep
    try:
        if os.stat not in os.supports_dir_fd:
            raise OSError("no lookup relative to a folder here")
        fd = os.open(base, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        yield base, None
        return
    try:
        yield "", fd
    finally:
        os.close(fd)


def remove_stale_partials(output_dir: Path) -> int:
    """Delete ``.part`` files a crashed run left behind; only call while holding the run lock."""
    removed = 0
    for path in output_dir.glob(f"{TEMP_PREFIX}*{TEMP_SUFFIX}"):
        try:
            path.unlink()
            removed += 1
        except FileNotFoundError:
            pass
    return removed


def make_folders(output_dir: Path, folder: Path) -> None:
    """Create ``folder`` inside ``output_dir`` one level at a time, refusing to pass through a symlink."""
    current = output_dir
    for part in folder.relative_to(output_dir).parts:
        current = current / part
        try:
            current.mkdir()
        except FileExistsError:
            if current.is_symlink() or not current.is_dir():
                raise UnsafeName(f"refusing to write through {current}: not a plain folder") from None


_NO_SYMLINK = getattr(os, "O_NOFOLLOW", 0)
_FOLDER = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)
_RENAME_IN_FOLDER = bool(_NO_SYMLINK) and {os.open, os.rename} <= os.supports_dir_fd
_UNLINK_IN_FOLDER = _RENAME_IN_FOLDER and os.unlink in os.supports_dir_fd


@contextmanager
def _opened_folder(output_dir: Path, folder: Path) -> Iterator[int]:
    """A descriptor of ``folder`` inside ``output_dir``, each level below ``output_dir`` opened from the one
    above without following a symlink: what is done through it stays in the output folder, whatever was
    swapped for a symlink after ``make_folders`` looked."""
    fd = os.open(output_dir, _FOLDER)
    try:
        for part in folder.relative_to(output_dir).parts:
            try:
                inner = os.open(part, _FOLDER | _NO_SYMLINK, dir_fd=fd)
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                raise UnsafeName(f"refusing to write through {folder}: {part} is not a plain folder") from None
            os.close(fd)
            fd = inner
        yield fd
    finally:
        os.close(fd)


def rename_below(output_dir: Path, source: Path, target: Path) -> None:
    """Rename ``source`` to ``target``, both inside ``output_dir``, through descriptors of their folders opened
    without following a symlink (``_opened_folder``): a folder checked before and swapped for a symlink since
    cannot redirect the rename out of the output folder, nor bring a file in from outside. Raises UnsafeName
    when a folder on either path is not a plain folder now."""
    if not _RENAME_IN_FOLDER:
        os.replace(source, target)
        return
    with _opened_folder(output_dir, source.parent) as src, _opened_folder(output_dir, target.parent) as dst:
        os.rename(source.name, target.name, src_dir_fd=src, dst_dir_fd=dst)  # (POSIX: replaces, as os.replace)


def unlink_below(output_dir: Path, path: Path) -> None:
    """Remove the file ``path`` inside ``output_dir`` through a descriptor of its folder, as ``rename_below``
    renames: a folder swapped for a symlink since it was checked cannot have a file outside removed."""
    if not _UNLINK_IN_FOLDER:
        os.unlink(path)
        return
    with _opened_folder(output_dir, path.parent) as folder:
        os.unlink(path.name, dir_fd=folder)


def failure_reason(exc: BaseException) -> object:
    """What to say after "cannot ...:" for a failed file operation: the system's words (``No space left on
    device``) rather than the exception's ``[Errno 28] ...`` with the path again; else the exception."""
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else exc


def in_plain_folders(output_dir: Path, path: Path) -> bool:
    """Whether ``path`` (inside ``output_dir``) is reached through folders of ``output_dir`` alone: no
    folder between them is a symlink (someone may have put one there, pointing outside, between runs).
    A folder that does not exist passes: nothing is reached through it."""
    current = output_dir
    for part in path.relative_to(output_dir).parts[:-1]:
        current = current / part
        try:
            if not stat.S_ISDIR(os.lstat(current).st_mode):
                return False
        except FileNotFoundError:
            return True
    return True


def sidecar_name(image: str) -> str:
    """``lighting/lamp~2.json`` for ``lighting/lamp~2.png``: the image's name with ``.json`` for its extension."""
    stem, dot, _ = image.rpartition(".")
    return (stem if dot else image) + ".json"


def write_sidecar(output_dir: Path, image: SavedOutput, record: Mapping[str, object]) -> str:
    """Write ``record`` as JSON next to ``image`` (atomically, like the image); returns its name."""
    name = sidecar_name(image.path)
    data = (json.dumps(record, ensure_ascii=False, indent=2) + "\n").encode("utf-8")
    with PartialFile(output_dir, Path(name).name) as part:
        part.write(data)
        part.commit(name, image.n, "application/json")
    return name
