"""The ledger's state machine, called as the scheduler calls it: what each write leaves for the next read.

These are the transitions money depends on (an attempt is 'creating' exactly until its run id
is recorded; a crash turns only those into 'unknown'; a changed spec supersedes its open run),
checked through the ledger's own reads, against a real sqlite file. They are fast on purpose:
bench/mutation.py runs them once per mutant of batchgen/ledger/.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import stat
import time
from pathlib import Path

import pytest

from batchgen.errors import LedgerBusy, LedgerError
from batchgen.ledger import Ledger
from batchgen.ledger.reuse import ReuseIndex
from batchgen.ledger.schema import SCHEMA_VERSION, migrate
from batchgen.models import AttemptStatus, JobSpec, SavedOutput, image_input

OUT = "/tmp/out"


def jobs(*prompts: str) -> list[JobSpec]:
    return [JobSpec(f"j{i}", image_input(prompt)) for i, prompt in enumerate(prompts)]


def png(n: int, name: str) -> SavedOutput:
    return SavedOutput(n=n, path=name, bytes=100 + n, sha256=f"{n:064x}", content_type="image/png")


@pytest.fixture
def ledger(tmp_path: Path):
    with Ledger(tmp_path / "l.sqlite") as opened:
        yield opened


def export(ledger: Ledger) -> dict[str, dict]:
    return {record["job_id"]: record for record in ledger.iter_export()}


def test_an_attempt_is_creating_until_its_run_id_is_recorded_then_running_then_succeeded(ledger):
    """begin_attempt → 'creating' (job running); run_created → 'running' with its run polled; success → files."""
    (job,) = jobs("a lamp")
    ledger.sync_manifest("m.yaml", [job], output_dir=OUT)
    attempt = ledger.begin_attempt(job)
    ledger.flush()
    assert ledger.attempt_counts() == {"creating": 1}
    assert ledger.counts() == {"pending": 0, "running": 1, "succeeded": 0, "failed": 0}
    assert ledger.open_runs() == []  # nothing to poll: no run id yet
    assert ledger.pending_page(-1) == []  # and not handed out again

    ledger.run_created(attempt, "run-1", job)
    ledger.flush()
    assert ledger.attempt_counts() == {"running": 1}
    (open_run,) = ledger.open_runs()
    assert (open_run.attempt_id, open_run.run_id, open_run.job.spec.job_id) == (attempt, "run-1", "j0")
    assert open_run.job.attempts == 1 and not open_run.refetch

    ledger.job_succeeded(attempt, "j0", [png(0, "j0.png"), png(1, "j0~2.png")])
    ledger.flush()
    assert ledger.attempt_counts() == {"succeeded": 1}
    assert ledger.open_runs() == []
    record = export(ledger)["j0"]
    assert record["state"] == "succeeded" and record["run_id"] == "run-1" and record["error"] is None
    assert record["attempts"] == 1 and record["unknown_creates"] == 0 and record["source"] is None
    assert record["outputs"] == [
        {"n": 0, "path": "j0.png", "bytes": 100, "sha256": f"{0:064x}"},
        {"n": 1, "path": "j0~2.png", "bytes": 101, "sha256": f"{1:064x}"},
    ]
    assert ledger.summary().succeeded == 1 and ledger.summary().to_do == 0


def test_recover_turns_only_creates_on_the_wire_into_unknown(ledger):
    """After a crash: the 'creating' attempt becomes 'unknown' (its job pending again); a running run stays."""
    a, b, c = jobs("on the wire", "created", "never started")
    ledger.sync_manifest("m.yaml", [a, b, c], output_dir=OUT)
    ledger.begin_attempt(a)
    created = ledger.begin_attempt(b)
    ledger.run_created(created, "run-b", b)
    ledger.flush()
    assert ledger.recover() == 1
    assert ledger.attempt_counts() == {"unknown": 1, "running": 1}
    assert ledger.counts() == {"pending": 2, "running": 1, "succeeded": 0, "failed": 0}
    assert [r.run_id for r in ledger.open_runs()] == ["run-b"]
    records = export(ledger)
    assert records["j0"]["unknown_creates"] == 1 and records["j0"]["attempts"] == 1
    assert records["j1"]["unknown_creates"] == 0
    assert [job.spec.job_id for _, job in ledger.pending_page(-1)] == ["j0", "j2"]
    # The attempt's log (the report shows it) says when it ended and why.
    (recovered,) = [row for row in ledger.iter_attempts() if row[0] == "j0"]
    assert recovered[1] == "unknown" and recovered[3] and "create" in recovered[3]
    assert recovered[5] is not None and recovered[5] >= recovered[4]
    assert ledger.recover() == 0  # nothing left on the wire


def test_a_create_refused_before_any_run_is_forgotten(ledger):
    """not_created (a 429, a refused connection): no attempt left, the job pending with its count back."""
    (job,) = jobs("refused")
    ledger.sync_manifest("m.yaml", [job], output_dir=OUT)
    attempt = ledger.begin_attempt(job)
    ledger.not_created(attempt, "j0")
    ledger.flush()
    assert ledger.attempt_counts() == {}
    assert ledger.recover() == 0
    assert export(ledger)["j0"]["attempts"] == 0
    assert [(seq, job.attempts) for seq, job in ledger.pending_page(-1)] == [(0, 0)]


@pytest.mark.parametrize("job_failed", [False, True], ids=["tried-again", "failed-for-good"])
def test_an_attempt_that_ended_without_outputs_records_why(ledger, job_failed):
    """attempt_ended: the attempt keeps its status and error; the job waits for another try or fails for good."""
    (job,) = jobs("unlucky")
    ledger.sync_manifest("m.yaml", [job], output_dir=OUT)
    attempt = ledger.begin_attempt(job)
    ledger.run_created(attempt, "run-1", job)
    ledger.attempt_ended(attempt, "j0", AttemptStatus.FAILED, "generation failed", job_failed=job_failed, kind="run")
    ledger.flush()
    assert ledger.attempt_counts() == {"failed": 1}
    record = export(ledger)["j0"]
    assert record["state"] == ("failed" if job_failed else "pending")
    assert (record["error"], record["error_kind"]) == ("generation failed", "run")
    assert ledger.recent_errors() == [("j0", "generation failed")]
    assert ledger.error_summary() == [{"error": "generation failed", "kind": "run", "jobs": 1, "example": "j0"}]
    assert [job.spec.job_id for _, job in ledger.pending_page(-1)] == ([] if job_failed else ["j0"])


def test_a_changed_spec_supersedes_its_open_run_and_starts_over(ledger):
    """A prompt changed while its run was open: the run is superseded, the job pending with 0 attempts;
    an unchanged succeeded job stays succeeded; metadata alone changes nothing."""
    old, done = jobs("old prompt", "finished")
    ledger.sync_manifest("m.yaml", [old, done], output_dir=OUT)
    open_attempt = ledger.begin_attempt(old)
    ledger.run_created(open_attempt, "run-old", old)
    finished = ledger.begin_attempt(done)
    ledger.run_created(finished, "run-done", done)
    ledger.job_succeeded(finished, "j1", [png(0, "j1.png")])
    ledger.flush()
    changed = JobSpec("j0", image_input("new prompt"))
    relabelled = JobSpec("j1", image_input("finished"), metadata={"note": "not sent"})
    ledger.sync_manifest("m.yaml", [changed, relabelled], output_dir=OUT)
    assert ledger.attempt_counts() == {"superseded": 1, "succeeded": 1}
    assert ledger.open_runs() == []
    records = export(ledger)
    assert (records["j0"]["state"], records["j0"]["attempts"]) == ("pending", 0)
    assert records["j0"]["input"]["prompt"] == "new prompt"
    assert records["j1"]["state"] == "succeeded" and records["j1"]["metadata"] == {"note": "not sent"}


def test_a_new_manifest_leaves_out_the_jobs_it_no_longer_has(ledger):
    """Counts, pages and export cover the current manifest only, in its order."""
    a, b, c = jobs("a", "b", "c")
    ledger.sync_manifest("m.yaml", [a, b, c], output_dir=OUT)
    ledger.sync_manifest("m.yaml", [c, a], output_dir=OUT)
    assert ledger.counts() == {"pending": 2, "running": 0, "succeeded": 0, "failed": 0}
    assert [job.spec.job_id for _, job in ledger.pending_page(-1)] == ["j2", "j0"]
    assert list(export(ledger)) == ["j2", "j0"]
    assert [job.spec.job_id for _, job in ledger.pending_page(0, limit=1)] == ["j0"]


def test_the_same_manifest_bytes_are_not_read_again_unless_asked(ledger):
    """sync_needed: the same fingerprint into the same folder is skipped; another folder, --retry-failed or
    an interrupted sync read it again."""
    (job,) = jobs("a")
    ledger.sync_manifest("m.yaml", [job], output_dir=OUT, fingerprint="f1")
    assert not ledger.sync_needed("f1", OUT)
    assert ledger.sync_needed("f2", OUT)
    assert ledger.sync_needed("f1", "/elsewhere")
    assert ledger.sync_needed("f1", OUT, retry_failed=True)
    assert ledger.sync_needed(None, OUT)
    ledger.sync_begin("m.yaml", OUT)  # a sync that never ends
    ledger.flush()
    assert ledger.sync_needed("f1", OUT)


def test_retry_failed_gives_failed_jobs_new_attempts_and_no_one_else(ledger):
    """--retry-failed: failed jobs back to pending with 0 attempts and no error; succeeded ones untouched."""
    bad, good = jobs("bad", "good")
    ledger.sync_manifest("m.yaml", [bad, good], output_dir=OUT)
    for job, ok in ((bad, False), (good, True)):
        attempt = ledger.begin_attempt(job)
        ledger.run_created(attempt, f"run-{job.job_id}", job)
        if ok:
            ledger.job_succeeded(attempt, job.job_id, [png(0, f"{job.job_id}.png")])
        else:
            ledger.attempt_ended(attempt, job.job_id, AttemptStatus.FAILED, "boom", job_failed=True, kind="run")
    ledger.flush()
    ledger.sync_manifest("m.yaml", [bad, good], output_dir=OUT, retry_failed=True)
    records = export(ledger)
    assert (records["j0"]["state"], records["j0"]["attempts"], records["j0"]["error"]) == ("pending", 0, None)
    assert (records["j1"]["state"], records["j1"]["attempts"]) == ("succeeded", 1)


def test_an_image_reused_or_adopted_is_recorded_as_such(ledger):
    """job_satisfied: the job succeeds with its files, its attempt says where the image came from."""
    a, b = jobs("reused", "adopted")
    ledger.sync_manifest("m.yaml", [a, b], output_dir=OUT)
    ledger.job_satisfied("j0", a.spec_hash(), [png(0, "j0.png")], status=AttemptStatus.REUSED, run_id="r", note="x")
    ledger.job_satisfied("j1", b.spec_hash(), [png(0, "j1.png")], status=AttemptStatus.ADOPTED, run_id=None, note="y")
    ledger.flush()
    assert ledger.attempt_counts() == {"reused": 1, "adopted": 1}
    records = export(ledger)
    assert [records[j]["source"] for j in ("j0", "j1")] == ["reused", "adopted"]
    assert all(records[j]["state"] == "succeeded" and len(records[j]["outputs"]) == 1 for j in ("j0", "j1"))
    attempt = ledger.begin_attempt(JobSpec("j0", image_input("reused")))
    assert attempt not in {r["attempts"] for r in records.values()} and attempt > 2  # ids never reused


def test_a_missing_file_reopens_its_run_to_fetch_not_to_pay(ledger):
    """refetch: the succeeded job's run is open again (marked for a refetch), no new attempt."""
    (job,) = jobs("a")
    ledger.sync_manifest("m.yaml", [job], output_dir=OUT)
    attempt = ledger.begin_attempt(job)
    ledger.run_created(attempt, "run-1", job)
    ledger.job_succeeded(attempt, "j0", [png(0, "j0.png")])
    ledger.refetch("j0", attempt)
    ledger.flush()
    (open_run,) = ledger.open_runs()
    assert (open_run.run_id, open_run.refetch, open_run.job.attempts) == ("run-1", True, 1)
    assert ledger.counts()["running"] == 1 and ledger.attempt_counts() == {"running": 1}


