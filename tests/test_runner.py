"""The real runner against the in-process simulator: every API answer, resume, and the ledger."""

from __future__ import annotations

import sqlite3

import anyio
import pytest

from batchgen import ExitCode
from batchgen.api import RunbaseClient
from batchgen.creating import API_DOWN_STREAK, LOST_STREAK
from batchgen.ledger import Ledger
from batchgen.manifest import load_jobs
from batchgen.simulator import SimConfig, Simulator

from .conftest import API_KEY, BASE_URL
from .served import assert_saved_as_served, image_files, simulated_stats


def test_batch_generates_every_image_and_records_it(write_manifest, run, sim, tmp_path):
    """Every job ends with a complete file whose sha256 is what the server sent, recorded in the ledger."""
    result = run(write_manifest(12), concurrency=4)
    assert result.exit_code == ExitCode.OK, result.message
    records = assert_saved_as_served(tmp_path / "out", sim.stats(), succeeded=12)
    assert [r["outputs"][0]["path"] for r in records] == [f"job-{i:03d}.png" for i in range(12)]
    assert all(
        (tmp_path / "out" / n).read_bytes().startswith(b"\x89PNG\r\n\x1a\n") for n in image_files(tmp_path / "out")
    )
    stats = sim.stats()
    assert stats["creates"] == 12 and stats["creates_per_prompt_max"] == 1
    assert stats["auth_on_files"] == 0
    assert result.counts == {"pending": 0, "running": 0, "succeeded": 12, "failed": 0}
    assert not list((tmp_path / "out").glob("*.part"))


def test_concurrency_limit_is_never_exceeded(write_manifest, run, sim):
    """At most --concurrency runs are in flight, as the server counts them."""
    result = run(write_manifest(30), concurrency=3)
    assert result.exit_code == ExitCode.OK
    assert sim.stats()["max_in_flight"] <= 3


def test_second_run_resumes_without_creating_anything(write_manifest, run, sim):
    """Running the same manifest again after success creates no run and exits 0."""
    manifest = write_manifest(6)
    assert run(manifest).exit_code == ExitCode.OK
    again = run(manifest)
    assert again.exit_code == ExitCode.OK
    assert "nothing to do" in again.message
    assert sim.stats()["create_requests"] == 6


def test_changed_prompt_is_generated_again_and_unchanged_jobs_are_not(write_manifest, run, sim):
    """Editing one job's prompt re-generates that job only."""
    jobs = [{"id": f"j{i}", "prompt": f"prompt {i}"} for i in range(4)]
    run(write_manifest(jobs=jobs))
    jobs[2]["prompt"] = "a different prompt"
    jobs[3]["metadata"] = {"note": "metadata does not change the image"}
    result = run(write_manifest(jobs=jobs))
    assert result.exit_code == ExitCode.OK
    prompts = [r["prompt"] for r in sim.stats()["runs"]]
    assert len(prompts) == 5 and prompts[-1] == "a different prompt"


def test_first_create_goes_out_alone_and_a_refused_key_costs_one_request(write_manifest, run):
    """401: exit 4 after a single create request; the message names RUNBASE_API_KEY, not the key."""
    sim = Simulator(SimConfig(latency=0.05, api_key="the-right-key"))
    result = run(write_manifest(20), sim, concurrency=8)
    assert result.exit_code == ExitCode.UNAUTHORIZED
    assert "RUNBASE_API_KEY" in result.message and API_KEY not in result.message
    assert sim.stats()["create_requests"] == 1


def test_missing_key_exits_4_before_any_request(write_manifest, tmp_path, monkeypatch, sim):
    """Without RUNBASE_API_KEY the run stops with exit 4 and sends nothing."""
    from batchgen import run_batch

    monkeypatch.delenv("RUNBASE_API_KEY", raising=False)
    result = run_batch(write_manifest(3), output_dir=tmp_path / "o", transport=sim.transport(), progress="none")
    assert result.exit_code == ExitCode.UNAUTHORIZED
    assert "RUNBASE_API_KEY" in result.message
    assert sim.stats()["create_requests"] == 0


