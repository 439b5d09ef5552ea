"""What the security trials left, each kept as the test that failed before its fix: the ledger and the
files sqlite keeps beside it are never written through a symlink, and a file kept aside (a changed prompt's
image, or `retry`'s earlier version) is renamed through the folders batchgen checked, even when one of them
is swapped for a symlink between the check and the rename."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from batchgen import ExitCode
from batchgen.folder import REPLACED_DIR, STATE_DIR, OutputFolder
from batchgen.ledger import Ledger
from batchgen.ledger.store import SIDE_FILES
from batchgen.models import LEDGER_NAME, SavedOutput
from batchgen.regenerate import VERSIONS_DIR, mark

from .conftest import batchgen_cli
from .served import sha256
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


def swap_at_rename(monkeypatch: pytest.MonkeyPatch, folder: Path, outside: Path) -> list[Any]:
    """Have ``folder`` replaced by a symlink to ``outside`` at the last moment: as the rename is asked for,
    before it happens (the widest window there is between any check and the rename)."""
    real_rename: Callable[..., None] = os.rename
    swapped: list[Any] = []

    def rename(*args: Any, **kwargs: Any) -> None:
        if not swapped:
            swapped.append(args)
            real_rename(folder, folder.with_name(folder.name + ".real"))
            folder.symlink_to(outside)
        real_rename(*args, **kwargs)

    monkeypatch.setattr(os, "rename", rename)
    return swapped


def test_keep_aside_renames_into_the_folder_it_checked(tmp_path, monkeypatch):
    """keep_aside moves a file with other bytes to .batchgen/replaced/sub/; when that folder is swapped for a
    symlink to a folder outside just before the rename, the file does not land outside."""
    out, outside = tmp_path / "out", tmp_path / "outside"
    (out / "sub").mkdir(parents=True)
    (out / STATE_DIR / REPLACED_DIR / "sub").mkdir(parents=True)
    (out / "sub" / "a1.png").write_bytes(b"the user's own")
    outside.mkdir()
    swapped = swap_at_rename(monkeypatch, out / STATE_DIR / REPLACED_DIR / "sub", outside)

    kept = OutputFolder(out).keep_aside(
        SavedOutput(n=0, path="sub/a1.png", bytes=3, sha256="0" * 64, content_type="image/png")
    )
    assert swapped
    assert list(outside.iterdir()) == []
    assert kept == f"{STATE_DIR}/{REPLACED_DIR}/sub/a1.png"
    assert (out / STATE_DIR / REPLACED_DIR / "sub.real" / "a1.png").read_bytes() == b"the user's own"


def test_retry_renames_into_the_folder_it_checked(tmp_path, run, monkeypatch):
    """retry moves a job's image to .batchgen/versions/a1/<attempt>/sub/; when that folder is swapped for a
    symlink to a folder outside just before the rename, the image does not land outside."""
    out, outside = tmp_path / "out", tmp_path / "outside"
    assert run(write_catalogue(tmp_path)).exit_code == ExitCode.OK
    image = sha256(out / "sub" / "a1.png")
    outside.mkdir()
    with Ledger(out / LEDGER_NAME) as ledger:
        (recorded,) = ledger.outputs_of(["a1"])
        versions = out / STATE_DIR / VERSIONS_DIR / "a1" / str(recorded["attempt_id"]) / "sub"
        versions.mkdir(parents=True)
        swapped = swap_at_rename(monkeypatch, versions, outside)
        mark(ledger, out, ["a1"])
    assert swapped
    assert list(outside.iterdir()) == []
    assert sha256(versions.with_name("sub.real") / "a1.png") == image


def test_retry_removes_an_image_already_kept_only_from_the_folder_it_checked(tmp_path, run, monkeypatch):
    """A retry that stopped before its commit left the image both in place and kept among the versions; the
    next retry removes the one in place. When its folder sub/ is swapped, just before the removal, for a
    symlink to a folder outside holding a file of that name, the file outside stays."""
    out, outside = tmp_path / "out", tmp_path / "outside"
    assert run(write_catalogue(tmp_path)).exit_code == ExitCode.OK
    image = (out / "sub" / "a1.png").read_bytes()
    outside.mkdir()
    (outside / "a1.png").write_bytes(image)
    real_unlink: Callable[..., None] = os.unlink
    swapped: list[Any] = []

    def unlink(*args: Any, **kwargs: Any) -> None:
        if not swapped:
            swapped.append(args)
            os.rename(out / "sub", out / "sub.real")
            (out / "sub").symlink_to(outside)
        real_unlink(*args, **kwargs)

    with Ledger(out / LEDGER_NAME) as ledger:
        (recorded,) = ledger.outputs_of(["a1"])
        kept = out / STATE_DIR / VERSIONS_DIR / "a1" / str(recorded["attempt_id"]) / "sub" / "a1.png"
        kept.parent.mkdir(parents=True)
        kept.write_bytes(image)  # as the stopped retry left it
        monkeypatch.setattr(os, "unlink", unlink)
        mark(ledger, out, ["a1"])
    assert swapped
    assert (outside / "a1.png").exists(), "the file outside was removed"
    assert (outside / "a1.png").read_bytes() == image
    assert not (out / "sub.real" / "a1.png").exists()
    assert kept.read_bytes() == image
