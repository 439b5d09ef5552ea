"""The real CLI in a subprocess, as a user runs it: exit codes, messages, and what reaches the API.

Runs go to a ``SimulatorServer`` in this process (real sockets, a free port) through
``RUNBASE_BASE_URL``, so the server's records (runs, files served, requests counted) are
the ground truth for what the CLI printed and saved.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import select
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from batchgen.manifest import load_jobs
from batchgen.simulator import SimConfig, Simulator, SimulatorServer

from .conftest import (
    API_KEY,
    REPO,
    batchgen_cli,
    env_for,
    export_records,
    killed_at_end,
    start_cli,
    wait_while_running,
)
from .served import assert_saved_as_served, simulated_stats

EXAMPLE = REPO / "manifests" / "example.yaml"
BAD_MANIFESTS = sorted(p for p in (REPO / "tests" / "bad_manifests").iterdir() if p.suffix != ".md")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def origin(server: SimulatorServer) -> str:
    return server.base_url.removesuffix("/api/v1")


def requests_seen(server: SimulatorServer) -> int:
    stats = server.simulator.stats()
    return stats["create_requests"] + stats["gets"] + stats["downloads"]


def no_traceback(result: subprocess.CompletedProcess[str]) -> bool:
    return "Traceback" not in result.stdout + result.stderr


def assert_exit(result: subprocess.CompletedProcess[str], code: int) -> None:
    """The command exited with ``code`` and printed no traceback."""
    assert result.returncode == code, result.stdout + result.stderr
    assert no_traceback(result)


def pngs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.png"))


def sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def run_cli(manifest: Path, out: Path, *extra: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return batchgen_cli("run", str(manifest), "--output", str(out), "--no-progress", *extra, **kwargs)


def write_jobs(path: Path, prompts: list[str]) -> Path:
    path.write_text("jobs:\n" + "".join(f"  - prompt: {p}\n" for p in prompts), encoding="utf-8")
    return path


# -- run ----------------------------------------------------------------------------------


def test_run_example_with_simulate(tmp_path):
    """`run manifests/example.yaml --simulate` from any folder: exit 0, one valid PNG per job in --output."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "out"
    result = batchgen_cli("run", str(EXAMPLE), "--simulate", "--output", str(out), cwd=elsewhere)
    assert_exit(result, 0)
    assert "all jobs succeeded" in result.stderr
    expected = sorted(f"{job.job_id}.png" for job in load_jobs(EXAMPLE))
    assert len(expected) == 8
    assert pngs(out) == expected
    assert all((out / name).read_bytes().startswith(PNG_SIGNATURE) for name in expected)
    assert_saved_as_served(out, simulated_stats([r["run_id"] for r in export_records(out)]), succeeded=8)
    assert not list(elsewhere.iterdir())  # nothing written to the working directory


def test_run_without_key_exits_4_and_sends_nothing(tmp_path, serve):
    """Without RUNBASE_API_KEY: exit 4, stderr names RUNBASE_API_KEY, no request reaches the API."""
    server = serve()
    manifest = write_jobs(tmp_path / "m.yaml", ["a lamp"])
    result = run_cli(manifest, tmp_path / "out", env=env_for(server, key=None))
    assert_exit(result, 4)
    assert "RUNBASE_API_KEY" in result.stderr
    assert requests_seen(server) == 0


def test_wrong_key_exits_4_and_is_never_printed(tmp_path, serve):
    """A key the API refuses: exit 4 after one create request; the key is in no output and no file."""
    server = serve(api_key="the-one-right-key")
    manifest = write_jobs(tmp_path / "m.yaml", [f"item {i}" for i in range(10)])
    out = tmp_path / "out"
    result = run_cli(manifest, out, "--concurrency", "8", env=env_for(server))
    assert_exit(result, 4)
    assert API_KEY not in result.stdout + result.stderr
    assert "RUNBASE_API_KEY" in result.stderr
    stats = server.simulator.stats()
    assert stats["create_requests"] == 1 and stats["unauthorized"] == 1 and stats["creates"] == 0
    for path in out.rglob("*"):
        if path.is_file():
            assert API_KEY.encode() not in path.read_bytes(), path