def test_out_of_credits_mid_batch_collects_paid_runs_then_resumes(write_manifest, run, tmp_path):
    """402 mid-batch: exit 3, paid runs downloaded, creates stop; after a top-up the rerun finishes."""
    sim = Simulator(SimConfig(latency=0.05, credits=7))
    manifest = write_manifest(20)
    first = run(manifest, sim, concurrency=4)
    assert first.exit_code == ExitCode.ACCOUNT
    assert "credits" in first.message.lower()
    assert first.counts["succeeded"] == 7 and first.counts["pending"] == 13
    assert_saved_as_served(tmp_path / "out", sim.stats(), succeeded=7)
    # Every sender stopped at once: at most one 402 per submitter that was already waiting.
    assert sim.stats()["payment_required"] <= 4
    sim.add_credits(100)
    second = run(manifest, sim, concurrency=4)
    assert second.exit_code == ExitCode.OK
    assert sim.stats()["creates"] == 20 and sim.stats()["creates_per_prompt_max"] == 1
    assert_saved_as_served(tmp_path / "out", sim.stats(), succeeded=20)


def test_forbidden_stops_creating_with_exit_3(write_manifest, run):
    """403 (spend cap): exit 3 after one request, everything left pending."""
    sim = Simulator(SimConfig(latency=0.05, forbidden=True))
    result = run(write_manifest(10), sim)
    assert result.exit_code == ExitCode.ACCOUNT
    assert result.counts["pending"] == 10
    assert sim.stats()["create_requests"] == 1


def test_bad_request_fails_that_job_and_the_batch_goes_on(write_manifest, run):
    """400 on create: that job fails for good with the API's message; the rest succeed; exit 1."""
    sim = Simulator(SimConfig(latency=0.05, refuse_prompts_containing="FORBIDDEN"))
    jobs = [{"id": f"j{i}", "prompt": f"prompt {i}"} for i in range(6)]
    jobs[0]["prompt"] = "a FORBIDDEN prompt"  # the first create fails: the batch must still fan out
    result = run(write_manifest(jobs=jobs), sim)
    assert result.exit_code == ExitCode.JOBS_FAILED
    assert result.counts["succeeded"] == 5 and result.counts["failed"] == 1
    with Ledger(result.output_dir / "batchgen.sqlite") as ledger:
        errors = dict(ledger.recent_errors())
    assert "content policy" in errors["j0"]


def test_rate_limit_storm_pauses_everyone_and_finishes(write_manifest, run):
    """A 429 storm: every job succeeds, and few creates are spent on 429s."""
    sim = Simulator(SimConfig(latency=0.05, create_rate=20))
    result = run(write_manifest(60), sim, concurrency=16)
    assert result.exit_code == ExitCode.OK
    stats = sim.stats()
    assert stats["creates"] == 60
    assert stats["rate_limited_creates"] < 0.5 * 60


def test_rate_limit_without_retry_after_backs_off(write_manifest, run):
    """429 without Retry-After on creates and polls: exponential backoff, all jobs succeed."""
    sim = Simulator(SimConfig(latency=0.05, request_rate=8, retry_after=False))
    result = run(write_manifest(12), sim, concurrency=8)
    assert result.exit_code == ExitCode.OK
    assert sim.stats()["rate_limited_creates"] + sim.stats()["rate_limited_gets"] > 0


def test_given_rate_is_respected(write_manifest, run):
    """--rate paces creates so a limit the user knows is never hit."""
    sim = Simulator(SimConfig(latency=0.02, create_rate=25))
    result = run(write_manifest(40), sim, concurrency=16, rate=20)
    assert result.exit_code == ExitCode.OK
    assert sim.stats()["rate_limited_creates"] == 0


def test_failed_runs_are_retried_up_to_max_attempts(write_manifest, run):
    """Runs reported failed are tried again as new attempts; a job that always fails ends failed."""
    sim = Simulator(SimConfig(latency=0.02, failure_rate=1.0))
    result = run(write_manifest(3), sim, max_attempts=2)
    assert result.exit_code == ExitCode.JOBS_FAILED
    assert result.counts["failed"] == 3
    assert sim.stats()["creates"] == 6
    with Ledger(result.output_dir / "batchgen.sqlite") as ledger:
        assert ledger.attempt_counts() == {"failed": 6}


def test_retry_failed_tries_failed_jobs_again(write_manifest, run):
    """--retry-failed gives jobs that failed for good a fresh set of attempts."""
    sim = Simulator(SimConfig(latency=0.02, failure_rate=1.0))
    manifest = write_manifest(2)
    assert run(manifest, sim, max_attempts=1).exit_code == ExitCode.JOBS_FAILED
    sim.config.failure_rate = 0.0
    assert run(manifest, sim).exit_code == ExitCode.JOBS_FAILED  # not retried without the flag
    result = run(manifest, sim, retry_failed=True)
    assert result.exit_code == ExitCode.OK and result.counts["succeeded"] == 2


