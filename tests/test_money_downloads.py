"""Money on the download side: a file host that refuses every link stops the batch instead of buying
--max-attempts runs for every job, and a run of several outputs with one dead keeps the images that came
without buying a new run. The real runner against the in-process simulator, runs bought counted by it."""

from __future__ import annotations

import pytest

from batchgen import ExitCode
from batchgen.ledger import Ledger
from batchgen.models import Outcome
from batchgen.saving import REFUSED_STREAK
from batchgen.simulator import SimConfig, Simulator

from .conftest import batchgen_cli
from .served import assert_saved_as_served, image_files, served_files, sha256

JOBS = 20


@pytest.mark.parametrize(("fault", "answered"), [("file_forbidden", "HTTP 403"), ("file_gone", "HTTP 4")])
@pytest.mark.parametrize("concurrency", [1, 4])
def test_a_file_host_that_refuses_every_link_stops_the_batch(
    write_manifest, run, tmp_path, fault, answered, concurrency
):
    """Every download refused, fresh links too: the batch stops after REFUSED_STREAK refused runs in a row
    (exit 6, saying what the host answered and that no more runs were bought) instead of buying
    --max-attempts runs for every job; the runs already made are kept, and once the host serves again the
    next run downloads them without paying again and buys runs only for the jobs that have none."""
    sim = Simulator(SimConfig(latency=0.02, faults={fault: 1.0}))
    manifest = write_manifest(JOBS)
    first = run(manifest, sim, concurrency=concurrency)
    assert first.exit_code == ExitCode.UNAVAILABLE, first.message
    assert first.outcome is Outcome.RUNS_KEPT  # what `status` says of it: the API works, its runs are kept
    assert f"refused the images of {REFUSED_STREAK} runs in a row" in first.message
    assert answered in first.message and "no more runs were bought" in first.message
    bought = sim.stats()["creates"]
    assert REFUSED_STREAK <= bought <= REFUSED_STREAK + concurrency  # the streak and the runs in flight, not JOBS * 3
    # Every run refused is kept open, none failed: the next session downloads them all without paying again.
    assert first.counts["running"] >= REFUSED_STREAK and first.counts["failed"] == 0
    with Ledger(tmp_path / "out" / "batchgen.sqlite") as ledger:
        assert "failed" not in ledger.attempt_counts()
    assert image_files(tmp_path / "out") == set()

    # Run again while the host still refuses: the kept runs are polled first, refused and kept again; at most
    # the slots they free buy a run before the streak is seen again.
    again = run(manifest, sim, concurrency=concurrency)
    assert again.exit_code == ExitCode.UNAVAILABLE, again.message
    assert sim.stats()["creates"] - bought <= concurrency
    bought = sim.stats()["creates"]

    sim.config.faults = {}
    second = run(manifest, sim, concurrency=concurrency)
    assert second.exit_code == ExitCode.OK, second.message
    assert sim.stats()["creates"] == JOBS  # one run per job in all: the kept runs were not paid for again
    assert_saved_as_served(tmp_path / "out", sim.stats(), succeeded=JOBS)


def test_a_refused_run_with_nothing_else_in_flight_is_tried_again(write_manifest, run):
    """A refused run waits for a download to show whether the host refuses everything; with nothing else
    in flight to show it, its job is tried again with a new run at once, as before, up to --max-attempts."""
    sim = Simulator(SimConfig(latency=0.02, faults={"file_forbidden": 1.0}))
    result = run(write_manifest(1), sim, max_attempts=REFUSED_STREAK - 1)
    assert result.exit_code == ExitCode.JOBS_FAILED, result.message
    assert sim.stats()["creates"] == REFUSED_STREAK - 1
    assert result.stats.failed_runs == REFUSED_STREAK - 1


