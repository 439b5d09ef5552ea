"""Output files: names, temporary files, atomic renames, hashes.

A file under its final name is always complete: bytes stream into a hidden
``.batchgen-*.part`` file in the output folder and are renamed into place
only once the whole body has arrived (and its declared length matched). A
crash leaves at most a ``.part`` file, which the next run removes.

Every name is built here from a job id that the manifest already limited to
letters, digits, ``.``, ``_`` and ``-``; ``output_path`` checks again, so no
name built from manifest data can point outside the output folder.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
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
_SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,199}")


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


def output_name(job_id: str, n: int, total: int, extension: str) -> str:
    """``<job_id>.<ext>``, or ``<job_id>-<n>.<ext>`` (n from 1) when a run returned several."""
    stem = job_id if total == 1 else f"{job_id}-{n + 1}"
    return f"{stem}.{extension}"


def output_path(output_dir: Path, name: str) -> Path:
    """``output_dir / name``, refusing anything that is not a plain file name inside it."""
    if not _SAFE_NAME.fullmatch(name) or name in (".", ".."):
        raise UnsafeName(f"refusing unsafe output file name {name!r}")
    path = output_dir / name
    if path.parent != output_dir:
        raise UnsafeName(f"refusing unsafe output file name {name!r}")
    return path


class PartialFile:
    """A temporary file in the output folder that becomes an output on ``commit``."""

    def __init__(self, output_dir: Path, job_id: str):
        self.output_dir = output_dir
        self.temp_path = output_dir / f"{TEMP_PREFIX}{job_id[:40]}-{secrets.token_hex(8)}{TEMP_SUFFIX}"
        # Mode 0666 filtered by the umask at this moment: the file gets the user's usual permissions.
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        self._file = os.fdopen(os.open(self.temp_path, flags, 0o666), "wb")
        self._sha256 = hashlib.sha256()
        self.size = 0

    def write(self, chunk: bytes) -> None:
        self._file.write(chunk)
        self._sha256.update(chunk)
        self.size += len(chunk)

    def commit(self, name: str, n: int, content_type: str) -> SavedOutput:
        final = output_path(self.output_dir, name)
        self._file.close()
        os.replace(self.temp_path, final)
        return SavedOutput(n=n, path=name, bytes=self.size, sha256=self._sha256.hexdigest(), content_type=content_type)

    def discard(self) -> None:
        self._file.close()
        try:
            self.temp_path.unlink()
        except FileNotFoundError:
            pass

    def __enter__(self) -> PartialFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        # Runs on success too: after commit the temp name no longer exists.
        self.discard()


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