def test_every_money_event_reaches_the_folder_journal_before_it_is_queued(ledger):
    """The journal (which repairs a lost ledger) hears of each attempt, each run id and each create that
    certainly made no run (a refusal, a 400), with the job and spec they belong to."""
    heard: list[tuple[str, dict]] = []
    ledger.journal = lambda event, **data: heard.append((event, data))
    a, b, c = jobs("created", "refused", "rejected")
    ledger.sync_manifest("m.yaml", [a, b, c], output_dir=OUT)
    first = ledger.begin_attempt(a)
    ledger.run_created(first, "run-a", a)
    second = ledger.begin_attempt(b)
    ledger.not_created(second, "j1")
    third = ledger.begin_attempt(c)
    ledger.attempt_ended(third, "j2", AttemptStatus.REJECTED, "400", job_failed=True, kind="rejected")
    fourth = ledger.begin_attempt(a)
    ledger.attempt_ended(fourth, "j0", AttemptStatus.FAILED, "failed run", job_failed=False, kind="run")
    stamp = heard[1][1].pop("t")
    assert isinstance(stamp, float)
    assert heard == [
        ("attempt", {"a": first, "job": "j0", "h": a.spec_hash()}),
        ("run", {"a": first, "job": "j0", "h": a.spec_hash(), "run": "run-a"}),
        ("attempt", {"a": second, "job": "j1", "h": b.spec_hash()}),
        ("void", {"a": second, "job": "j1"}),  # with its job: a run after a kill forgets it too
        ("attempt", {"a": third, "job": "j2", "h": c.spec_hash()}),
        ("void", {"a": third, "job": "j2"}),
        ("attempt", {"a": fourth, "job": "j0", "h": a.spec_hash()}),  # a failed run made a run: no void
    ]


