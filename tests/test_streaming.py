"""A large manifest is read while the batch already runs; problems found late still stop it cleanly."""

from __future__ import annotations

import hashlib
import math

from batchgen import ExitCode
from batchgen.ledger import Ledger
from batchgen.ledger.store import SYNC_CHUNK
from batchgen.simulator import SimConfig, Simulator


def test_jobs_read_after_the_first_creates_are_all_generated(write_manifest, run, tmp_path):
    """With no head start, a manifest of several chunks is read while creating, and every job ends with its image."""
    sim = Simulator(SimConfig(latency=0.01))
    n = 2 * SYNC_CHUNK + 7
    result = run(write_manifest(n, name="big.yaml"), sim, sync_head_start=0.0, concurrency=64)
    assert result.exit_code == ExitCode.OK, result.message
    assert result.counts["succeeded"] == n
    served = {f["sha256"] for r in sim.stats()["runs"] for f in r["files"]}
    saved = {hashlib.sha256(p.read_bytes()).hexdigest() for p in (tmp_path / "out").glob("*.png")}
    assert len(saved) == n and saved == served
    assert sim.stats()["creates"] == n


def test_a_problem_found_late_stops_creating_and_keeps_what_was_paid_for(run, tmp_path):
    """A bad row at the end of a CSV read while running: exit 2, the problem listed, every created run collected."""
    sim = Simulator(SimConfig(latency=0.01))
    rows = [f"job-{i:05d},photo {i}" for i in range(10 * SYNC_CHUNK)] + ["bad,a lamp,best"]
    manifest = tmp_path / "late.csv"
    manifest.write_text("id,prompt,quality\n" + "\n".join(rows) + "\n", encoding="utf-8")
    result = run(manifest, sim, sync_head_start=0.0, concurrency=32)
    assert result.exit_code == ExitCode.USAGE
    assert "row 20002" in result.message and "quality" in result.message
    with Ledger(tmp_path / "out" / "batchgen.sqlite", readonly=True) as ledger:
        counts = ledger.counts()
    assert counts["running"] == 0  # every run created was collected
    assert sim.stats()["creates"] == counts["succeeded"] == result.stats.created  # none twice, none lost
    expected = "already running" if result.stats.created else "nothing was sent"
    assert expected in result.message


def test_a_problem_found_in_the_head_start_sends_nothing(write_manifest, run, sim, tmp_path):
    """The same manifest read within the head start is refused before any request."""
    jobs = [{"id": f"job-{i:05d}", "prompt": f"photo {i}"} for i in range(50)]
    jobs.append({"id": "bad", "prompt": "a lamp", "quality": "best"})
    result = run(write_manifest(jobs=jobs, name="small.yaml"), sim)
    assert result.exit_code == ExitCode.USAGE and "nothing was sent" in result.message
    assert sim.stats()["create_requests"] == 0
    assert not (tmp_path / "out").exists()


def test_a_batch_that_stops_while_the_manifest_is_read_stops_reading_and_the_next_run_reads_it_whole(run, tmp_path):
    """A batch stopped by the account mid-read ends without reading the rest; the next run reads the manifest whole."""
    sim = Simulator(SimConfig(latency=0.01, credits=2))
    n = 30 * SYNC_CHUNK
    manifest = tmp_path / "long.csv"
    manifest.write_text("id,prompt\n" + "".join(f"job-{i:06d},photo {i}\n" for i in range(n)), encoding="utf-8")
    first = run(manifest, sim, sync_head_start=0.0, concurrency=4)
    assert first.exit_code == ExitCode.ACCOUNT, first.message
    with Ledger(tmp_path / "out" / "batchgen.sqlite", readonly=True) as ledger:
        assert sum(ledger.counts().values()) < n  # it stopped reading when the batch stopped
    sim.add_credits(1)
    second = run(manifest, sim, sync_head_start=math.inf, max_runs=1)  # read whole before creating
    assert second.exit_code == ExitCode.CAPPED, second.message
    assert sum(second.counts.values()) == n
    assert second.counts["succeeded"] == sim.stats()["creates"] == 3
