"""Marking jobs to be generated again (``batchgen retry``), keeping every earlier image.

A marked job goes back to pending with a fresh set of attempts and the ledger's
``fresh`` flag, so the next ``batchgen run`` pays for a new run of its own rather
than copying an identical request's image. Its files are first moved aside, never
overwritten or deleted, to::

    DIR/.batchgen/versions/<job id>/<attempt id>/<the file's path in DIR>

and recorded in the ledger's ``versions`` table (where ``report`` finds them); the
ledger then lists no file for the job until the new run saves one. The folder's
``.batchgen/`` is batchgen's own: the unknown-image scan and people browsing the
catalogue do not see earlier versions among the current images, and a report
still links them relatively, so the folder can be zipped and shared whole.

Files are moved before the ledger commits. A crash in between leaves the ledger
listing files that are not there; the next ``run`` fetches them again from their
run (free), and ``retry`` can be repeated: a version already in place with the same
bytes is recognised, never overwritten.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import OutputError, UsageError
from .folder import STATE_DIR
from .ledger import Ledger
from .models import JobState
from .outputs import (
    UnsafeName,
    failure_reason,
    file_sha256,
    in_plain_folders,
    make_folders,
    numbered,
    output_path,
    rename_below,
    unlink_below,
)

VERSIONS_DIR = "versions"  # under STATE_DIR

# The kinds the ledger records in jobs.error_kind, with the words a user knows them by.
ERROR_KINDS: dict[str, str] = {
    "rate_limit": "rate limit: creates kept getting 429",
    "server_error": "server error: creates kept failing with 5xx or network errors",
    "download": "download: the image could not be fetched or saved",
    "run_failed": "run failed: the run ended failed, vanished or never finished",
    "rejected": "bad request / content policy: the API refused the job's input (400)",
    "missing": "missing file: the image is gone from the folder and its run no longer serves it",
    "unknown": "no answer: the create's answer never came (a possible double charge)",
    "reference": "reference image: one of the job's image_urls did not answer; it was not paid for",
}
_ALIASES = {
    "rate_limit": ("ratelimit", "rate_limited", "429", "throttled"),
    "server_error": ("server", "5xx", "500", "502", "503", "network", "api_error"),
    "download": ("downloads", "download_failed"),
    "run_failed": ("failed_run", "run", "runs_failed", "failed"),
    "rejected": ("bad_request", "content_policy", "policy", "400", "refused", "invalid"),
    "missing": ("missing_file", "missing_files", "file_missing", "lost"),
    "unknown": ("no_answer", "lost_answer", "possible_double_charge", "double_charge"),
    "reference": ("references", "reference_image", "image_url", "image_urls", "dead_link", "url"),
}
_KIND_NAMES = {alias: kind for kind, aliases in _ALIASES.items() for alias in (kind, *aliases)}


def parse_error_kind(text: str) -> str:
    """The ledger's kind for ``text`` ('rate limit', 'bad-request', 'content policy', '5xx'...)."""
    key = re.sub(r"[\s_/-]+", "_", text.strip().lower()).strip("_")
    if key in _KIND_NAMES:
        return _KIND_NAMES[key]
    raise UsageError(f"unknown error kind {text!r}; use one of: " + ", ".join(k.replace("_", "-") for k in ERROR_KINDS))


def parse_ids(texts: Iterable[str]) -> list[str]:
    """Job ids from ``--ids`` values or a file's lines: split at commas, spaces, newlines; '#' starts a comment."""
    ids: list[str] = []
    for text in texts:
        for line in text.splitlines():
            line = line.split("#", 1)[0]
            ids.extend(part for part in re.split(r"[\s,]+", line) if part)
    return list(dict.fromkeys(ids))


@dataclass
class Marked:
    """What ``mark`` did (or, with ``dry_run``, would do)."""

    jobs: list[str] = field(default_factory=list)  # marked to be generated again
    versions: list[dict[str, Any]] = field(default_factory=list)  # earlier images moved aside (paths in DIR)
    gone: list[str] = field(default_factory=list)  # files listed for a marked job that were not in the folder
    in_flight: list[str] = field(default_factory=list)  # left alone: a run is open for them; `run` collects it


