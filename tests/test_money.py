"""Never pay twice, never keep a wrong file: the paths off the happy path that used to cost money or images.

Each test is one finding: a lost ledger, identical requests, a 404 right after a create,
two ledgers on one folder, files deleted or changed behind batchgen's back.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import pytest

from batchgen import ExitCode, run_batch
from batchgen.ledger import Ledger
from batchgen.simulator import SimConfig, Simulator

from .conftest import API_KEY, batchgen_cli, env_for, export_records, wait_until


def served(sim: Simulator) -> dict[str, set[str]]:
    """sha256 of every file the server sent, by the prompt of the run that made it."""
    by_prompt: dict[str, set[str]] = {}
    for run in sim.stats()["runs"]:
        by_prompt.setdefault(run["prompt"], set()).update(f["sha256"] for f in run["files"])
    return by_prompt


def files_match_their_own_runs(out: Path, sim: Simulator) -> None:
    """Every file export lists exists and hashes to what the server sent for that job's own prompt."""
    sent = served(sim)
    for record in export_records(out):
        assert record["state"] == "succeeded", record
        for path, digest in zip(record["outputs"], record["sha256"], strict=True):
            assert hashlib.sha256(Path(path).read_bytes()).hexdigest() == digest
            assert digest in sent[record["input"]["prompt"]], record["job_id"]


def cli_run(manifest: Path, out: Path, server: Any, *extra: str) -> Any:
    return batchgen_cli("run", str(manifest), "--output", str(out), "--no-progress", *extra, env=env_for(server))


# -- a lost ledger ------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["emptied", "deleted"])
def test_a_lost_ledger_pays_for_nothing_again(write_manifest, tmp_path, serve, how):
    """Emptying or deleting the ledger after a batch: the same run adopts every image, creates nothing, exit 0."""
    server = serve()
    manifest, out = write_manifest(12), tmp_path / "out"
    assert cli_run(manifest, out, server).returncode == 0
    before = {p.name: p.read_bytes() for p in out.glob("*.png")}
    ledger = out / "batchgen.sqlite"
    for side in (Path(f"{ledger}-wal"), Path(f"{ledger}-shm")):
        side.unlink(missing_ok=True)
    if how == "emptied":
        ledger.write_bytes(b"")
    else:
        ledger.unlink()
    result = cli_run(manifest, out, server)
    assert result.returncode == 0, result.stderr
    assert "12 images already in the folder adopted" in result.stderr
    assert server.simulator.stats()["creates"] == 12
    assert {p.name: p.read_bytes() for p in out.glob("*.png")} == before
    status = json.loads(batchgen_cli("status", "--output", str(out), "--json").stdout)
    assert status["jobs"]["succeeded"] == 12 and status["attempts"].get("unknown", 0) == 0
    files_match_their_own_runs(out, server.simulator)


def test_a_ledger_rolled_back_polls_the_runs_it_forgot(write_manifest, tmp_path, run):
    """Commits lost after the runs were created (a deleted -wal): those runs are polled, not created again."""
    sim = Simulator(SimConfig(latency=0.05))
    manifest, out = write_manifest(6), tmp_path / "out"
    ledger_file = out / "batchgen.sqlite"
    assert run(manifest, sim).exit_code == ExitCode.OK
    # Roll the ledger back to just after the sync: as if every later commit had been lost.
    db = sqlite3.connect(ledger_file)
    db.execute("DELETE FROM outputs")
    db.execute("DELETE FROM attempts")
    db.execute("UPDATE jobs SET state = 'pending', attempts = 0")
    db.execute("DELETE FROM meta WHERE key LIKE 'journal_offset:%'")
    db.commit()
    db.close()
    for image in out.glob("job-00[0-2].png"):  # three images were never saved: their runs are still open
        image.unlink()
    result = run(manifest, sim)
    assert result.exit_code == ExitCode.OK, result.message
    assert sim.stats()["creates"] == 6
    assert "3 images already in the folder adopted" in result.notes[0]
    assert "3 runs it had lost polled again" in result.notes[0]
    files_match_their_own_runs(out, sim)