def test_a_repair_reopens_forgotten_runs_and_counts_lost_creates(ledger):
    """From the journal: a run the ledger forgot is open again (polled, not paid for), a create whose answer
    is not recorded is an 'unknown', and attempt ids already used are never handed out again."""
    a, b = jobs("forgotten run", "lost create")
    ledger.sync_manifest("m.yaml", [a, b], output_dir=OUT)
    ledger.reserve_attempt_ids(41)
    ledger.reopen_run("j0", a.spec_hash(), 7, "run-7", 1000.0)
    ledger.lost_create("j1", b.spec_hash(), 9)
    ledger.flush()
    (open_run,) = ledger.open_runs()
    assert (open_run.attempt_id, open_run.run_id, open_run.created_at) == (7, "run-7", 1000.0)
    assert ledger.attempt_counts() == {"running": 1, "unknown": 1}
    assert ledger.attempts_by_id([7, 9, 8]) == {7: ("running", "run-7"), 9: ("unknown", None)}
    assert ledger.jobs_by_id(["j0", "j1", "nope"]) == {
        "j0": (a.spec_hash(), "running"),
        "j1": (b.spec_hash(), "pending"),
    }
    records = export(ledger)
    assert records["j0"]["attempts"] == 1 and records["j1"]["unknown_creates"] == 1
    assert ledger.begin_attempt(b) == 42
    ledger.lost_create("j1", b.spec_hash(), 9)  # the same journal line read twice: one attempt
    ledger.flush()
    assert ledger.attempt_counts() == {"running": 1, "unknown": 1, "creating": 1}


