"""Fill a ReportData from a ledger's public read methods and from the files on disk.

Reads only: ``counts()``, ``attempt_counts()``, ``sessions()``,
``iter_export()``, ``versions(job_id)``, ``manifest`` and ``output_dir`` of a
``Ledger`` opened ``readonly=True``. Each output file the ledger lists is looked at: present or
not, its size against the recorded one (and, with ``verify``, its sha256), its
modification time, and its pixel size from the header. A recorded path that
would lead outside the output folder is neither read nor linked.
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .data import AttemptRecord, EarlierVersion, FileStatus, JobRecord, LastRun, OutputFile, ReportData, Summary
from .images import image_size

if TYPE_CHECKING:
    from ..ledger import Ledger

ALL_SESSIONS = 1_000_000
# Attempt statuses that mean a run id came back: a run was made (and paid for).
# A file saved this long after the session's recorded finish still counts as the session's.
_MTIME_SLACK = 2.0


def build_report_data(
    ledger: Ledger,
    output_dir: Path,
    *,
    verify: bool = False,
    location_args: str = "",
    now: float | None = None,
) -> ReportData:
    """Everything the gallery shows, for the current manifest of ``ledger``.

    ``output_dir`` is where the images are now (the ledger's recorded folder may
    have been moved, zipped and unpacked elsewhere). ``verify`` hashes every file.
    """
    root = output_dir.resolve()
    versions: dict[str, list[dict[str, Any]]] = {}
    for version in ledger.iter_versions():
        versions.setdefault(str(version["job_id"]), []).append(version)
    attempt_log: dict[str, list[AttemptRecord]] = {}
    for job_id, status, run_id, error, started_at, finished_at in ledger.iter_attempts():
        attempt_log.setdefault(job_id, []).append(AttemptRecord(status, run_id, error, started_at, finished_at))
    jobs = [
        _job(record, root, verify, versions.get(str(record["job_id"]), []), attempt_log.get(str(record["job_id"])))
        for record in ledger.iter_export()
    ]
    counts = ledger.counts()
    attempts = ledger.attempt_counts()
    sessions = ledger.sessions(limit=ALL_SESSIONS)
    last_run = _last_run(sessions[0] if sessions else None)
    summary = Summary(
        ledger=str(ledger.path),
        output_dir=str(root),
        manifest=ledger.manifest,
        generated_at=time.time() if now is None else now,
        jobs=counts,
        attempts=attempts,
        runs_created=ledger.runs_created(),
        possible_double_charges=attempts.get("unknown", 0),
        missing_files=sum(1 for job in jobs if job.state == "succeeded" and job.card_state == "missing"),
        last_run=last_run,
        verified=verify,
        location_args=location_args,
        rate_limited=_session_total(sessions, "rate_limited"),
        retries=_session_total(sessions, "retries"),
        **_pace(last_run, jobs),
    )
    return ReportData(summary=summary, jobs=jobs)


def _job(
    record: Mapping[str, Any],
    root: Path,
    verify: bool,
    versions: list[dict[str, Any]],
    attempts: list[AttemptRecord] | None,
) -> JobRecord:
    return JobRecord(
        job_id=str(record["job_id"]),
        state=str(record["state"]),
        input=dict(record.get("input") or {}),
        metadata=dict(record.get("metadata") or {}),
        attempts=int(record.get("attempts") or 0),
        unknown_creates=int(record.get("unknown_creates") or 0),
        run_id=record.get("run_id"),
        error=record.get("error"),
        error_kind=record.get("error_kind"),
        source=record.get("source"),
        outputs=tuple(check_file(root, o, verify) for o in record.get("outputs") or ()),
        earlier=tuple(_earlier(root, v) for v in versions),
        attempt_log=tuple(attempts) if attempts is not None else None,
    )


def _earlier(root: Path, version: Mapping[str, Any]) -> EarlierVersion:
    """An earlier image as the ledger's versions table has it, checked on disk like an output."""
    checked = check_file(root, version)
    return EarlierVersion(
        path=checked.path,
        replaced_at=version.get("replaced_at"),
        saved_at=version.get("saved_at"),
        sha256=checked.sha256,
        bytes=checked.bytes,
        exists=checked.status in (FileStatus.OK, FileStatus.CHANGED),
        linkable=checked.status != FileStatus.OUTSIDE,
        width=checked.width,
        height=checked.height,
    )


