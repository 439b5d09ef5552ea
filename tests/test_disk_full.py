"""A ledger and output folder on a disk that fills up: a clear error, nothing lost, resume once space is back."""

from __future__ import annotations

import sqlite3
import subprocess
import uuid
from pathlib import Path

import pytest

from batchgen import ExitCode
from batchgen.simulator import SimConfig, Simulator

from .served import assert_saved_as_served


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 400 KiB tmpfs (needs root, as in CI); resized later by the test."""
    mount_point = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    mount_point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(mount_point)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_full_disk_stops_cleanly_and_resume_finishes(write_manifest, run, small_disk):
    """Disk full mid-batch: exit 5 naming the problem, the ledger intact; with space back the rerun finishes."""
    sim = Simulator(SimConfig(latency=0.02, image_scale=0.25))  # 256x256 PNGs, a few KiB each
    manifest = write_manifest(400)
    out = small_disk / "out"
    first = run(manifest, sim, output_dir=out, concurrency=8)
    assert first.exit_code == ExitCode.LOCAL, first.message
    assert "space" in first.message.lower() or "full" in first.message.lower()
    db = sqlite3.connect(out / "batchgen.sqlite")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    second = run(manifest, sim, output_dir=out, concurrency=8)
    assert second.exit_code == ExitCode.OK, second.message
    # Each job's file is what the server sent for its own run; no .part or other file is left.
    assert_saved_as_served(out, sim.stats(), succeeded=400)
    # Runs created before the stop were polled again, not created again.
    assert 400 <= sim.stats()["creates"] <= 400 + second.unknown_creates_total
