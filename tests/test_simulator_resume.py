"""Runs answerable by any simulator process with the same seed: a run's outcome, timing, links
and image bytes follow from its id, so a batch interrupted under ``--simulate`` resumes exactly
as it would against the real service."""

from __future__ import annotations

import base64
import hashlib
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import httpx
import pytest

from batchgen import BatchConfig, ExitCode, run_batch_async
from batchgen.simulator import SimConfig, Simulator

from .conftest import API_KEY, BASE_URL, REPO, export_records
from .simkit import FakeClock, api_client, create, files_client, make

RUN_CONFIG = {"latency": 1.0, "latency_sigma": 0.5, "failure_rate": 0.4, "outputs_per_run": "1-3", "seed": 9}


@pytest.fixture
def anyio_backend():
    return "asyncio"


def without_input(view: dict) -> dict:
    return {k: v for k, v in view.items() if k != "input"}


@pytest.mark.anyio
async def test_a_fresh_simulator_answers_for_runs_another_created():
    """A second simulator (same seed, even another config) gives every run's status, links and bytes as the first."""
    clock = FakeClock()
    first, _ = make(clock, **RUN_CONFIG)
    async with api_client(first) as client:
        ids = [(await create(client, f"p{i}")).json()["id"] for i in range(12)]
    clock.advance(0.05)
    second, _ = make(clock, **{**RUN_CONFIG, "latency": 50.0, "failure_rate": 0.0})  # a new process, new settings
    seen = set()
    async with api_client(first) as a, api_client(second) as b, files_client(first) as fa, files_client(second) as fb:
        for _ in range(12):
            for run_id in ids:
                one, two = (await a.get(f"/runs/{run_id}")).json(), (await b.get(f"/runs/{run_id}")).json()
                assert without_input(one) == without_input(two) and "input" not in two
                seen.add(one["status"])
                for url in one.get("output", {}).get("urls", []):
                    assert (await fa.get(url)).content == (await fb.get(url)).content
            clock.advance(0.5)
    assert seen == {"queued", "running", "succeeded", "failed"}
    stats = second.stats()
    assert stats["creates"] == 0 and stats["adopted"] == len(ids)
    assert {r["id"] for r in stats["runs"]} == set(ids) and not any(r["created_here"] for r in stats["runs"])
    served = {f["sha256"] for run in first.stats()["runs"] for f in run["files"]}
    assert served == {f["sha256"] for run in stats["runs"] for f in run["files"]} and served


def edited(run_id: str) -> str:
    """The id with one bit of its sealed facts flipped (its generation time) and its seal kept."""
    raw = bytearray(base64.b32decode(run_id.removeprefix("run_").upper() + "======"))
    raw[8] ^= 1
    return "run_" + base64.b32encode(bytes(raw)).decode().rstrip("=").lower()


async def made_and_linked(client: httpx.AsyncClient, clock: FakeClock, seconds: float) -> tuple[str, str]:
    """Create a run, let ``seconds`` pass, and return its id and its first output link."""
    run_id = (await create(client)).json()["id"]
    clock.advance(seconds)
    return run_id, (await client.get(f"/runs/{run_id}")).json()["output"]["urls"][0]


@pytest.mark.anyio
async def test_forged_and_foreign_ids_are_unknown():
    """An id with a character changed or its facts edited, or made under another seed, is an unknown run (404)."""
    first, clock = make(seed=1)
    async with api_client(first) as client, files_client(first) as files:
        run_id, url = await made_and_linked(client, clock, 5)
        tampered = run_id[:-1] + ("a" if run_id[-1] != "a" else "b")
        assert (await client.get(f"/runs/{tampered}")).status_code == 404
        assert (await files.get(url.replace(run_id, tampered))).status_code == 404
        assert (await client.get("/runs/run_" + "a" * 50)).status_code == 404
        assert (await client.get(f"/runs/{edited(run_id)}")).status_code == 404
    other, _ = make(clock, seed=2)  # another process, under another seed
    async with api_client(other) as client, files_client(other) as files:
        assert (await client.get(f"/runs/{run_id}")).status_code == 404
        assert (await files.get(url)).status_code == 404
    assert other.stats()["adopted"] == 0