def test_a_job_that_failed_without_an_attempt_says_why(ledger):
    """job_failed (creates kept failing): the job is failed for good with its reason and kind."""
    (job,) = jobs("never created")
    ledger.sync_manifest("m.yaml", [job], output_dir=OUT)
    ledger.job_failed("j0", "create kept failing: HTTP 500", "server_error")
    ledger.flush()
    record = export(ledger)["j0"]
    assert (record["state"], record["error"], record["error_kind"]) == (
        "failed",
        "create kept failing: HTTP 500",
        "server_error",
    )
    assert ledger.pending_page(-1) == []


def test_sessions_keep_their_outcome_and_figures_newest_first(ledger):
    """session_started/finished: status reads each session's outcome, exit code and figures, newest first."""
    first = ledger.session_started("m.yaml")
    ledger.session_finished(first, "interrupted", 130, '{"created": 3}')
    second = ledger.session_started("other.yaml")
    ledger.flush()
    sessions = ledger.sessions()
    assert [s["session"] for s in sessions] == [second, first]
    assert sessions[1]["outcome"] == "interrupted" and sessions[1]["exit_code"] == 130
    assert sessions[1]["stats"] == {"created": 3} and sessions[1]["manifest"] == "m.yaml"
    assert sessions[0]["finished_at"] is None and sessions[0]["stats"] is None
    assert ledger.last_session() == sessions[0]


@pytest.mark.parametrize(
    ("status", "unknown"), [(AttemptStatus.UNKNOWN, 1), (AttemptStatus.FAILED, 0), (AttemptStatus.REJECTED, 0)]
)
def test_only_a_lost_answer_counts_as_a_possible_double_charge(ledger, status, unknown):
    """attempt_ended: an 'unknown' attempt (the create's answer was lost) counts in the job's possible double
    charges, which export reports; a failed run or a 400 does not."""
    (job,) = jobs("a")
    ledger.sync_manifest("m.yaml", [job], output_dir=OUT)
    attempt = ledger.begin_attempt(job)
    ledger.attempt_ended(attempt, "j0", status, "why", job_failed=False, kind="k")
    ledger.flush()
    assert export(ledger)["j0"]["unknown_creates"] == unknown
    assert ledger.attempt_counts() == {str(status): 1}


def test_attempt_ids_only_grow_within_a_session_and_across_them(tmp_path):
    """Each attempt gets a larger id than every earlier one, also after reopening the ledger: the folder's
    journal reserves ids by the highest it has seen."""
    a, b = jobs("a", "b")
    with Ledger(tmp_path / "l.sqlite") as ledger:
        ledger.sync_manifest("m.yaml", [a, b], output_dir=OUT)
        first, second = ledger.begin_attempt(a), ledger.begin_attempt(b)
        third = ledger.job_satisfied("j1", b.spec_hash(), [png(0, "j1.png")], status=AttemptStatus.REUSED,
                                     run_id=None, note="")  # fmt: skip
        ledger.flush()
    with Ledger(tmp_path / "l.sqlite") as ledger:
        fourth = ledger.begin_attempt(a)
    assert first < second < third < fourth