def test_server_errors_are_retried(write_manifest, run):
    """500, 502 with an HTML page and 503 are retried with backoff; every job succeeds."""
    faults = {"http_500": 0.05, "http_502_html": 0.05, "http_503": 0.05}
    sim = Simulator(SimConfig(latency=0.02, faults=faults, seed=3))
    result = run(write_manifest(20), sim)
    assert result.exit_code == ExitCode.OK, result.message
    assert sum(sim.stats()["faults"].values()) > 0
    assert result.stats.retries > 0
    assert sim.stats()["creates_per_prompt_max"] == 1  # a 5xx made no run, and none was made twice


def test_lost_create_answers_are_counted_as_possible_double_charges(write_manifest, run):
    """A create whose answer never came is recorded as unknown, counted, and the job still succeeds."""
    sim = Simulator(SimConfig(latency=0.02, faults={"reset_after_create": 0.3}, seed=1))
    result = run(write_manifest(12), sim)
    assert result.exit_code == ExitCode.OK
    lost = sim.stats()["lost_create_answers"]
    assert lost > 0
    assert result.unknown_creates_total == lost == result.stats.unknown_creates
    assert sim.stats()["creates"] == 12 + lost


@pytest.mark.parametrize("concurrency", [1, 16])
def test_an_api_that_loses_every_create_answer_is_not_paid_for_every_job(write_manifest, run, concurrency):
    """Every create makes a run and loses its answer: the batch stops after LOST_STREAK of them in a row
    (exit 6, each counted as a possible double charge) instead of buying --max-attempts runs for every
    job; the jobs wait, and once the answers come back the next run finishes them."""
    sim = Simulator(SimConfig(latency=0.02, faults={"reset_after_create": 1.0}))
    manifest = write_manifest(40)
    first = run(manifest, sim, concurrency=concurrency)
    assert first.exit_code == ExitCode.UNAVAILABLE, first.message
    assert "answer" in first.message and "no more were sent" in first.message
    bought = sim.stats()["creates"]
    # The gentle start lets one job try until a create works: exactly the streak, whatever the concurrency.
    assert bought == LOST_STREAK == first.unknown_creates_total
    assert first.counts["pending"] >= 40 - 2
    sim.config.faults = {}
    second = run(manifest, sim, concurrency=concurrency)
    assert second.exit_code in (ExitCode.OK, ExitCode.JOBS_FAILED), second.message
    assert second.counts["pending"] == 0
    assert sim.stats()["creates"] - bought <= 40


def test_lost_answers_between_runs_made_do_not_stop_the_batch(write_manifest, run):
    """The streak counts lost answers with no run id answered between them: many more than the streak
    in all, each paid for and retried, and the batch finishes."""
    sim = Simulator(SimConfig(latency=0.02, faults={"reset_after_create": 0.3}, seed=1))
    result = run(write_manifest(30), sim, concurrency=1, max_attempts=10)
    assert result.exit_code == ExitCode.OK, result.message
    lost = sim.stats()["lost_create_answers"]
    assert lost >= LOST_STREAK  # more than the streak in all, never that many in a row
    assert result.unknown_creates_total == lost


def test_malformed_and_truncated_answers_are_retried(write_manifest, run, tmp_path):
    """Broken JSON, bodies cut short (polls and files) and resets: retried; every file is whole, as served."""
    faults = {"malformed_json": 0.1, "truncated": 0.1, "reset": 0.1}
    sim = Simulator(SimConfig(latency=0.02, faults=faults, seed=5))
    result = run(write_manifest(15), sim)
    assert result.exit_code == ExitCode.OK, result.message
    assert sim.stats()["faults"]["truncated"] > 0
    assert_saved_as_served(tmp_path / "out", sim.stats(), succeeded=15)


def test_expired_output_urls_are_fetched_again(write_manifest, run, tmp_path):
    """A download refused with 403 gets fresh URLs from the API before giving up."""
    sim = Simulator(SimConfig(latency=0.02, faults={"expire_first_fetch": 1.0}))
    result = run(write_manifest(4), sim)
    assert result.exit_code == ExitCode.OK
    assert result.stats.url_refreshes == 4
    assert sim.stats()["creates"] == 4
    assert_saved_as_served(tmp_path / "out", sim.stats(), succeeded=4)


