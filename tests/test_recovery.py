"""The file check at the start of a run: what it finds after a batch finished cleanly, and what it leaves alone."""

from __future__ import annotations

import hashlib
import os

import pytest

from batchgen import ExitCode
from batchgen.folder import CLEAN_MARK, STATE_DIR
from batchgen.outputs import lookup_below


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_an_image_changed_in_place_after_a_clean_finish_is_fetched_again(write_manifest, run, sim, tmp_path):
    """A batch that ended cleanly, then one image rewritten in place (same name, the folder's listing
    unchanged): the next run still finds it, fetches it again from its run and pays nothing."""
    manifest, out = write_manifest(3), tmp_path / "out"
    assert run(manifest).exit_code == ExitCode.OK
    assert (out / STATE_DIR / CLEAN_MARK).is_file()
    sent = {r["prompt"]: r["files"][0]["sha256"] for r in sim.stats()["runs"]}
    with open(out / "job-001.png", "r+b") as image:  # in place: no entry of the folder is added or removed
        image.truncate(10)
    result = run(manifest)
    assert result.exit_code == ExitCode.OK, result.message
    assert any("1 changed file" in note and "1 fetched again" in note for note in result.notes), result.notes
    assert sha256((out / "job-001.png").read_bytes()) == sent["product photo number 1"]
    assert sim.stats()["create_requests"] == 3


def test_files_of_jobs_no_longer_in_the_manifest_are_not_fetched_again(write_manifest, run, sim, tmp_path):
    """A job dropped from the manifest whose image is then deleted: the next run neither reports nor fetches it."""
    out = tmp_path / "out"
    assert run(write_manifest(3)).exit_code == ExitCode.OK
    (out / "job-002.png").unlink()
    result = run(write_manifest(2))
    assert result.exit_code == ExitCode.OK, result.message
    assert not any("missing" in note for note in result.notes), result.notes
    assert not (out / "job-002.png").exists()
    assert sim.stats()["create_requests"] == 3


def test_files_are_looked_up_below_the_folder_and_a_missing_folder_leaves_every_file_missing(tmp_path):
    """``lookup_below`` finds a file by its path below the folder, subfolders included; a file, or
    the whole folder, that is not there raises OSError (export lists it as missing, a run fetches
    it again) rather than ending the command."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.png").write_bytes(b"12345")
    (tmp_path / "b.png").write_bytes(b"")
    with lookup_below(str(tmp_path)) as (prefix, fd):
        assert os.stat(prefix + "sub/a.png", dir_fd=fd).st_size == 5
        assert os.stat(prefix + "b.png", dir_fd=fd).st_size == 0
        with pytest.raises(OSError):
            os.stat(prefix + "gone.png", dir_fd=fd)
    with lookup_below(str(tmp_path / "moved")) as (prefix, fd):
        with pytest.raises(OSError):
            os.stat(prefix + "b.png", dir_fd=fd)
