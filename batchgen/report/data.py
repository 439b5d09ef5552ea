"""ReportData: everything the gallery shows, as plain data. No I/O here.

``collect.build_report_data`` fills it from a ledger and the files on disk;
``render.render_html`` turns it into one HTML page. Another source (a test, a
future ledger method, a PostgreSQL ledger) only has to fill these dataclasses.

Optional fields: ``None`` means "not recorded", which the page shows as such
rather than as zero. ``Summary.rate_limited`` and ``Summary.retries`` come from
the figures each session recorded (None for a ledger whose sessions recorded
none); ``JobRecord.earlier`` from the ledger's versions of a regenerated job.
Not given by the ledger yet, and left empty: ``JobRecord.attempt_log`` (one
``AttemptRecord`` per attempt) and ``OutputFile.saved_at``.

What the report checks itself on disk: whether each listed file exists, its
size (and, with ``verify``, its sha256) against what the ledger recorded, its
modification time and its pixel size.
"""

from __future__ import annotations

import enum
import shlex
from dataclasses import dataclass, field
from typing import Any


class CardState(enum.StrEnum):
    """What a card says about a job; the page's state filter uses these names."""

    SUCCEEDED = "succeeded"  # every file is there as the ledger recorded it
    FAILED = "failed"  # failed for good; the error says why
    PENDING = "pending"  # waiting for a run, or a run in flight
    MISSING = "missing"  # succeeded, but a file is gone or differs from what was saved


class FileStatus(enum.StrEnum):
    OK = "ok"
    MISSING = "missing"  # not on disk (or not a regular file)
    CHANGED = "changed"  # size or sha256 differs from the ledger's record
    OUTSIDE = "outside"  # the recorded path points outside the output folder: not read, not linked


@dataclass(frozen=True, slots=True)
class OutputFile:
    """One output file of a job, as the ledger recorded it and as the disk has it."""

    path: str  # relative to the output folder, with '/' separators
    bytes: int | None = None  # as recorded
    sha256: str | None = None  # as recorded
    status: FileStatus = FileStatus.OK
    size_on_disk: int | None = None
    mtime: float | None = None  # the file's modification time (seconds since the epoch)
    width: int | None = None  # pixels, read from the file's header
    height: int | None = None
    saved_at: float | None = None  # per the ledger; not recorded by today's iter_export


@dataclass(frozen=True, slots=True)
class EarlierVersion:
    """An image a regeneration replaced, kept under the output folder."""

    path: str  # relative to the output folder
    replaced_at: float | None = None
    saved_at: float | None = None
    sha256: str | None = None
    bytes: int | None = None
    exists: bool = True  # on disk now
    linkable: bool = True  # False: the recorded path leads outside the output folder
    width: int | None = None
    height: int | None = None


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """One attempt at a run, as the ledger's attempts table holds it."""

    status: str  # models.AttemptStatus values
    run_id: str | None = None
    error: str | None = None
    started_at: float | None = None
    finished_at: float | None = None


@dataclass(frozen=True, slots=True)
class JobRecord:
    """One job of the current manifest, in manifest order."""

    job_id: str
    state: str  # the ledger's state: pending, succeeded, failed (running reads as pending)
    input: dict[str, Any]  # the API input as sent: prompt, aspect_ratio, quality, image_urls
    metadata: dict[str, Any] = field(default_factory=dict)
    attempts: int = 0  # attempts at the current spec
    unknown_creates: int = 0  # creates whose answer never came (possible double charges)
    run_id: str | None = None  # the latest run
    error: str | None = None
    error_kind: str | None = None  # the failure's class, as `retry --error-kind` names it
    source: str | None = None  # "reused" / "adopted": the image came without a run of its own
    outputs: tuple[OutputFile, ...] = ()
    earlier: tuple[EarlierVersion, ...] = ()
    attempt_log: tuple[AttemptRecord, ...] | None = None  # None: not recorded

    @property
    def card_state(self) -> CardState:
        if self.state == "succeeded":
            if not self.outputs or any(o.status != FileStatus.OK for o in self.outputs):
                return CardState.MISSING
            return CardState.SUCCEEDED
        if self.state == "failed":
            return CardState.FAILED
        return CardState.PENDING

    @property
    def prompt(self) -> str:
        prompt = self.input.get("prompt")
        return prompt if isinstance(prompt, str) else ""


@dataclass(frozen=True, slots=True)
class LastRun:
    """The latest ``batchgen run`` session recorded in the ledger."""

    started_at: float
    finished_at: float | None  # None: crashed or still running
    outcome: str | None
    manifest: str | None
    exit_code: int | None = None
    stats: dict[str, Any] | None = None  # the session's figures (models.BatchStats fields), if recorded


@dataclass(frozen=True, slots=True)
class Summary:
    """The figures at the top of the page."""

    ledger: str
    output_dir: str  # absolute: where the images are
    manifest: str | None  # as given to `batchgen run`
    generated_at: float
    jobs: dict[str, int]  # the ledger's counts by state: pending, running, succeeded, failed
    attempts: dict[str, int]  # attempts by status (models.AttemptStatus values), all sessions
    runs_created: int  # attempts that got a run id
    possible_double_charges: int  # attempts whose create answer never came
    missing_files: int  # succeeded jobs whose file is gone or changed on disk
    last_run: LastRun | None = None
    wall_time_s: float | None = None  # the last session's, start to finish
    images_per_minute: float | None = None  # the last session's images over its wall time
    images_in_last_run: int | None = None
    rate_limited: int | None = None  # 429 answers, summed over the sessions that recorded figures; None: none did
    retries: int | None = None  # transient failures retried, likewise
    verified: bool = False  # files were hashed and compared with the ledger's sha256
    location_args: str = ""  # `--output DIR` / `--ledger PATH`, shell-quoted, for the fix commands; "" for defaults


@dataclass(frozen=True, slots=True)
class ReportData:
    summary: Summary
    jobs: list[JobRecord]

    def card_counts(self) -> dict[str, int]:
        counts = dict.fromkeys((s.value for s in CardState), 0)
        for job in self.jobs:
            counts[job.card_state.value] += 1
        return counts


def fix_command(job: JobRecord, summary: Summary) -> str | None:
    """The command that makes this job right, as a user would type it; None for a succeeded job."""
    where = f" {summary.location_args}" if summary.location_args else ""
    run = f"batchgen run {shlex.quote(summary.manifest) if summary.manifest else 'MANIFEST'}{where}"
    state = job.card_state
    if state in (CardState.PENDING, CardState.MISSING):
        return run  # a missing or changed file is fetched again from its run, at no new charge
    if state == CardState.FAILED:
        return f"batchgen retry{where} --ids {job.job_id} && {run}"
    return None