def test_one_runner_per_ledger_until_it_closes(tmp_path):
    """lock_for_run: a second ledger object on the same file is refused, naming it; taking the lock twice in
    one is fine; closing releases it."""
    path = tmp_path / "l.sqlite"
    with Ledger(path) as holder:
        holder.lock_for_run()
        holder.lock_for_run()
        assert (tmp_path / "l.sqlite.lock").exists()
        with Ledger(path) as other, pytest.raises(LedgerBusy) as refused:
            other.lock_for_run()
        assert "another batchgen run" in str(refused.value) and str(path) in str(refused.value)
    with Ledger(path) as after:
        after.lock_for_run()


def test_a_held_flush_commits_with_the_next_or_rolls_back(tmp_path):
    """flush(hold=True) writes without committing: another reader sees nothing until the next flush commits,
    and rollback() drops it all; a flush with nothing queued still commits what a hold left open."""
    (job,) = jobs("a")
    path = tmp_path / "l.sqlite"
    with Ledger(path) as ledger, Ledger(path) as reader:
        ledger.sync_manifest("m.yaml", [job], output_dir=OUT)
        ledger.job_failed("j0", "held", "k")
        ledger.flush(hold=True)
        assert export(reader)["j0"]["state"] == "pending"
        ledger.rollback()
        ledger.flush()
        assert export(reader)["j0"]["state"] == "pending"
        ledger.job_failed("j0", "committed", "k")
        ledger.flush(hold=True)
        ledger.flush()
        assert export(reader)["j0"]["error"] == "committed"


def test_the_reuse_index_finds_whole_runs_of_the_same_request_and_service(tmp_path):
    """ReuseIndex: a request's runs come back newest first with their files in order; a run missing a file,
    another request or another service's images are not offered."""
    out = tmp_path / "out"
    index = ReuseIndex(tmp_path / "reuse.sqlite", "http://api/v1")
    try:
        index.add("h1", "run-1", out, [png(1, "a~2.png"), png(0, "a.png")])
        index.flush()
        index.add("h1", "run-2", out, [png(0, "b.png")])
        index.add("h1", "run-3", out, [png(1, "c~2.png")])  # its first file is missing: not whole
        index.add("h2", "run-4", out, [png(0, "d.png")])
        index.flush()
        index.flush()  # nothing queued: nothing to do
        found = index.find("h1")
        assert [run.run_id for run in found] == ["run-2", "run-1"]
        assert [(f.n, f.path, f.bytes, f.sha256) for f in found[1].files] == [
            (0, out.resolve() / "a.png", 100, f"{0:064x}"),
            (1, out.resolve() / "a~2.png", 101, f"{1:064x}"),
        ]
        assert found[0].files[0].content_type == "image/png"
        index.forget(out.resolve() / "b.png")
        assert [run.run_id for run in index.find("h1")] == ["run-1"]
        other = ReuseIndex(tmp_path / "reuse.sqlite", "simulated")
        try:
            assert other.find("h1") == [] and index.find("h3") == []
        finally:
            other.close()
    finally:
        index.close()


def test_a_flush_with_nothing_to_write_does_nothing(ledger):
    """flush() with nothing queued and no held transaction writes nothing, not even the folder's journal
    (before_flush): the scheduler flushes every tick. A held transaction is still committed by the next
    flush, even an empty one, after the journal is written."""
    journal_writes = 0

    def before_flush() -> None:
        nonlocal journal_writes
        journal_writes += 1

    ledger.before_flush = before_flush
    ledger.flush()
    ledger.flush(hold=True)
    assert journal_writes == 0
    ledger.sync_manifest("m.yaml", jobs("a"), output_dir=OUT)
    assert journal_writes == 1  # the sync's own flush
    ledger.job_failed("j0", "held", "k")
    ledger.flush(hold=True)
    ledger.flush(hold=True)  # nothing new queued: nothing to do
    assert journal_writes == 2
    ledger.flush()  # nothing queued, but it commits what the hold left open
    ledger.flush()
    assert journal_writes == 3
    with Ledger(ledger.path, readonly=True) as reader:
        assert export(reader)["j0"]["error"] == "held"


