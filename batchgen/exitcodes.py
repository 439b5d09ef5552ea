"""What each exit code of ``batchgen`` means: one table, read by the runner, ``--help`` and the README's check.

Kept free of heavy imports so that ``batchgen run --help`` prints it without loading
httpx or anyio. ``outcomes._OUTCOMES`` maps why a batch ended to one of these codes.
"""

from __future__ import annotations

import enum
import textwrap


class ExitCode(enum.IntEnum):
    OK = 0
    JOBS_FAILED = 1
    USAGE = 2  # usage or manifest error: nothing was submitted; or a wrong base URL
    ACCOUNT = 3  # 402 / 403: resumable
    UNAUTHORIZED = 4  # the key is missing or refused
    LOCAL = 5  # the ledger or output folder cannot be used (disk full, busy, permissions)
    UNAVAILABLE = 6  # the API or its file host kept failing (5xx, network): resumable later
    CAPPED = 7  # --max-runs / --max-credits reached: resumable, the next invocation continues
    INTERRUPTED = 130


# code -> (what it means, what to do / whether to alert). The README's table says the same
# (tests/test_ops_cli.py checks it), and `run --help` prints it.
EXIT_CODES: dict[ExitCode, tuple[str, str]] = {
    ExitCode.OK: ("every job succeeded (or nothing was left to do)", "nothing; no alert"),
    ExitCode.JOBS_FAILED: (
        "the batch finished; some jobs failed for good",
        "`batchgen status` shows why; `batchgen retry --failed` then `run` makes them again; "
        "alert someone to look, not urgently",
    ),
    ExitCode.USAGE: (
        "usage or manifest error (nothing was sent), or a wrong base URL (a redirect, or no API there)",
        "fix what the message names; alert: the job will fail every night until fixed",
    ),
    ExitCode.ACCOUNT: (
        "stopped by the account: 402 (out of credits) or 403 (forbidden, spend cap)",
        "top up or lift the cap, run the same command again; alert whoever pays",
    ),
    ExitCode.UNAUTHORIZED: (
        "the API key is missing or refused (401)",
        "set RUNBASE_API_KEY; alert: nothing runs until fixed",
    ),
    ExitCode.LOCAL: (
        "the ledger or output folder cannot be used: disk full, permissions, or another run holds it",
        "fix it and run again; when the message says another run holds the folder, the previous "
        "night's run is still going: no alert",
    ),
    ExitCode.UNAVAILABLE: (
        "the API kept failing (5xx, network errors), no create got through, or runs could not be polled or their "
        "images downloaded (those runs are kept, never paid for again); every job not done is pending",
        "run the same command again later; alert if it repeats",
    ),
    ExitCode.CAPPED: (
        "stopped at the cap you set (--max-runs, --max-credits); runs in flight were collected",
        "run the same command again to continue (the next night does); no alert",
    ),
    ExitCode.INTERRUPTED: (
        "interrupted by SIGINT or SIGTERM (Ctrl-C, a shutdown, systemd stopping it)",
        "run the same command again",
    ),
}


def exit_code_help(width: int = 88) -> str:
    """The table as ``--help`` shows it: one code a line, its meaning and what to do."""
    lines = ["exit codes:"]
    for code, (meaning, action) in EXIT_CODES.items():
        lines += textwrap.wrap(meaning, width, initial_indent=f"  {int(code):>3}  ", subsequent_indent=" " * 7)
        lines += textwrap.wrap(action, width, initial_indent="       → ", subsequent_indent=" " * 9)
    return "\n".join(lines)