def test_an_api_that_moved_stops_the_batch_naming_its_new_address(tmp_path, serve):
    """The API answers 308 to another address: batchgen does not follow it (the key would go along).
    Exit 2 with the new address and RUNBASE_BASE_URL named, no request reaches the new host, no job
    is failed; run again at the new address and every job is made once."""
    new = serve()
    old = serve(moved_to=new.base_url)
    manifest = write_jobs(tmp_path / "m.yaml", [f"item {i}" for i in range(6)])
    out = tmp_path / "out"
    result = run_cli(manifest, out, "--concurrency", "2", env=env_for(old))
    assert_exit(result, 2)
    assert f"redirects to {new.base_url}/runs" in result.stderr
    assert "RUNBASE_BASE_URL" in result.stderr and "6 jobs wait" in result.stderr
    assert 1 <= old.simulator.stats()["moved"] <= 2
    assert requests_seen(new) == 0
    assert all(record["state"] == "pending" for record in export_records(out))
    again = run_cli(manifest, out, env=env_for(new))
    assert again.returncode == 0, again.stderr
    assert_saved_as_served(out, new.simulator.stats(), succeeded=6)


def test_a_base_url_without_the_api_stops_at_the_first_create(tmp_path, serve):
    """A base URL missing its /api/v1: the first create is answered 404. The batch stops, no job failed, exit 2
    naming RUNBASE_BASE_URL; with the address fixed, the same command finishes the batch."""
    server = serve()
    manifest = write_jobs(tmp_path / "m.yaml", [f"item {i}" for i in range(5)])
    out = tmp_path / "out"
    wrong = {**env_for(server), "RUNBASE_BASE_URL": origin(server)}
    result = run_cli(manifest, out, "--concurrency", "4", env=wrong)
    assert_exit(result, 2)
    assert "does not take creates: the base URL is wrong" in result.stderr and "RUNBASE_BASE_URL" in result.stderr
    assert requests_seen(server) == 0  # the one create went to a path the API does not serve
    assert all(record["state"] == "pending" for record in export_records(out))
    again = run_cli(manifest, out, env=env_for(server))
    assert_exit(again, 0)
    assert_saved_as_served(out, server.simulator.stats(), succeeded=5)


def test_output_folder_that_is_a_file_exits_5(tmp_path, serve):
    """--output naming a regular file, or a folder below one: exit 5 with a message naming the file, no traceback,
    nothing sent."""
    server = serve()
    not_a_folder = tmp_path / "out"
    not_a_folder.write_text("I am a file\n", encoding="utf-8")
    result = run_cli(EXAMPLE, not_a_folder, env=env_for(server))
    assert_exit(result, 5)
    assert str(not_a_folder) in result.stderr
    below = run_cli(EXAMPLE, not_a_folder / "images", env=env_for(server))  # a file on the way to the folder
    assert_exit(below, 5)
    assert f"{not_a_folder} is a file, not a folder" in below.stderr
    assert requests_seen(server) == 0


@pytest.mark.parametrize(
    "option",
    [
        ["--concurrency", "0"],
        ["--concurrency", "-2"],
        ["--concurrency", "many"],
        ["--rate", "abc"],
        ["--rate", "0"],
        ["--rate", "nan"],
        ["--rate", "inf"],
        ["--max-attempts", "0"],
        ["--timeout", "-1"],
    ],
    ids=" ".join,
)
def test_invalid_option_values_exit_2(tmp_path, serve, option):
    """An invalid option value: exit 2, the option named, no traceback, nothing created or sent."""
    server = serve()
    out = tmp_path / "out"
    result = run_cli(EXAMPLE, out, *option, env=env_for(server))
    assert_exit(result, 2)
    assert option[0] in result.stderr
    assert not out.exists()
    assert requests_seen(server) == 0


# -- validate and bad manifests --------------------------------------------------------------


def test_validate_example_prints_the_count():
    """`validate manifests/example.yaml`: exit 0 and the number of jobs on stdout."""
    result = batchgen_cli("validate", str(EXAMPLE))
    assert result.returncode == 0, result.stderr
    assert "8 jobs" in result.stdout and "valid" in result.stdout