def test_a_flush_sqlite_refuses_keeps_none_of_its_writes_and_says_why(tmp_path):
    """A write sqlite refuses (here an attempt for a job the ledger does not have) fails the whole flush
    with a LedgerError naming the ledger and sqlite's reason; the writes queued with it are dropped, and
    the ledger goes on working."""
    path = tmp_path / "l.sqlite"
    with Ledger(path) as ledger:
        ledger.sync_manifest("m.yaml", jobs("a"), output_dir=OUT)
        ledger.job_failed("j0", "queued with the bad write", "k")
        ledger.begin_attempt(JobSpec("ghost", image_input("not in the manifest")))
        with pytest.raises(LedgerError) as refused:
            ledger.flush()
        assert str(path) in str(refused.value) and "FOREIGN KEY constraint failed" in str(refused.value)
        assert ledger.queued == 0
        assert export(ledger)["j0"]["state"] == "pending" and ledger.attempt_counts() == {}
        ledger.job_failed("j0", "after", "k")
        ledger.flush()
    with Ledger(path, readonly=True) as reopened:
        assert export(reopened)["j0"]["error"] == "after" and reopened.attempt_counts() == {}


class Interrupted(Exception):
    pass


class Explodes:
    """A value whose conversion for sqlite raises: an interruption in the middle of a flush."""

    def __conform__(self, protocol: object) -> object:
        raise Interrupted


def test_a_flush_interrupted_midway_keeps_none_of_its_writes(tmp_path):
    """Anything raised in the middle of a flush (not an sqlite error) comes out as it is, after the
    transaction is rolled back: nothing queued with it is kept, and the next flush starts clean."""
    path = tmp_path / "l.sqlite"
    with Ledger(path) as ledger:
        ledger.sync_manifest("m.yaml", jobs("a", "b"), output_dir=OUT)
        ledger.job_failed("j0", "queued before the interruption", "k")
        ledger.job_failed("j1", Explodes(), "k")  # type: ignore[arg-type]
        with pytest.raises(Interrupted):
            ledger.flush()
        assert [r["state"] for r in export(ledger).values()] == ["pending", "pending"]
        ledger.job_failed("j1", "after", "k")
        ledger.flush()
    with Ledger(path, readonly=True) as reopened:
        records = export(reopened)
        assert (records["j0"]["state"], records["j1"]["error"]) == ("pending", "after")


def test_a_sync_records_which_manifest_it_read_into_which_folder(tmp_path):
    """sync_begin: the ledger says which manifest and output folder its jobs came from (status and the
    report name them), as of the latest sync, also once reopened."""
    path = tmp_path / "l.sqlite"
    with Ledger(path) as ledger:
        assert (ledger.manifest, ledger.output_dir) == (None, None)
        ledger.sync_manifest("m.yaml", jobs("a"), output_dir=OUT)
        assert (ledger.manifest, ledger.output_dir) == ("m.yaml", OUT)
        ledger.sync_manifest("other.yaml", jobs("a"), output_dir="/tmp/elsewhere")
    with Ledger(path, readonly=True) as reopened:
        assert (reopened.manifest, reopened.output_dir) == ("other.yaml", "/tmp/elsewhere")


def test_a_streamed_sync_leaves_failed_jobs_failed_unless_asked(ledger):
    """sync_begin/sync_chunk/sync_end, as a manifest read while the batch runs: a job that failed for good
    stays failed with its error; only retry_failed gives it another try."""
    bad, good = jobs("bad", "good")
    ledger.sync_manifest("m.yaml", [bad, good], output_dir=OUT)
    ledger.job_failed("j0", "boom", "run")
    ledger.flush()
    for retry_failed in (False, True):
        generation = ledger.sync_begin("m.yaml", OUT)
        if retry_failed:
            ledger.sync_chunk([(0, bad), (1, good)], generation, retry_failed=True)
        else:
            ledger.sync_chunk([(0, bad), (1, good)], generation)
        ledger.sync_end("f")
        ledger.flush()
        record = export(ledger)["j0"]
        if retry_failed:
            assert (record["state"], record["error"]) == ("pending", None)
        else:
            assert (record["state"], record["error"], record["error_kind"]) == ("failed", "boom", "run")
            assert ledger.counts() == {"pending": 1, "running": 0, "succeeded": 0, "failed": 1}


