"""Ctrl-C while a run reads its manifest's first part, before anything is sent: the run says how to continue,
as every other interruption does, at once, and loses nothing."""

from __future__ import annotations

import json
import signal

from batchgen import ExitCode
from batchgen.lastrun import LAST_RUN_NAME
from batchgen.models import LEDGER_NAME

from .conftest import batchgen_cli, killed_at_end, start_cli, wait_until
from .served import sha256

ROWS = 150_000  # read for several seconds: the signal lands well inside the reading


def test_ctrl_c_while_the_manifest_is_first_read_says_how_to_go_on(tmp_path):
    """SIGINT while a run reads a large manifest before sending anything (here all of it, as a run mending a
    lost ledger does first): exit 130 with the hint every interruption gives, no traceback; then the image
    already paid for is still known: the next run adopts it and buys no run."""
    small, big, out = tmp_path / "small.csv", tmp_path / "big.csv", tmp_path / "out"
    small.write_text("id,prompt\nsmall-1,a lamp\n", encoding="utf-8")
    big.write_text("id,prompt\n" + "".join(f"job-{i},photo {i}\n" for i in range(ROWS)), encoding="utf-8")
    first = batchgen_cli("run", str(small), "--simulate", "--output", str(out), "--no-progress")
    assert first.returncode == ExitCode.OK, first.stderr
    image = sha256(out / "small-1.png")
    for path in out.glob(f"{LEDGER_NAME}*"):
        path.unlink()  # the ledger lost: the next run reads its manifest whole before it mends it from the journal

    wal = out / f"{LEDGER_NAME}-wal"
    with killed_at_end(start_cli("run", str(big), "--simulate", "--output", str(out), "--no-progress")) as proc:
        wait_until(lambda: wal.exists() and wal.stat().st_size > 1 << 20, timeout=120, what="rows going in the ledger")
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == ExitCode.INTERRUPTED, stderr
    assert "Traceback" not in stderr
    assert "interrupted" in stderr and "run the same command again" in stderr.lower(), stderr
    assert json.loads((out / LAST_RUN_NAME).read_text(encoding="utf-8"))["exit_code"] == ExitCode.INTERRUPTED

    again = batchgen_cli("run", str(small), "--simulate", "--output", str(out), "--no-progress")
    assert again.returncode == ExitCode.OK, again.stderr
    assert json.loads((out / LAST_RUN_NAME).read_text(encoding="utf-8"))["this_run"]["runs_created"] == 0
    assert sha256(out / "small-1.png") == image