def check_file(root: Path, recorded: Mapping[str, Any], verify: bool = False) -> OutputFile:
    """An output file as recorded, with what the disk says about it."""
    path = str(recorded["path"])
    given = OutputFile(
        path=path.replace(os.sep, "/"),
        bytes=recorded.get("bytes"),
        sha256=recorded.get("sha256"),
        saved_at=recorded.get("saved_at"),
    )
    full = inside(root, path)
    if full is None:
        return replace(given, status=FileStatus.OUTSIDE)
    try:
        info = os.stat(full)
    except OSError:
        return replace(given, status=FileStatus.MISSING)
    if not stat.S_ISREG(info.st_mode):
        return replace(given, status=FileStatus.MISSING)
    changed = given.bytes is not None and info.st_size != given.bytes
    if verify and not changed and given.sha256:
        changed = _sha256(full) != given.sha256
    size = image_size(full)
    return replace(
        given,
        status=FileStatus.CHANGED if changed else FileStatus.OK,
        size_on_disk=info.st_size,
        mtime=info.st_mtime,
        width=size[0] if size else None,
        height=size[1] if size else None,
    )


def inside(root: Path, relative: str) -> Path | None:
    """``root / relative`` if the recorded path stays inside ``root``, else None.

    Checked on the path's text (no ``..`` past the top, not absolute), as the runner's
    names are: a file the user replaced with a symlink is the user's own business.
    """
    if not relative or os.path.isabs(relative):
        return None
    normal = os.path.normpath(relative)
    if normal == os.curdir or normal == os.pardir or normal.startswith(os.pardir + os.sep):
        return None
    return root / normal


def _sha256(path: Path) -> str | None:
    digest = hashlib.sha256()
    try:
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest()


def _last_run(session: Mapping[str, Any] | None) -> LastRun | None:
    if not session:
        return None
    return LastRun(
        started_at=float(session["started_at"]),
        finished_at=None if session.get("finished_at") is None else float(session["finished_at"]),
        outcome=session.get("outcome"),
        manifest=session.get("manifest"),
        exit_code=session.get("exit_code"),
        stats=session.get("stats"),
    )


def _session_total(sessions: list[dict[str, Any]], key: str) -> int | None:
    """``key`` of the sessions' recorded figures, summed; None when no session recorded figures."""
    figures = [s["stats"] for s in sessions if isinstance(s.get("stats"), dict)]
    if not figures:
        return None
    return sum(int(f.get(key) or 0) for f in figures)


def _pace(last_run: LastRun | None, jobs: Iterable[JobRecord]) -> dict[str, Any]:
    """Wall time of the last session and the images it saved per minute.

    Images are the session's recorded downloads; for a session that recorded no
    figures, the files saved (by the ledger's time, else their modification time)
    between its start and finish.
    """
    if last_run is None or last_run.finished_at is None:
        return {}
    start, end = last_run.started_at, last_run.finished_at
    wall = max(0.0, end - start)
    if last_run.stats is not None and "downloads" in last_run.stats:
        saved = int(last_run.stats["downloads"] or 0)
        per_minute = saved / (wall / 60) if wall > 0 else None
        return {"wall_time_s": wall, "images_in_last_run": saved, "images_per_minute": per_minute}
    saved = 0
    for job in jobs:
        for output in job.outputs:
            when = output.saved_at if output.saved_at is not None else output.mtime
            if when is not None and start <= when <= end + _MTIME_SLACK:
                saved += 1
    per_minute = saved / (wall / 60) if wall > 0 else None
    return {"wall_time_s": wall, "images_in_last_run": saved, "images_per_minute": per_minute}