def test_refused_links_now_and_then_do_not_stop_the_batch(write_manifest, run, tmp_path):
    """The streak counts refused runs with no download between them: many more than the streak in all,
    each retried with a new run as before, and the batch finishes."""
    sim = Simulator(SimConfig(latency=0.02, faults={"file_forbidden": 0.5}, seed=3))
    result = run(write_manifest(30), sim, concurrency=1, max_attempts=10)
    assert result.exit_code == ExitCode.OK, result.message
    assert result.stats.failed_runs > REFUSED_STREAK  # more than the streak in all, never that many in a row
    assert sim.stats()["creates"] == 30 + result.stats.failed_runs
    assert_saved_as_served(tmp_path / "out", sim.stats(), succeeded=30)


def test_a_dead_output_of_several_keeps_the_others_and_buys_no_run(write_manifest, run, tmp_path):
    """A run of two outputs whose second link is dead (fresh ones too): the first image is saved and listed
    with the job, which fails naming the dead output; no second run is bought for it, now or next run."""
    sim = Simulator(SimConfig(latency=0.02, outputs_per_run=2, faults={"later_output_gone": 1.0}))
    manifest = write_manifest(4)
    result = run(manifest, sim, concurrency=2)
    assert result.exit_code == ExitCode.JOBS_FAILED, result.message
    assert sim.stats()["creates"] == 4
    served = served_files(sim.stats())
    with Ledger(tmp_path / "out" / "batchgen.sqlite") as ledger:
        records = list(ledger.iter_export())
    listed = set()
    for record in records:
        assert record["state"] == "failed"
        assert f"output 2 of run {record['run_id']}: HTTP 410" in record["error"], record["error"]
        assert "no new run was bought" in record["error"]
        [output] = record["outputs"]
        assert output["n"] == 0 and served[record["run_id"]] == {0: output["sha256"]}
        assert sha256(tmp_path / "out" / output["path"]) == output["sha256"]
        listed.add(output["path"])
    assert image_files(tmp_path / "out") == listed == {f"job-{i:03d}.png" for i in range(4)}

    sim.config.faults = {}
    again = run(manifest, sim)
    assert again.exit_code == ExitCode.JOBS_FAILED and sim.stats()["creates"] == 4

    # Asked to, the next run makes them again; the images that came first are kept as earlier versions.
    assert batchgen_cli("retry", "--failed", "--output", str(tmp_path / "out")).returncode == 0
    assert run(manifest, sim).exit_code == ExitCode.OK and sim.stats()["creates"] == 8
    assert_saved_as_served(tmp_path / "out", sim.stats(), succeeded=4)
    kept = {sha256(path) for path in (tmp_path / "out" / ".batchgen" / "versions").rglob("*.png")}
    assert kept == {output["sha256"] for record in records for output in record["outputs"]}


def test_a_refused_run_that_identical_jobs_wait_for_does_not_hold_the_batch(write_manifest, run):
    """Jobs asking for the same request wait for the one making it; when its run is refused and nothing
    else is in flight, it is tried again at once, and after it the others, instead of waiting forever."""
    sim = Simulator(SimConfig(latency=0.02, faults={"file_forbidden": 1.0}))
    jobs = [{"id": f"same-{i}", "prompt": "one lamp"} for i in range(3)]
    result = run(write_manifest(jobs=jobs), sim, max_attempts=1)
    assert result.exit_code == ExitCode.JOBS_FAILED, result.message
    assert sim.stats()["creates"] == 3 == result.stats.failed_runs


def test_a_file_hosts_retry_after_is_waited_for(write_manifest, run, tmp_path):
    """A file host answering 429 with Retry-After: 1 on downloads: each file is fetched again no sooner
    than it asked (the simulator counts fetches before then), and every image comes, as served."""
    sim = Simulator(SimConfig(latency=0.02, faults={"file_rate_limited": 0.5}, seed=4))
    result = run(write_manifest(6), sim)
    assert result.exit_code == ExitCode.OK, result.message
    stats = sim.stats()
    assert stats["faults"]["file_rate_limited"] > 0
    assert stats["file_retry_after_violations"] == 0
    assert stats["creates"] == 6
    assert_saved_as_served(tmp_path / "out", stats, succeeded=6)