def test_redirects_are_followed_but_not_to_other_schemes(write_manifest, run, tmp_path):
    """Redirects to http(s) are followed; one to another scheme fails that attempt."""
    sim = Simulator(SimConfig(latency=0.02, faults={"redirect": 1.0}))
    assert run(write_manifest(3), sim).exit_code == ExitCode.OK
    assert_saved_as_served(tmp_path / "out", sim.stats(), succeeded=3)
    bad = Simulator(SimConfig(latency=0.02, faults={"redirect_bad_scheme": 1.0}))
    result = run(write_manifest(2), bad, output_dir=tmp_path / "other", max_attempts=1, reuse=False)
    assert result.exit_code == ExitCode.JOBS_FAILED
    assert bad.stats()["faults"]["redirect_bad_scheme"] >= 2  # every job met it
    assert_saved_as_served(tmp_path / "other", bad.stats(), succeeded=0)


def test_several_outputs_per_run_are_numbered_apart_from_other_jobs(write_manifest, run, tmp_path):
    """A run returning several URLs gives lamp.png, lamp~2.png, lamp~3.png: never another job's name (lamp-2)."""
    sim = Simulator(SimConfig(latency=0.02, outputs_per_run=3))
    jobs = [{"id": "lamp", "prompt": "a lamp"}, {"id": "lamp-2", "prompt": "another lamp"}]
    result = run(write_manifest(jobs=jobs), sim)
    assert result.exit_code == ExitCode.OK
    names = ["lamp.png", "lamp~2.png", "lamp~3.png", "lamp-2.png", "lamp-2~2.png", "lamp-2~3.png"]
    assert image_files(tmp_path / "out") == set(names)
    records = assert_saved_as_served(tmp_path / "out", sim.stats(), succeeded=2)
    assert [[o["path"] for o in r["outputs"]] for r in records] == [names[:3], names[3:]]


def test_run_that_never_finishes_becomes_a_failed_attempt(write_manifest, run):
    """A run stuck in 'running' past --run-timeout is given up and tried again."""
    sim = Simulator(SimConfig(latency=0.02, stuck_rate=1.0))
    result = run(write_manifest(1), sim, run_timeout=0.3, max_attempts=2)
    assert result.exit_code == ExitCode.JOBS_FAILED
    assert sim.stats()["creates"] == 2


def test_vanished_run_is_created_again(write_manifest, run, sim, tmp_path):
    """A run id in the ledger that the API keeps answering 404 for, past the grace, gets a new attempt."""
    manifest = write_manifest(1)
    ledger_path = tmp_path / "out" / "batchgen.sqlite"
    with Ledger(ledger_path) as ledger:
        ledger.sync_manifest(str(manifest), load_jobs(manifest), output_dir=str(tmp_path / "out"))
        job = load_jobs(manifest)[0]
        ledger.run_created(ledger.begin_attempt(job), "run_that_the_server_forgot", job)
    result = run(manifest, not_found_grace=0.2)
    assert result.exit_code == ExitCode.OK
    with Ledger(ledger_path) as ledger:
        assert ledger.attempt_counts() == {"failed": 1, "succeeded": 1}
    assert_saved_as_served(tmp_path / "out", sim.stats(), succeeded=1)


def test_runs_created_before_a_crash_are_polled_not_created_again(write_manifest, run, sim, tmp_path):
    """A run id committed by an earlier session is polled and downloaded, never paid for twice."""
    manifest = write_manifest(3)
    jobs = load_jobs(manifest)

    async def create_directly():
        async with RunbaseClient(BASE_URL, API_KEY, transport=sim.transport()) as client:
            return await client.create_run(jobs[1])

    run_id = anyio.run(create_directly).run_id
    with Ledger(tmp_path / "out" / "batchgen.sqlite") as ledger:  # as if killed right after the answer
        ledger.sync_manifest(str(manifest), jobs, output_dir=str(tmp_path / "out"))
        ledger.run_created(ledger.begin_attempt(jobs[1]), run_id, jobs[1])
    result = run(manifest)
    assert result.exit_code == ExitCode.OK
    stats = sim.stats()
    assert stats["creates"] == 3 and stats["creates_per_prompt_max"] == 1
    records = assert_saved_as_served(tmp_path / "out", stats, succeeded=3)
    assert records[1]["run_id"] == run_id and records[1]["outputs"][0]["path"] == "job-001.png"


