"""How a batch ended, in words and an exit code: ``BatchResult`` and the one table that maps an ``Outcome`` to both."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from .errors import BatchgenError, FilesRefused, LedgerError, ManifestError, Misaddressed
from .exitcodes import ExitCode
from .ledger import Ledger
from .models import BatchStats, Outcome
from .words import plural


@dataclass
class BatchResult:
    outcome: Outcome
    exit_code: int
    message: str  # what happened and, when the batch stopped early, what to do
    counts: dict[str, int] = field(default_factory=dict)  # jobs by state in the ledger
    stats: BatchStats = field(default_factory=BatchStats)  # this session's work
    unknown_creates_total: int = 0  # possible double charges, all sessions
    elapsed: float = 0.0
    output_dir: Path | None = None
    notes: list[str] = field(default_factory=list)  # what was found and mended before the batch ran


def manifest_message(exc: ManifestError, *, sent: bool = False) -> str:
    problems = "\n".join(f"  {p}" for p in exc.problems)
    if sent:
        return (
            "the manifest has errors, found while its first jobs were already running; no more runs were "
            f"created, the runs already paid for were collected. Fix these and run again:\n{problems}"
        )
    return f"the manifest has errors; nothing was sent:\n{problems}"


def local_error(exc: BaseException, output_dir: Path) -> str:
    if isinstance(exc, OSError):
        return f"cannot use the output folder {output_dir}: {exc.strerror or exc}"
    return str(exc)


# Why a batch ended → its exit code and what to tell the user. Messages may use {error} (what
# stopped it), {waiting} (the jobs still to do) and {kept} (what becomes of their runs); DONE's depends on
# the counts and is built below.
_OUTCOMES: dict[Outcome, tuple[int, str]] = {
    Outcome.DONE: (ExitCode.OK, ""),
    Outcome.RUNS_KEPT: (
        ExitCode.UNAVAILABLE,
        "the API or its file host kept failing ({error}); {waiting}, {kept} without paying again. "
        "Run the same command again later.",
    ),
    Outcome.ACCOUNT: (
        ExitCode.ACCOUNT,
        "stopped by the account: {error}. Runs already created were collected; {waiting}. "
        "Add credits or lift the cap, then run the same command again to finish.",
    ),
    Outcome.UNAUTHORIZED: (
        ExitCode.UNAUTHORIZED,
        "the API refused the key ({error}): check RUNBASE_API_KEY. "
        "Nothing was lost; run the same command again once it is fixed.",
    ),
    Outcome.UNAVAILABLE: (
        ExitCode.UNAVAILABLE,
        "the API kept failing ({error}); stopped creating runs. {waiting}; runs already "
        "created are recorded. Run the same command again later.",
    ),
    Outcome.INTERRUPTED: (
        ExitCode.INTERRUPTED,
        "interrupted; {waiting}. Run the same command again to finish.",
    ),
    Outcome.MANIFEST: (ExitCode.USAGE, ""),
    Outcome.CAPPED: (
        ExitCode.CAPPED,
        "stopped at the cap you set: {error}. No more runs were created; the runs in flight were collected; "
        "{waiting}. Run the same command again to continue.",
    ),
    Outcome.ERROR: (
        ExitCode.LOCAL,
        "stopped: {error}. Nothing recorded was lost; run the same command again once fixed.",
    ),
}


def _manifest_read(ledger: Ledger) -> bool:
    try:
        return ledger.manifest_read
    except LedgerError:
        return True


def _done_message(failed: int, stats: BatchStats) -> tuple[int, str]:
    if failed:
        return ExitCode.JOBS_FAILED, (
            f"{failed} {plural(failed, 'job')} failed for good; `batchgen status` says why, "
            f"and `batchgen retry --failed` marks {plural(failed, 'it', 'them')} to be made again by the next run"
        )
    if stats.created == 0 and stats.downloads == 0 and stats.reused == 0:
        return ExitCode.OK, "nothing to do: every job in the manifest has already succeeded"
    return ExitCode.OK, "all jobs succeeded"


def batch_result(
    outcome: Outcome,
    ledger: Ledger,
    stats: BatchStats,
    started: float,
    output_dir: Path,
    error: BatchgenError | None = None,
    *,
    notes: list[str] | None = None,
) -> BatchResult:
    try:
        counts = ledger.counts()
        unknown = ledger.attempt_counts().get("unknown", 0)
    except LedgerError:  # the ledger may be what failed; report without its counts
        counts, unknown = {}, 0
    left = counts.get("pending", 0) + counts.get("running", 0)
    waiting = f"{left} {plural(left, 'job waits', 'jobs wait')}"
    if not _manifest_read(ledger):
        waiting = (
            f"{left} {plural(left, 'job')} read so far {plural(left, 'waits', 'wait')}, "
            "and so do the manifest's rows not read yet"
        )
    if outcome is Outcome.DONE:
        code, message = _done_message(counts.get("failed", 0), stats)
    elif outcome is Outcome.MANIFEST and isinstance(error, ManifestError):
        code, message = ExitCode.USAGE, manifest_message(error, sent=stats.created + stats.unknown_creates > 0)
    elif isinstance(error, Misaddressed):  # not the account's doing: the address is wrong, fix it and go on
        made = (  # the address may go wrong after creates got through: their polls are what was refused
            f"the {stats.created} {plural(stats.created, 'run')} created before it are recorded, and the next run "
            "collects whichever it did not, without paying again"
            if stats.created
            else "nothing was created there"
        )
        code, message = (
            ExitCode.USAGE,
            f"stopped: {error}. {made[0].upper()}{made[1:]}; {waiting}. Run the same command again once the address "
            "is right.",
        )
    elif isinstance(error, FilesRefused):  # the API works, its file host does not serve this machine
        code, message = (
            ExitCode.UNAVAILABLE,
            f"stopped: {error}; no more runs were bought. {waiting[0].upper()}{waiting[1:]}; the runs already made "
            "are kept, and the next run downloads their images without paying again. Run the same command again "
            "once the file host serves this machine.",
        )
    else:
        code, template = _OUTCOMES[outcome]
        kept = plural(
            left,
            "its run kept: the next run polls it and downloads its image",
            "their runs kept: the next run polls them and downloads their images",
        )
        message = template.format(error=error, waiting=waiting, kept=kept)
    return BatchResult(
        outcome=outcome,
        exit_code=code,
        message=message,
        counts=counts,
        stats=stats,
        unknown_creates_total=unknown,
        elapsed=time.monotonic() - started,
        output_dir=output_dir,
        notes=notes or [],
    )
