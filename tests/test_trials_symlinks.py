"""What the security trials left, each kept as the test that failed before its fix: the ledger and the
files sqlite keeps beside it are never written through a symlink, and a file kept aside (a changed prompt's
image, or `retry`'s earlier version) is renamed through the folders batchgen checked, even when one of them
is swapped for a symlink between the check and the rename."""

from __future__ import annotations

import pytest

from batchgen import ExitCode
from batchgen.ledger.store import SIDE_FILES
from batchgen.models import LEDGER_NAME

from .conftest import batchgen_cli
from .test_security_review import write_catalogue


@pytest.mark.parametrize("suffix", ["", *SIDE_FILES])
def test_a_ledger_file_replaced_by_a_symlink_is_not_written_through(tmp_path, run, suffix):
    """The ledger (or its -wal, -shm, -journal or lock file) replaced between runs by a symlink to a file
    outside: the next run writes nothing there; it stops with exit 5 naming the symlink, as for the folder's
    own state files."""
    out, victim = tmp_path / "out", tmp_path / "notes.txt"
    manifest = write_catalogue(tmp_path)
    assert run(manifest).exit_code == ExitCode.OK
    victim.write_text("mine\n", encoding="utf-8")
    side = out / f"{LEDGER_NAME}{suffix}"
    side.unlink(missing_ok=True)
    side.symlink_to(victim)
    (tmp_path / "rows.csv").write_text("sku,name,cat\na1,Desk lamp,sub\n", encoding="utf-8")  # a run to record

    result = run(manifest)
    assert victim.read_text(encoding="utf-8") == "mine\n"
    assert result.exit_code == ExitCode.LOCAL, result.message
    assert f"{side} is a symlink" in result.message

    marked = batchgen_cli("retry", "--output", str(out), "--ids", "a1")
    assert marked.returncode == ExitCode.LOCAL, marked.stdout
    assert f"{side} is a symlink" in marked.stderr
    assert victim.read_text(encoding="utf-8") == "mine\n"


def test_a_new_ledger_is_not_created_through_a_dangling_symlink(tmp_path, run):
    """A first run into a folder whose batchgen.sqlite is a symlink to a place outside that does not exist
    yet: no ledger is created out there."""
    out, outside = tmp_path / "out", tmp_path / "outside"
    out.mkdir()
    outside.mkdir()
    (out / LEDGER_NAME).symlink_to(outside / "ledger.sqlite")

    result = run(write_catalogue(tmp_path))
    assert result.exit_code == ExitCode.LOCAL, result.message
    assert LEDGER_NAME in result.message
    assert list(outside.iterdir()) == []