KILLED_AFTER_A_REFUSAL = """
import os, sys
from pathlib import Path
from batchgen.folder import OutputFolder
from batchgen.ledger import Ledger
from batchgen.manifest import iter_jobs

out, manifest = Path(sys.argv[1]), Path(sys.argv[2])
folder, ledger = OutputFolder(out), Ledger(out / "batchgen.sqlite")
ledger.sync_manifest(str(manifest), iter_jobs(manifest), output_dir=str(out.resolve()))
ledger.journal = folder.note
ledger.before_flush = lambda: ledger.set_journal_offset(folder.folder_id, folder.write_journal())
job = next(iter_jobs(manifest))
attempt = ledger.begin_attempt(job)
ledger.flush()  # the attempt is durable: its create may go
ledger.not_created(attempt, job.job_id)  # answered 429: forgotten, in the journal first...
folder.write_journal()
os._exit(9)  # ...and killed before the ledger commits that
"""


def test_a_refused_create_the_ledger_did_not_forget_before_a_kill_is_no_possible_double_charge(
    write_manifest, tmp_path, run, sim
):
    """A create answered 429, journalled as refused but killed before the ledger forgot it: the next run
    forgets it too (no run was made), so it is not reported as a possible double charge."""
    manifest, out = write_manifest(2), tmp_path / "out"
    out.mkdir()
    killed = subprocess.run([sys.executable, "-c", KILLED_AFTER_A_REFUSAL, str(out), str(manifest)], timeout=60)
    assert killed.returncode == 9
    with Ledger(out / "batchgen.sqlite", readonly=True) as ledger:
        assert ledger.attempt_counts() == {"creating": 1}  # as the kill left it
    result = run(manifest)
    assert result.exit_code == ExitCode.OK, result.message
    assert result.unknown_creates_total == 0
    assert sim.stats()["creates"] == 2
    with Ledger(out / "batchgen.sqlite", readonly=True) as ledger:
        assert ledger.attempt_counts() == {"succeeded": 2}
    files_match_their_own_runs(out, sim)


def test_a_new_ledger_refuses_a_folder_of_unknown_images(write_manifest, tmp_path, serve):
    """Images batchgen has no record of: a new batch refuses the folder (exit 5) until told otherwise."""
    server = serve()
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"\xff\xd8\xff not really")
    result = cli_run(write_manifest(2), out, server)
    assert result.returncode == 5 and "holiday.jpg" in result.stderr and "--allow-unknown-files" in result.stderr
    assert server.simulator.stats()["create_requests"] == 0
    allowed = cli_run(write_manifest(2), out, server, "--allow-unknown-files")
    assert allowed.returncode == 0, allowed.stderr
    assert (out / "holiday.jpg").read_bytes() == b"\xff\xd8\xff not really"


def test_an_output_never_overwrites_a_file_with_other_bytes(write_manifest, tmp_path, serve):
    """The user's own file under a job's name (--allow-unknown-files), then the image of a job whose prompt
    changed: each earlier file is moved to .batchgen/replaced/ with its bytes, the log says where, and the
    new image is the one the server sent."""
    server = serve()
    out = tmp_path / "out"
    out.mkdir()
    (out / "job-000.png").write_bytes(b"the user's own photo")
    first = write_manifest(2)
    result = cli_run(first, out, server, "--allow-unknown-files", "--no-reuse")
    assert result.returncode == 0, result.stderr
    assert "job-000.png already held other bytes: kept as .batchgen/replaced/job-000.png" in result.stderr
    assert (out / ".batchgen" / "replaced" / "job-000.png").read_bytes() == b"the user's own photo"
    files_match_their_own_runs(out, server.simulator)
    paid_for = (out / "job-001.png").read_bytes()
    changed = write_manifest(jobs=[{"id": "job-000", "prompt": "product photo number 0"},
                                   {"id": "job-001", "prompt": "the same product, from above"}])  # fmt: skip
    result = cli_run(changed, out, server, "--no-reuse")
    assert result.returncode == 0, result.stderr
    assert "kept as .batchgen/replaced/job-001.png" in result.stderr
    assert (out / ".batchgen" / "replaced" / "job-001.png").read_bytes() == paid_for
    assert (out / "job-001.png").read_bytes() != paid_for
    files_match_their_own_runs(out, server.simulator)
    assert sorted(p.name for p in (out / ".batchgen" / "replaced").iterdir()) == ["job-000.png", "job-001.png"]