def test_attempt_counts_leave_out_the_jobs_the_manifest_dropped(ledger):
    """attempt_counts covers the current manifest's jobs only: a job dropped from the manifest takes its
    attempts out of the counts, and brings them back when the manifest has it again."""
    kept, dropped = jobs("kept", "dropped")
    ledger.sync_manifest("m.yaml", [kept, dropped], output_dir=OUT)
    for job, outcomes in ((kept, ("failed", "failed")), (dropped, ("failed", "succeeded"))):
        for outcome in outcomes:
            attempt = ledger.begin_attempt(job)
            ledger.run_created(attempt, f"run-{attempt}", job)
            if outcome == "succeeded":
                ledger.job_succeeded(attempt, job.job_id, [png(0, f"{job.job_id}.png")])
            else:
                ledger.attempt_ended(attempt, job.job_id, AttemptStatus.FAILED, "no", job_failed=False, kind="run")
    ledger.flush()
    assert ledger.attempt_counts() == {"failed": 3, "succeeded": 1}
    ledger.sync_manifest("m.yaml", [kept], output_dir=OUT)
    assert ledger.attempt_counts() == {"failed": 2}
    ledger.sync_manifest("m.yaml", [kept, dropped], output_dir=OUT)
    assert ledger.attempt_counts() == {"failed": 3, "succeeded": 1}


def test_jobs_handed_out_carry_their_attempts_metadata_and_whether_a_new_run_is_wanted(ledger):
    """pending_page and open_runs hand the scheduler each job with its metadata, the attempts already made
    at its spec, and ``fresh`` only for a job `batchgen retry` asked to make again with a run of its own."""
    again, running = JobSpec("j0", image_input("again")), JobSpec("j2", image_input("running"))
    tried = JobSpec("j1", image_input("tried"), metadata={"sku": "A-1"})
    ledger.sync_manifest("m.yaml", [again, tried, running], output_dir=OUT)
    first = ledger.begin_attempt(again)
    ledger.run_created(first, "run-0", again)
    ledger.job_succeeded(first, "j0", [png(0, "j0.png")])
    for _ in range(2):
        attempt = ledger.begin_attempt(tried)
        ledger.attempt_ended(attempt, "j1", AttemptStatus.FAILED, "no", job_failed=False, kind="run")
    ledger.run_created(ledger.begin_attempt(running), "run-2", running)
    ledger.mark_for_retry(["j0"], [])
    handed_out = [(seq, p.spec.job_id, p.spec.metadata, p.attempts, p.fresh) for seq, p in ledger.pending_page(-1)]
    assert handed_out == [(0, "j0", {}, 0, True), (1, "j1", {"sku": "A-1"}, 2, False)]
    (open_run,) = ledger.open_runs()
    assert (open_run.job.spec.job_id, open_run.job.attempts, open_run.job.fresh) == ("j2", 1, False)


def test_lookups_by_id_answer_for_every_id_asked_however_many(ledger):
    """jobs_by_id / attempts_by_id (the journal's repair checks thousands of ids at once): every id asked
    that the ledger has is answered, wherever it sits in a long list."""
    a, b = jobs("a", "b")
    ledger.sync_manifest("m.yaml", [a, b], output_dir=OUT)
    first, second = ledger.begin_attempt(a), ledger.begin_attempt(b)
    ledger.run_created(second, "run-b", b)
    ledger.flush()
    job_ids = [f"nope-{i}" for i in range(999)]
    job_ids[500:500] = ["j0"]
    job_ids.append("j1")  # at 500 and at 1000
    assert ledger.jobs_by_id(job_ids) == {"j0": (a.spec_hash(), "running"), "j1": (b.spec_hash(), "running")}
    attempt_ids = [10_000 + i for i in range(999)]
    attempt_ids[500:500] = [first]
    attempt_ids.append(second)
    assert ledger.attempts_by_id(attempt_ids) == {first: ("creating", None), second: ("running", "run-b")}


def test_sessions_say_when_each_started_and_there_is_no_last_one_before_the_first(ledger):
    """sessions: each session's start and end times (status shows how long the last run took);
    last_session is None on a ledger that never ran."""
    assert ledger.sessions() == [] and ledger.last_session() is None
    before = time.time()
    session = ledger.session_started("m.yaml")
    ledger.session_finished(session, "completed", 0, "{}")
    ledger.flush()
    after = time.time()
    (recorded,) = ledger.sessions()
    assert before <= recorded["started_at"] <= recorded["finished_at"] <= after
    assert ledger.last_session() == recorded


def test_a_lock_file_that_cannot_be_made_is_an_error_naming_it(tmp_path):
    """lock_for_run: the lock file is made readable and writable, not executable; when it cannot be made
    (here a folder is in its way) the LedgerError names it and why, and is not taken for another runner."""
    with Ledger(tmp_path / "l.sqlite") as ledger:
        ledger.lock_for_run()
        mode = stat.S_IMODE((tmp_path / "l.sqlite.lock").stat().st_mode)
        assert mode & 0o600 == 0o600 and not mode & 0o111
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / "l.sqlite.lock").mkdir()
    with Ledger(blocked / "l.sqlite") as ledger, pytest.raises(LedgerError) as refused:
        ledger.lock_for_run()
    assert not isinstance(refused.value, LedgerBusy)
    assert f"cannot create the lock file {blocked / 'l.sqlite.lock'}" in str(refused.value)
    assert os.strerror(errno.EISDIR) in str(refused.value)