def test_bad_manifests_are_there():
    """The bad-manifest corpus is found (guards against the parametrized test silently running nothing)."""
    assert len(BAD_MANIFESTS) >= 20


@pytest.mark.parametrize("manifest", BAD_MANIFESTS, ids=lambda p: p.name)
def test_bad_manifest_is_refused_by_validate_and_run(tmp_path, serve, manifest):
    """Each bad manifest: validate and run exit 2, name the file, no traceback, zero requests to the API."""
    server = serve()
    out = tmp_path / "out"
    with ThreadPoolExecutor(2) as pool:  # the two commands are independent: run them side by side
        validating = pool.submit(batchgen_cli, "validate", str(manifest))
        running = pool.submit(run_cli, manifest, out, env=env_for(server))
        checked, result = validating.result(), running.result()

    assert_exit(checked, 2)
    assert manifest.name in checked.stderr

    assert_exit(result, 2)
    assert manifest.name in result.stderr
    assert "nothing was sent" in result.stderr
    assert requests_seen(server) == 0
    assert not out.exists()  # no folder, no ledger: nothing to clean up


@pytest.mark.parametrize("url", ["ftp://example.com/api/v1", "not a url", "http://"])
def test_unusable_base_url_is_a_usage_error(tmp_path, url):
    """--base-url that is not an http(s) URL: exit 2 like any invalid option value, before any file is made."""
    out = tmp_path / "out"
    result = batchgen_cli(
        "run",
        str(EXAMPLE),
        "--output",
        str(out),
        "--base-url",
        url,
        "--no-progress",
        env={"RUNBASE_API_KEY": API_KEY},
    )
    assert_exit(result, 2)
    assert "http(s) URL" in result.stderr
    assert not out.exists()


# -- status and export ----------------------------------------------------------------------


def test_status_and_export_agree_with_the_server(tmp_path, serve):
    """After a run, status and export (jsonl and csv) match the server: same run ids, same file sha256."""
    server = serve()
    out = tmp_path / "out"
    result = run_cli(EXAMPLE, out, "--concurrency", "3", env=env_for(server))
    assert result.returncode == 0, result.stderr
    jobs = load_jobs(EXAMPLE)
    stats = server.simulator.stats()
    server_runs = {r["id"]: r for r in stats["runs"]}
    assert len(server_runs) == len(jobs)
    assert stats["max_in_flight"] <= 3 and stats["auth_on_files"] == 0

    report = batchgen_cli("status", "--output", "out", "--json", cwd=tmp_path)  # relative to the cwd
    assert report.returncode == 0, report.stderr
    status = json.loads(report.stdout)
    assert status["jobs"] == {"pending": 0, "running": 0, "succeeded": len(jobs), "failed": 0}
    assert status["attempts"] == {"succeeded": len(jobs)}
    assert status["last_session"]["outcome"] == "done"
    text = batchgen_cli("status", "--output", str(out))
    assert text.returncode == 0, text.stderr
    assert f"{len(jobs)} succeeded" in text.stdout and "possible double charges: 0" in text.stdout

    records = export_records(out)
    assert [r["job_id"] for r in records] == [job.job_id for job in jobs]
    assert {r["run_id"] for r in records} == set(server_runs)
    for record in records:
        run = server_runs[record["run_id"]]
        assert record["state"] == "succeeded" and record["error"] is None
        assert record["attempts"] == 1 and record["unknown_creates"] == 0
        assert run["prompt"] == record["input"]["prompt"]
        (path,) = record["outputs"]
        assert Path(path).is_absolute() and Path(path).parent == out
        assert record["sha256"] == [sha256(path)] == [f["sha256"] for f in run["files"]]
    by_id = {r["job_id"]: r for r in records}
    assert by_id["lamp-ceramic-01"]["metadata"] == {
        "catalogue": "spring-2025",
        "sku": "LMP-0101",
        "category": "lighting",
    }

    exported = batchgen_cli("export", "--output", str(out), "--format", "csv")
    assert exported.returncode == 0, exported.stderr
    rows = list(csv.DictReader(io.StringIO(exported.stdout)))
    assert [row["job_id"] for row in rows] == [r["job_id"] for r in records]
    for row in rows:
        record = by_id[row["job_id"]]
        assert row["state"] == "succeeded"
        assert row["run_id"] == record["run_id"]
        assert row["outputs"] == record["outputs"][0]
        assert sha256(row["outputs"]) == server_runs[row["run_id"]]["files"][0]["sha256"]
        assert row["prompt"] == record["input"]["prompt"]
        assert row["sku"] == record["metadata"]["sku"]