@pytest.mark.anyio
async def test_output_links_expire_on_the_wall_clock_in_any_process():
    """A link minted by one process is valid in another until output_ttl after it was minted, then 403."""
    first, clock = make(output_ttl=5.0)
    second, _ = make(clock, output_ttl=5.0)
    async with api_client(first) as client, files_client(second) as files:
        _, url = await made_and_linked(client, clock, 1)
        clock.advance(4.5)
        assert (await files.get(url)).status_code == 200
        clock.advance(1)
        expired = await files.get(url)
        assert expired.status_code == 403 and expired.text == "link expired"
        assert (await files.get(url.replace("sig=", "sig=f"))).text == "invalid signature"


@pytest.mark.anyio
async def test_a_new_process_polls_the_runs_an_interrupted_batch_made(write_manifest, run, tmp_path):
    """The real runner, stopped once its runs are made, resumes against a new simulator: no create, no failed run."""
    manifest, out = write_manifest(6), tmp_path / "out"
    first = Simulator(SimConfig(latency=1.0))
    config = BatchConfig(
        manifest, output_dir=out, concurrency=6, api_key=API_KEY, base_url=BASE_URL, progress="none",
        backoff_base=0.01, transport=first.transport(),
    )  # fmt: skip

    def recorded(stats: dict) -> bool:  # every run polled at least once: its id is in the ledger
        return stats["creates"] == 6 and all(r["polls"] > 0 for r in stats["runs"])

    async with anyio.create_task_group() as tg:
        tg.start_soon(run_batch_async, config)
        with anyio.fail_after(60):
            while True:  # the condition is the simulator's: nothing to wait on but time
                if recorded(first.stats()):
                    break
                await anyio.sleep(0.005)
        tg.cancel_scope.cancel()  # the process is gone; its simulator with it
    second = Simulator(SimConfig(latency=1.0))
    result = await anyio.to_thread.run_sync(lambda: run(manifest, second))
    assert result.exit_code == ExitCode.OK, result.message
    assert result.counts == {"pending": 0, "running": 0, "succeeded": 6, "failed": 0}
    stats = second.stats()
    assert stats["creates"] == 0 and stats["create_requests"] == 0
    assert stats["adopted"] == 6 - sum(bool(r["files"]) for r in first.stats()["runs"])
    served = {f["sha256"] for sim in (first, second) for r in sim.stats()["runs"] for f in r["files"]}
    saved = {hashlib.sha256(p.read_bytes()).hexdigest() for p in out.glob("*.png")}
    assert len(saved) == 6 and saved <= served


def test_run_simulate_interrupted_then_run_again_finishes_what_it_started(tmp_path, write_manifest):
    """`run --simulate`, Ctrl-C, the same command again: every job done with its first run, none created twice."""
    manifest, out = write_manifest(24), tmp_path / "out"
    command = [sys.executable, "-m", "batchgen", "run", str(manifest), "--simulate", "--output", str(out)]
    first = subprocess.Popen([*command, "--concurrency", "3", "--no-progress"], cwd=REPO, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not (out / "batchgen.sqlite").exists() or not any(r["run_id"] for r in export_records(out)):
            assert first.poll() is None and time.monotonic() < deadline, "no run was created"
            time.sleep(0.1)
        first.send_signal(signal.SIGINT)
        assert first.wait(30) == 130
    finally:
        if first.poll() is None:
            first.kill()
        first.communicate()
    before = {r["job_id"]: r["run_id"] for r in export_records(out)}
    assert any(before.values()) and not all(r["state"] == "succeeded" for r in export_records(out))
    again = subprocess.run([*command, "--no-progress"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    records = export_records(out)
    assert all(r["state"] == "succeeded" and r["attempts"] == 1 and r["unknown_creates"] == 0 for r in records)
    assert all(r["run_id"] == before[r["job_id"]] for r in records if before[r["job_id"]])
    # The bytes saved are those any simulator with the default seed serves for the run.
    expected = anyio.run(served_by_a_fresh_simulator, [r["run_id"] for r in records])
    for record in records:
        assert record["sha256"] == expected[record["run_id"]]
        assert [hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in record["outputs"]] == record["sha256"]


async def served_by_a_fresh_simulator(run_ids: list[str]) -> dict[str, list[str]]:
    """run id -> the sha256 of each output a new simulator (default config) serves for it."""
    fresh = Simulator(SimConfig())
    out = {}
    async with api_client(fresh) as client, files_client(fresh) as files:
        for run_id in run_ids:
            urls = (await client.get(f"/runs/{run_id}")).json()["output"]["urls"]
            out[run_id] = [hashlib.sha256((await files.get(url)).content).hexdigest() for url in urls]
    return out