def test_the_reuse_index_makes_its_own_private_folder_and_shares_what_it_forgets(tmp_path):
    """ReuseIndex: the cache folder is made with its parents, readable by its owner only (it lists where
    the user's images are); a file it forgets is at once forgotten for every other handle on the index
    (another batch running beside this one), and the index still takes new runs."""
    out = tmp_path / "out"
    path = tmp_path / "cache" / "batchgen" / "reuse.sqlite"
    index = ReuseIndex(path, "http://api/v1")
    other = ReuseIndex(path, "http://api/v1")
    try:
        assert not stat.S_IMODE(path.parent.stat().st_mode) & 0o077
        index.add("h1", "run-1", out, [png(0, "a.png")])
        index.add("h1", "run-2", out, [png(0, "b.png")])
        index.flush()
        index.forget(out.resolve() / "b.png")
        assert [run.run_id for run in other.find("h1")] == ["run-1"]
        index.add("h2", "run-3", out, [png(0, "c.png")])
        index.flush()
        assert [run.run_id for run in other.find("h2")] == ["run-3"]
    finally:
        index.close()
        other.close()


def test_a_reuse_index_it_cannot_use_is_a_ledger_error_naming_it(tmp_path):
    """A reuse index that cannot be made, or a file in its place with other tables, gives LedgerErrors that
    name the file and the cause (the batch then goes on without reuse and says so), never sqlite3 errors."""
    (tmp_path / "a-file").write_text("")
    with pytest.raises(LedgerError, match="cannot use the reuse index .*a-file/reuse.sqlite"):
        ReuseIndex(tmp_path / "a-file" / "reuse.sqlite", "http://api/v1")
    path = tmp_path / "reuse.sqlite"
    foreign = sqlite3.connect(path)
    foreign.execute("CREATE TABLE images (name TEXT)")
    foreign.close()
    index = ReuseIndex(path, "http://api/v1")
    try:
        with pytest.raises(LedgerError) as unreadable:
            index.find("h1")
        assert f"cannot read the reuse index {path}: no such column" in str(unreadable.value)
        with pytest.raises(LedgerError) as unwritable:
            index.forget(tmp_path / "a.png")
        assert f"cannot write the reuse index {path}: no such column" in str(unwritable.value)
        index.add("h1", "run-1", tmp_path, [png(0, "a.png")])
        with pytest.raises(LedgerError) as unwritable:
            index.flush()
        assert f"cannot write the reuse index {path}: table images has 1 columns" in str(unwritable.value)
    finally:
        index.close()


def test_migrate_refuses_a_ledger_from_a_newer_batchgen_naming_it(tmp_path):
    """schema.migrate on its own: a schema newer than this code is refused, the message naming the file
    and saying to upgrade, and the file keeps its version."""
    path = tmp_path / "l.sqlite"
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        with pytest.raises(LedgerError) as refused:
            migrate(db, path)
        assert str(path) in str(refused.value) and "newer batchgen" in str(refused.value)
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
    finally:
        db.close()


def test_the_journal_offset_is_kept_per_folder_journal_with_the_commits(tmp_path):
    """set_journal_offset: how far into a folder's journal the ledger's commits reach, committed with them
    and read back after reopening; a journal never recorded reads as 0."""
    path = tmp_path / "l.sqlite"
    with Ledger(path) as ledger:
        assert ledger.journal_offset("folder-1") == 0
        ledger.set_journal_offset("folder-1", 1234)
        ledger.flush()
    with Ledger(path, readonly=True) as reopened:
        assert (reopened.journal_offset("folder-1"), reopened.journal_offset("folder-2")) == (1234, 0)


def test_recover_frees_a_job_of_an_earlier_manifest_left_running(ledger):
    """A job whose create never answered and that the manifest has since dropped is pending again after
    recover, so a manifest that brings it back runs it."""
    a, b = jobs("first", "second")
    ledger.sync_manifest("m.yaml", [a, b], output_dir=OUT)
    ledger.begin_attempt(a)
    ledger.flush()  # the create was about to be sent; then the process died
    ledger.sync_manifest("m2.yaml", [b], output_dir=OUT)  # the next manifest leaves the job out
    assert ledger.recover() == 1
    ledger.sync_manifest("m.yaml", [a, b], output_dir=OUT)
    assert [job.spec.job_id for _, job in ledger.pending_page(-1)] == ["j0", "j1"]