# -- identical requests ---------------------------------------------------------------------


def test_identical_jobs_in_one_manifest_are_generated_once(write_manifest, run, tmp_path):
    """Two jobs sending the same input: one run; the second gets a copy under its own name, recorded as reused."""
    sim = Simulator(SimConfig(latency=0.05))
    jobs = [{"id": f"copy-{i}", "prompt": "the same lamp"} for i in range(4)] + [{"id": "other", "prompt": "a mug"}]
    result = run(write_manifest(jobs=jobs), sim, concurrency=8)
    assert result.exit_code == ExitCode.OK
    assert sim.stats()["creates"] == 2 and result.stats.reused == 3
    images = {i: (tmp_path / "out" / f"copy-{i}.png").read_bytes() for i in range(4)}
    assert len(set(images.values())) == 1
    assert hashlib.sha256(images[0]).hexdigest() in served(sim)["the same lamp"]
    with Ledger(tmp_path / "out" / "batchgen.sqlite", readonly=True) as ledger:
        assert ledger.attempt_counts() == {"succeeded": 2, "reused": 3}


def test_a_second_folder_reuses_the_first_ones_images(write_manifest, run, tmp_path):
    """The same manifest into another output folder (a mistyped --output): copies, no run paid."""
    sim = Simulator(SimConfig(latency=0.05))
    manifest = write_manifest(5)
    assert run(manifest, sim, output_dir=tmp_path / "a").exit_code == ExitCode.OK
    result = run(manifest, sim, output_dir=tmp_path / "b")
    assert result.exit_code == ExitCode.OK and result.stats.reused == 5 and result.stats.created == 0
    assert result.message == "all jobs succeeded"  # five jobs were done now, by copying: not "nothing to do"
    assert sim.stats()["creates"] == 5
    for image in (tmp_path / "a").glob("*.png"):
        assert (tmp_path / "b" / image.name).read_bytes() == image.read_bytes()
    paid = run(manifest, sim, output_dir=tmp_path / "c", reuse=False)
    assert paid.stats.created == 5 and sim.stats()["creates"] == 10


def test_a_changed_source_image_is_not_reused(write_manifest, run, tmp_path):
    """An indexed image that was changed since is not copied: the job gets its own run."""
    sim = Simulator(SimConfig(latency=0.05))
    manifest = write_manifest(1)
    assert run(manifest, sim, output_dir=tmp_path / "a").exit_code == ExitCode.OK
    (tmp_path / "a" / "job-000.png").write_bytes(b"edited by hand")
    result = run(manifest, sim, output_dir=tmp_path / "b")
    assert result.stats.reused == 0 and result.stats.created == 1
    assert (
        hashlib.sha256((tmp_path / "b" / "job-000.png").read_bytes()).hexdigest()
        in served(sim)["product photo number 0"]
    )


def test_simulated_images_never_stand_in_for_real_ones(write_manifest, tmp_path):
    """Images made with --simulate are not reused by a batch against the real API (another service)."""
    manifest = write_manifest(2)
    assert run_batch(manifest, output_dir=tmp_path / "sim", simulate=True, progress="none").exit_code == 0
    sim = Simulator(SimConfig(latency=0.05))
    result = run_batch(
        manifest,
        output_dir=tmp_path / "real",
        transport=sim.transport(),
        api_key="k",
        base_url="http://api.runbase.test/api/v1",
        progress="none",
    )
    assert result.exit_code == 0 and result.stats.reused == 0 and sim.stats()["creates"] == 2


# -- a 404 right after the create -------------------------------------------------------------