def test_two_runners_on_one_ledger_the_second_exits_at_once(write_manifest, tmp_path, run):
    """While one runner holds the ledger, a second one refuses to start."""
    manifest = write_manifest(2)
    with Ledger(tmp_path / "out" / "batchgen.sqlite") as holder:
        holder.lock_for_run()
        result = run(manifest)
    assert result.exit_code == ExitCode.LOCAL
    assert "another batchgen run" in result.message


def test_manifest_errors_send_nothing(tmp_path, run, sim):
    """An invalid manifest: exit 2, every problem listed, zero requests."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("jobs:\n  - prompt: ''\n  - prompt: ok\n    aspect-ratio: '1:1'\n", encoding="utf-8")
    result = run(bad)
    assert result.exit_code == ExitCode.USAGE
    assert "line 2" in result.message and "aspect_ratio" in result.message
    assert sim.stats()["create_requests"] == 0


def test_api_key_is_not_written_anywhere(write_manifest, run, tmp_path):
    """The key appears in no file of the output folder, the ledger included, nor in results."""
    sim = Simulator(SimConfig(latency=0.02, failure_rate=0.3, faults={"http_500": 0.1}, seed=2))
    result = run(write_manifest(8), sim)
    for path in (tmp_path / "out").rglob("*"):
        if path.is_file():
            assert API_KEY.encode() not in path.read_bytes(), path
    assert API_KEY not in repr(result) and API_KEY not in result.message
    db = sqlite3.connect(tmp_path / "out" / "batchgen.sqlite")
    dump = "\n".join(db.iterdump())
    assert API_KEY not in dump


@pytest.mark.parametrize("bad_id", ["../escape", "/etc/passwd", "a/b", ".hidden", "x" * 300])
def test_unsafe_job_ids_never_become_paths(tmp_path, run, sim, bad_id):
    """Ids that could leave the output folder are manifest errors; nothing at all is written."""
    manifest = tmp_path / "m.yaml"
    manifest.write_text(f"jobs:\n  - id: '{bad_id}'\n    prompt: p\n", encoding="utf-8")
    result = run(manifest, output_dir=tmp_path / "deep" / "out")
    assert result.exit_code == ExitCode.USAGE
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.yaml"]


def test_an_api_that_keeps_failing_stops_the_batch_with_every_job_pending(write_manifest, run):
    """When creates fail everywhere (every answer a 503), the batch stops with exit 6; no job is failed."""
    sim = Simulator(SimConfig(latency=0.02, faults={"http_503": 1.0}))
    result = run(write_manifest(10), sim)
    assert result.exit_code == ExitCode.UNAVAILABLE, result.message
    assert result.counts["pending"] == 10 and result.counts["failed"] == 0
    # Creates fail one at a time (no create has got through, so the gate stays shut) until the
    # streak that means "the API is down": not one request more.
    assert sim.stats()["create_requests"] == API_DOWN_STREAK
    sim.config.faults = {}
    assert run(write_manifest(10), sim).exit_code == ExitCode.OK


def test_when_no_create_gets_through_the_first_job_is_not_blamed(write_manifest, run):
    """A resumed batch whose only remaining job meets 500s every time stops with exit 6; the job stays pending."""
    sim = Simulator(SimConfig(latency=0.02))
    jobs = [{"id": f"j{i}", "prompt": f"prompt {i}"} for i in range(4)]
    manifest = write_manifest(jobs=jobs)
    assert run(manifest, sim).exit_code == ExitCode.OK
    jobs.append({"id": "poison", "prompt": "the server chokes on this one"})
    sim.config.faults = {"http_500": 1.0}
    result = run(write_manifest(jobs=jobs), sim)
    # Nothing has succeeded in this session, so the batch is stopped rather than the job blamed.
    assert result.exit_code == ExitCode.UNAVAILABLE and result.counts["pending"] == 1


def test_python_api_takes_plain_strings(write_manifest, tmp_path, monkeypatch):
    """The README's Python example: run_batch with string paths and simulate=True saves each job's image."""
    from batchgen import run_batch

    monkeypatch.chdir(tmp_path)
    result = run_batch(str(write_manifest(3)), output_dir="images", simulate=True, progress="none")
    assert result.exit_code == ExitCode.OK, result.message
    with Ledger(tmp_path / "images" / "batchgen.sqlite") as ledger:
        run_ids = [r["run_id"] for r in ledger.iter_export()]
    assert_saved_as_served(tmp_path / "images", simulated_stats(run_ids), succeeded=3)