@pytest.mark.parametrize(
    "command", [["status"], ["status", "--json"], ["export"], ["export", "--format", "csv"]], ids=" ".join
)
def test_status_and_export_without_a_ledger(tmp_path, command):
    """status/export where no batch ran: non-zero, a message saying there is no ledger, nothing created."""
    missing = tmp_path / "never-ran"
    result = batchgen_cli(*command, "--output", str(missing))
    assert result.returncode != 0
    assert "no ledger" in result.stderr and "batchgen run" in result.stderr
    assert no_traceback(result)
    assert result.stdout == ""
    assert not missing.exists()


# -- two runners, and the account stopping a batch ------------------------------------------------


class HeldCreates:
    """The simulator, with every create answer held back until the test lets them go."""

    def __init__(self, simulator: Simulator) -> None:
        self.simulator = simulator
        self.held = 0
        self.release = threading.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or (scope["method"], scope["path"]) != ("POST", "/api/v1/runs"):
            return await self.simulator(scope, receive, send)

        async def held_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                self.held += 1
                await anyio.to_thread.run_sync(self.release.wait, 60)  # bounded: a failing test cannot hang it
                self.held -= 1
            await send(message)

        await self.simulator(scope, receive, held_send)


def test_second_runner_on_the_same_folder_exits_at_once(tmp_path):
    """While one run works on a folder, a second exits 5 at once naming it (status still reads); the first ends 0."""
    app = HeldCreates(Simulator(SimConfig(latency=0.05)))
    manifest = write_jobs(tmp_path / "m.yaml", [f"held item {i}" for i in range(4)])
    out = tmp_path / "out"
    with SimulatorServer(app, startup_timeout=10) as server:  # type: ignore[arg-type]
        first = start_cli("run", str(manifest), "--output", str(out), "--no-progress", env=env_for(server))
        with killed_at_end(first):
            try:
                # The first holds the folder and waits for its first create's answer, which the server
                # holds until the second has come and gone: the second cannot have waited for the first.
                wait_while_running(first, lambda: app.held > 0, 30, "the first run's first create")
                second = run_cli(manifest, out, env=env_for(server), timeout=30)
                watching = batchgen_cli("status", "--output", str(out), "--json")  # reading is fine meanwhile
                assert first.poll() is None and app.held > 0
                app.release.set()
                _, first_err = first.communicate(timeout=60)
            finally:
                app.release.set()
        stats = app.simulator.stats()
    assert_exit(second, 5)
    assert "another batchgen run" in second.stderr
    assert watching.returncode == 0, watching.stderr
    assert json.loads(watching.stdout)["jobs"]["pending"] + json.loads(watching.stdout)["jobs"]["running"] == 4
    assert first.returncode == 0, first_err
    assert stats["creates"] == 4 and stats["creates_per_prompt_max"] == 1
    assert_saved_as_served(out, stats, succeeded=4)