async def send_answer(send: Any, status: int, body: bytes, content_type: bytes) -> None:
    """One whole ASGI answer, its length declared."""
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class NotFoundAtFirst:
    """The simulator behind an eventually consistent front: each run answers 404 to its first polls."""

    def __init__(self, sim: Simulator, misses: int):
        self.sim, self.misses, self.seen = sim, misses, {}

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and scope["method"] == "GET" and path.startswith("/api/v1/runs/"):
            count = self.seen[path] = self.seen.get(path, 0) + 1
            if count <= self.misses:
                return await send_answer(send, 404, b'{"error": {"message": "run not found"}}', b"application/json")
        await self.sim(scope, receive, send)


def test_a_run_that_answers_404_at_first_is_not_paid_for_again(write_manifest, run):
    """Polls of a just-created run answering 404 a few times: the run is polled again and used, never replaced."""
    sim = Simulator(SimConfig(latency=0.05))
    front = NotFoundAtFirst(sim, misses=3)
    result = run(write_manifest(4), sim, transport=httpx.ASGITransport(app=front), not_found_grace=30.0)
    assert result.exit_code == ExitCode.OK
    assert sim.stats()["creates"] == 4 and result.stats.failed_runs == 0
    assert all(count > 3 for count in front.seen.values())


def test_outputs_a_storage_host_keeps_refusing_are_fetched_later_never_bought_again(write_manifest, run, tmp_path):
    """Every file fetch answering 503: no second run is bought; the next run, the host back, saves each run's image."""
    sim = Simulator(SimConfig(latency=0.02, faults={"file_unavailable": 1.0}))
    manifest, out = write_manifest(3), tmp_path / "out"
    first = run(manifest, sim, max_attempts=3)
    assert sim.stats()["creates"] == 3, "a run whose image exists was bought again"
    assert first.exit_code == ExitCode.UNAVAILABLE and "without paying again" in first.message, first.message
    assert first.counts["running"] == 3 and not list(out.glob("*.png"))
    sim.config.faults = {}
    second = run(manifest, sim, max_attempts=3)
    assert second.exit_code == ExitCode.OK, second.message
    assert sim.stats()["creates"] == 3
    files_match_their_own_runs(out, sim)


def test_a_run_that_lists_its_outputs_a_moment_after_succeeding_is_saved(write_manifest, run, tmp_path):
    """Answers saying 'succeeded' without output URLs for a while: the run is asked again until they come, paid once."""
    sim = Simulator(SimConfig(latency=0.02, output_lag=3))
    result = run(write_manifest(3), sim)
    assert result.exit_code == ExitCode.OK, result.message
    assert sim.stats()["creates"] == 3
    files_match_their_own_runs(tmp_path / "out", sim)


