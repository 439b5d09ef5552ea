"""The gallery: one self-contained HTML page to review a batch.

``write_report`` is what ``batchgen report`` calls: read the ledger (read-only),
look at the files, write ``report.html`` atomically. The pieces can be used on
their own: ``build_report_data`` (ledger + disk → ``ReportData``) and
``render_html`` (``ReportData`` → the page).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ..models import REPORT_NAME
from .collect import build_report_data
from .data import (
    AttemptRecord,
    CardState,
    EarlierVersion,
    FileStatus,
    JobRecord,
    LastRun,
    OutputFile,
    ReportData,
    Summary,
    fix_command,
)
from .render import render_html

__all__ = [
    "REPORT_NAME",
    "AttemptRecord",
    "CardState",
    "EarlierVersion",
    "FileStatus",
    "JobRecord",
    "LastRun",
    "OutputFile",
    "ReportData",
    "Summary",
    "build_report_data",
    "fix_command",
    "render_html",
    "write_html",
]


def write_html(data: ReportData, path: Path) -> None:
    """Render ``data`` and write it to ``path`` whole or not at all (temp file + rename)."""
    page = render_html(data, path)
    # The folder the page goes in, not the one a symlink under its name points into: the rename
    # replaces such a symlink, and the temporary file must not be made outside meanwhile.
    folder = path.parent.resolve()
    fd, temp = tempfile.mkstemp(prefix=".report-", suffix=".html.tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(page)
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except OSError:
            pass
        raise