def missing_jobs(ledger: Ledger, output_dir: Path) -> list[str]:
    """Jobs whose image is not in the folder: failed as 'missing', or succeeded with a listed file absent."""
    found = dict.fromkeys(ledger.failed_jobs(["missing"]))
    for job_id, _attempt, path, _bytes in ledger.recorded_outputs():
        if job_id not in found and not _is_file(output_dir, path):
            found[job_id] = None
    return list(found)


def mark(ledger: Ledger, output_dir: Path, job_ids: list[str], *, dry_run: bool = False) -> Marked:
    """Mark ``job_ids`` (all in the current manifest) to be generated again; see the module docstring.

    The caller holds the ledger's and the output folder's locks.
    """
    states = ledger.jobs_by_id(job_ids)
    result = Marked()
    for job_id in job_ids:
        if states[job_id][1] == JobState.RUNNING:
            result.in_flight.append(job_id)
        else:
            result.jobs.append(job_id)
    moves: list[tuple[Path, Path]] = []
    for recorded in ledger.outputs_of(result.jobs):
        source, target, rel = _places(output_dir, recorded)
        if not in_plain_folders(output_dir, source) or not source.is_file() or source.is_symlink():
            result.gone.append(recorded["path"])
            continue
        size = source.stat().st_size
        sha256 = recorded["sha256"] if size == recorded["bytes"] else file_sha256(source)
        target, rel, present = _free_place(output_dir, target, rel, size, sha256)
        result.versions.append({**recorded, "path": rel, "bytes": size, "sha256": sha256})
        if not present:
            moves.append((source, target))
        elif not dry_run:  # this very version is already kept (a retry stopped before its commit)
            try:
                unlink_below(output_dir, source)
            except (OSError, UnsafeName) as exc:
                raise OutputError(f"cannot remove {source}, already kept as {target}: {failure_reason(exc)}") from exc
    if dry_run:
        return result
    done: list[tuple[Path, Path]] = []
    try:
        for source, target in moves:
            make_folders(output_dir, target.parent)  # never through a symlink: .batchgen/ and below are ours
            rename_below(output_dir, source, target)  # and not through one put there since
            done.append((source, target))
    except (OSError, UnsafeName) as exc:
        _put_back(output_dir, done)
        raise OutputError(f"cannot move {source} aside to {target}: {failure_reason(exc)}; nothing changed") from exc
    try:
        ledger.mark_for_retry(result.jobs, result.versions)
    except BaseException:
        _put_back(output_dir, done)
        raise
    return result


def _places(output_dir: Path, recorded: dict[str, Any]) -> tuple[Path, Path, str]:
    """The file as listed, where its earlier version goes, and that place relative to the folder."""
    path = str(recorded["path"])
    base = output_dir / STATE_DIR / VERSIONS_DIR
    job_id = str(recorded["job_id"])
    try:
        source = output_path(output_dir, path)
    except UnsafeName as exc:
        raise OutputError(f"the ledger lists a file outside the output folder ({path!r}); not moving it") from exc
    for folder in (job_id, "job-" + hashlib.sha256(job_id.encode()).hexdigest()[:16]):
        try:
            target = output_path(base, f"{folder}/{recorded['attempt_id']}/{path}")
        except UnsafeName:
            continue  # an id that is no plain file name: the folder is named by its hash
        return source, target, target.relative_to(output_dir).as_posix()
    raise OutputError(f"cannot build a place to keep {path!r} aside")


def _free_place(output_dir: Path, target: Path, rel: str, size: int, sha256: str) -> tuple[Path, str, bool]:
    """``target``, or the first ``name.vN.ext`` not taken; True when the same bytes are already there."""
    for candidate in numbered(target):
        if not os.path.lexists(candidate):
            return candidate, candidate.relative_to(output_dir).as_posix(), False
        if candidate.is_file() and candidate.stat().st_size == size and file_sha256(candidate) == sha256:
            return candidate, candidate.relative_to(output_dir).as_posix(), True
    raise AssertionError("numbered() never ends")


def _put_back(output_dir: Path, done: list[tuple[Path, Path]]) -> None:
    for source, target in reversed(done):
        try:
            rename_below(output_dir, target, source)
        except (OSError, UnsafeName):
            pass  # still kept under .batchgen/versions: nothing is lost


def _is_file(output_dir: Path, path: str) -> bool:
    try:
        file = output_path(output_dir, path)
        return in_plain_folders(output_dir, file) and file.is_file()
    except UnsafeName:
        return False