def test_out_of_credits_mid_batch_then_resume(tmp_path, serve):
    """402 mid-batch: paid runs collected, exit 3 saying what to do; after a top-up, rerun → 0, none paid twice."""
    server = serve(credits=5)
    manifest = write_jobs(tmp_path / "m.yaml", [f"catalogue item {i}" for i in range(12)])
    out = tmp_path / "out"
    first = run_cli(manifest, out, "--concurrency", "4", env=env_for(server))
    assert_exit(first, 3)
    assert "credits" in first.stderr.lower()
    assert "run the same command again" in first.stderr
    assert "Runs already created were collected" in first.stderr
    status = json.loads(batchgen_cli("status", "--output", str(out), "--json").stdout)
    assert status["last_session"]["outcome"] == "stopped by the account"
    # Every run paid for was downloaded before the exit, the last one in flight included.
    assert server.simulator.stats()["creates"] == 5
    assert_saved_as_served(out, server.simulator.stats(), succeeded=5)
    assert status["jobs"] == {"pending": 7, "running": 0, "succeeded": 5, "failed": 0}

    topped_up = httpx.post(origin(server) + "/_sim/credits", json={"add": 100}, timeout=10)
    assert topped_up.status_code == 200
    second = run_cli(manifest, out, "--concurrency", "4", env=env_for(server))
    assert second.returncode == 0, second.stderr
    stats = server.simulator.stats()
    assert stats["creates"] == 12 and stats["creates_per_prompt_max"] == 1
    assert_saved_as_served(out, stats, succeeded=12)
    assert {r["run_id"] for r in export_records(out)} == {r["id"] for r in stats["runs"]}


def test_failed_jobs_exit_1_then_retry_failed_finishes(tmp_path, serve):
    """Runs that keep failing: exit 1 pointing at `batchgen retry --failed`, export says why; --retry-failed exits 0."""
    server = serve(failure_rate=1.0)
    manifest = write_jobs(tmp_path / "m.yaml", [f"fragile item {i}" for i in range(3)])
    out = tmp_path / "out"
    first = run_cli(manifest, out, "--max-attempts", "2", env=env_for(server))
    assert_exit(first, 1)
    assert "batchgen retry --failed" in first.stderr
    records = export_records(out)
    assert [r["state"] for r in records] == ["failed"] * 3
    assert all(r["attempts"] == 2 and "generation failed" in r["error"] and not r["outputs"] for r in records)
    assert server.simulator.stats()["creates"] == 6

    again = run_cli(manifest, out, env=env_for(server))  # failed for good: not retried without the flag
    assert again.returncode == 1, again.stderr
    assert server.simulator.stats()["creates"] == 6

    fixed = httpx.post(origin(server) + "/_sim/config", json={"failure_rate": 0.0}, timeout=10)
    assert fixed.status_code == 200
    retried = run_cli(manifest, out, "--retry-failed", env=env_for(server))
    assert retried.returncode == 0, retried.stderr
    assert [r["state"] for r in export_records(out)] == ["succeeded"] * 3
    assert server.simulator.stats()["creates"] == 9
    assert_saved_as_served(out, server.simulator.stats(), succeeded=3)


# -- batchgen simulate ----------------------------------------------------------------------------


def test_simulate_command_serves_a_simulator_that_run_can_use(tmp_path):
    """`batchgen simulate --port 0` prints a base URL that `batchgen run` works against; Ctrl-C stops it with 0."""
    sim = subprocess.Popen(
        [sys.executable, "-m", "batchgen", "simulate", "--port", "0", "--latency", "0.05"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ready, _, _ = select.select([sim.stdout], [], [], 15)
        assert ready, "the simulator printed nothing within 15 s"
        banner = sim.stdout.readline()
        base_url = next(word for word in banner.split() if word.startswith("http://"))
        assert base_url.endswith("/api/v1"), banner
        result = batchgen_cli(
            "run",
            str(EXAMPLE),
            "--output",
            str(tmp_path / "out"),
            "--no-progress",
            env={"RUNBASE_BASE_URL": base_url, "RUNBASE_API_KEY": API_KEY},
        )
        assert result.returncode == 0, result.stderr
        stats = httpx.get(base_url.removesuffix("/api/v1") + "/_sim/stats", timeout=10).json()
        assert stats["creates"] == 8 and stats["auth_on_files"] == 0
        assert_saved_as_served(tmp_path / "out", stats, succeeded=8)
        sim.send_signal(signal.SIGINT)
        _, err = sim.communicate(timeout=10)
        assert sim.returncode == 0, err
        assert "Traceback" not in err
    finally:
        if sim.poll() is None:
            sim.kill()
            sim.communicate(timeout=10)