class RewrittenAnswers:
    """The simulator behind a front that rewrites the JSON answers of the requests ``picks`` chooses with ``edit``;
    it records the query of every file request."""

    def __init__(self, sim: Simulator, picks: Callable[[str, str], bool], edit: Callable[[dict[str, Any]], None]):
        self.sim, self.picks, self.edit, self.file_queries = sim, picks, edit, []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/files/"):
            self.file_queries.append(scope["query_string"].decode())
        if scope["type"] != "http" or not self.picks(scope["method"], scope["path"]):
            return await self.sim(scope, receive, send)
        start: dict[str, Any] = {}

        async def rewrite(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
                return
            body = json.loads(message["body"])
            if start["status"] < 300:
                self.edit(body)
            data = json.dumps(body).encode()
            headers = [(k, v) for k, v in start["headers"] if k != b"content-length"]
            await send({**start, "headers": [*headers, (b"content-length", str(len(data)).encode())]})
            await send({"type": "http.response.body", "body": data})

        await self.sim(scope, receive, rewrite)


def unusable_ids(sim: Simulator, tail: str) -> RewrittenAnswers:
    """Each create answered with its run's id and ``tail``: a run made, its id unusable."""
    return RewrittenAnswers(sim, lambda method, _: method == "POST", lambda body: body.update(id=body["id"] + tail))


@pytest.mark.parametrize(
    ("tail", "reason"), [("\t", "cannot be one URL path segment"), (API_KEY, "holds the API key")], ids=["tab", "key"]
)
def test_a_create_answered_with_an_id_that_cannot_be_kept_is_not_bought_again(
    write_manifest, run, tmp_path, tail, reason
):
    """Creates answered 201 with an id holding a tab, or the API key: each job fails after its one run (a possible
    double charge), and the key is written nowhere."""
    sim = Simulator(SimConfig(latency=0.02))
    result = run(write_manifest(3), sim, transport=httpx.ASGITransport(app=unusable_ids(sim, tail)), max_attempts=3)
    assert sim.stats()["creates"] == 3, "a create the API answered with an unusable id was sent again"
    assert result.exit_code == ExitCode.JOBS_FAILED and result.unknown_creates_total == 3
    for record in export_records(tmp_path / "out"):
        assert record["state"] == "failed" and record["error_kind"] == "unknown", record
        assert reason in record["error"] and "\t" not in record["error"]
    for path in (tmp_path / "out").rglob("*"):
        assert not path.is_file() or API_KEY.encode() not in path.read_bytes(), path


def key_in_urls(sim: Simulator) -> RewrittenAnswers:
    """Every output URL a poll answers with carries the API key in its query."""

    def add_key(body: dict[str, Any]) -> None:
        if isinstance(body.get("output"), dict):
            body["output"]["urls"] = [f"{url}&token={API_KEY}" for url in body["output"]["urls"]]

    return RewrittenAnswers(sim, lambda method, path: method == "GET" and path.startswith("/api/v1/runs/"), add_key)


def test_an_output_url_holding_the_api_key_is_not_fetched(write_manifest, run, tmp_path):
    """Output URLs carrying the API key in their query: never requested (the key would reach the file host), the job
    fails with the reason after its one run, and no file holds the key."""
    sim = Simulator(SimConfig(latency=0.02))
    front = key_in_urls(sim)
    result = run(write_manifest(2), sim, transport=httpx.ASGITransport(app=front))
    assert front.file_queries == [], "the API key was sent to the file host"
    assert result.exit_code == ExitCode.JOBS_FAILED and sim.stats()["creates"] == 2
    for record in export_records(tmp_path / "out"):
        assert record["state"] == "failed" and "holds the API key" in record["error"], record
    for path in (tmp_path / "out").rglob("*"):
        assert not path.is_file() or API_KEY.encode() not in path.read_bytes(), path


class PollsDown:
    """The simulator behind a gateway that answers every poll 502 while ``down``; creates go through."""

    def __init__(self, sim: Simulator):
        self.sim, self.down = sim, True

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if self.down and scope["type"] == "http" and scope["method"] == "GET" and "/runs/" in scope["path"]:
            return await send_answer(send, 502, b"<html><body><h1>502 Bad Gateway</h1></body></html>", b"text/html")
        await self.sim(scope, receive, send)


def test_runs_whose_polls_keep_failing_are_kept_for_the_next_run_not_bought_again(write_manifest, run, tmp_path):
    """Every poll answered 502 for longer than the run timeout: no second run is bought; the next run, polls
    answered again, saves each run's own image."""
    sim = Simulator(SimConfig(latency=0.02))
    front = PollsDown(sim)
    manifest, transport = write_manifest(3), httpx.ASGITransport(app=front)
    first = run(manifest, sim, transport=transport, run_timeout=0.5, max_attempts=3)
    assert sim.stats()["creates"] == 3, "a run that could not be polled was bought again"
    assert first.exit_code == ExitCode.UNAVAILABLE and "without paying again" in first.message, first.message
    front.down = False
    second = run(manifest, sim, transport=transport, run_timeout=0.5, max_attempts=3)
    assert second.exit_code == ExitCode.OK, second.message
    assert sim.stats()["creates"] == 3
    files_match_their_own_runs(tmp_path / "out", sim)


# -- two ledgers, one folder ------------------------------------------------------------------


def test_two_ledgers_on_one_folder_the_second_run_stops(write_manifest, tmp_path, serve):
    """A second run on the same output folder with another ledger exits 5 at once, touching nothing."""
    server = serve(latency=2.0)
    out = tmp_path / "out"
    first = subprocess.Popen(
        [sys.executable, "-m", "batchgen", "run", str(write_manifest(3)), "--output", str(out), "--no-progress"],
        env={**os.environ, **env_for(server)},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: server.simulator.stats()["creates"] > 0, timeout=60, what="the first run's first create")
        second = cli_run(write_manifest(3), out, server, "--ledger", str(tmp_path / "other.sqlite"))
        assert second.returncode == 5, second.stderr
        assert "another batchgen run is writing to the output folder" in second.stderr
    finally:
        _, stderr = first.communicate(timeout=60)
    assert first.returncode == 0, stderr
    assert server.simulator.stats()["creates"] == 3


# -- files changed behind batchgen's back --------------------------------------------------------


def test_a_deleted_or_changed_file_is_fetched_again_for_free(write_manifest, tmp_path, serve):
    """Delete one image and overwrite another with junk: the next run fetches both from their runs, pays nothing."""
    server = serve()
    manifest, out = write_manifest(3), tmp_path / "out"
    assert cli_run(manifest, out, server).returncode == 0
    original = {p.name: p.read_bytes() for p in out.glob("*.png")}
    (out / "job-000.png").unlink()
    (out / "job-001.png").write_bytes(b"junk")
    records = {r["job_id"]: r for r in export_records(out)}
    assert records["job-000"]["outputs"] == [] and records["job-000"]["missing_outputs"]
    result = cli_run(manifest, out, server)
    assert result.returncode == 0, result.stderr
    assert "1 missing and 1 changed files" in result.stderr and "2 fetched again" in result.stderr
    assert {p.name: p.read_bytes() for p in out.glob("*.png")} == original
    assert server.simulator.stats()["creates"] == 3


def test_a_missing_file_whose_run_expired_is_reported_not_paid_for(write_manifest, tmp_path, serve):
    """When the run's URLs no longer work, the job fails as 'missing' with the command that makes it again."""
    server = serve()
    manifest, out = write_manifest(2), tmp_path / "out"
    assert cli_run(manifest, out, server).returncode == 0
    (out / "job-000.png").unlink()
    server.simulator.config.output_ttl = 0.0  # from now on every link the server hands out has expired
    result = cli_run(manifest, out, server)
    assert result.returncode == 1, result.stderr
    status = json.loads(batchgen_cli("status", "--output", str(out), "--json").stdout)
    assert status["jobs"]["failed"] == 1
    assert "retry --missing" in json.dumps(status)
    assert server.simulator.stats()["creates"] == 2


# -- possible double charges are creates on the wire, nothing else ----------------------------------


def test_a_kill_while_rate_limited_counts_no_possible_double_charge(write_manifest, tmp_path, serve):
    """While every create waits out a long 429 none is on the wire: a SIGKILL then leaves no 'unknown' create."""
    server = serve(create_rate=0.001)  # one create gets through; the others are refused for a long while
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "batchgen", "run", str(write_manifest(20)), "--output", str(out), "--no-progress"]
        + ["--concurrency", "16"],
        env={**os.environ, **env_for(server)},
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: server.simulator.stats()["rate_limited_creates"] >= 1, timeout=60, what="a refusal")
        # Every create was refused and answered: none may stay recorded as on the wire during the pause.
        wait_until(lambda: attempts_creating(out) == 0, timeout=30, what="the refused attempts to be forgotten")
    finally:
        proc.kill()
        proc.wait(timeout=30)
    status = json.loads(batchgen_cli("status", "--output", str(out), "--json").stdout)
    assert status["attempts"] == {"running": 1}, status
    assert server.simulator.stats()["creates"] == 1


def attempts_creating(out: Path) -> int:
    with closing(sqlite3.connect(f"file:{out / 'batchgen.sqlite'}?mode=ro", uri=True)) as db:
        return int(db.execute("SELECT count(*) FROM attempts WHERE status = 'creating'").fetchone()[0])
