"""Shared fixtures: manifests written to tmp_path, and the real runner against the simulator."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from batchgen import BatchResult, run_batch
from batchgen.simulator import SimConfig, Simulator, SimulatorServer

from .simkit import FakeClock, api_client, create, files_client, finished

API_KEY = "sk-test-0123456789abcdef"  # distinctive, so tests can search files for leaks
BASE_URL = "http://api.runbase.test/api/v1"
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets its own reuse index (subprocesses inherit it), never the user's cache."""
    folder = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("BATCHGEN_CACHE_DIR", str(folder))
    return folder


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def write_manifest(tmp_path: Path) -> Callable[..., Path]:
    """Write a YAML manifest with ``n`` jobs (or the given job dicts) and return its path."""

    def write(n: int = 5, jobs: list[dict[str, Any]] | None = None, name: str = "manifest.yaml", **top: Any) -> Path:
        if jobs is None:
            jobs = [{"id": f"job-{i:03d}", "prompt": f"product photo number {i}"} for i in range(n)]
        path = tmp_path / name
        path.write_text(yaml.safe_dump({**top, "jobs": jobs}, sort_keys=False), encoding="utf-8")
        return path

    return write


@pytest.fixture
def sim() -> Simulator:
    """A simulator with short generations, so batches finish in a fraction of a second."""
    return Simulator(SimConfig(latency=0.05))


@pytest.fixture
def run(tmp_path: Path, sim: Simulator) -> Callable[..., BatchResult]:
    """The real runner against the in-process simulator, with test-sized defaults."""

    def run_against(manifest: Path, simulator: Simulator | None = None, **options: Any) -> BatchResult:
        options.setdefault("output_dir", tmp_path / "out")
        options.setdefault("progress", "none")
        options.setdefault("api_key", API_KEY)
        options.setdefault("base_url", BASE_URL)
        options.setdefault("backoff_base", 0.01)  # retries in milliseconds
        options.setdefault("transport", (simulator or sim).transport())
        return run_batch(manifest, **options)

    return run_against


def cli_environment(env: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without any RUNBASE_ setting, plus ``env``: what the CLI subprocesses get."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("RUNBASE_")}
    full_env.update(env or {})
    return full_env


def batchgen_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 60):
    """Run the real CLI in a subprocess, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "batchgen", *args],
        capture_output=True,
        text=True,
        env=cli_environment(env),
        cwd=cwd,
        timeout=timeout,
    )


def start_cli(*args: str, env: dict[str, str] | None = None, stdout: int = subprocess.PIPE) -> subprocess.Popen[str]:
    """Start the real CLI in a subprocess (environment as batchgen_cli's, stderr piped) without waiting for it."""
    return subprocess.Popen(
        [sys.executable, "-m", "batchgen", *args],
        env=cli_environment(env),
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
    )


@contextmanager
def killed_at_end(process: subprocess.Popen[Any]) -> Iterator[subprocess.Popen[Any]]:
    """The process, killed at the end of the block if it still runs (its pipes closed): a failing test leaves
    nothing behind."""
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
        for pipe in (process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()


def wait_while_running(
    process: subprocess.Popen[Any], condition: Callable[[], bool], timeout: float, what: str
) -> None:
    """Wait for ``condition`` while ``process`` runs; fail with its output if it ends first."""
    wait_until(lambda: condition() or process.poll() is not None, timeout, what)
    assert process.poll() is None, process.communicate()


def bench_command(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``bench/<script>`` with ``args`` from the repository (at most 280 s); it must exit 0."""
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / script), *args], cwd=REPO, capture_output=True, text=True, timeout=280
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def export_records(output_dir: Path) -> list[dict[str, Any]]:
    result = batchgen_cli("export", "--output", str(output_dir))
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


@pytest.fixture
def serve() -> Iterator[Callable[..., SimulatorServer]]:
    """Start simulators over real sockets (free ports); all stopped at the end of the test."""
    with ExitStack() as stack:

        def start(**config: Any) -> SimulatorServer:
            config.setdefault("latency", 0.05)
            return stack.enter_context(SimulatorServer(Simulator(SimConfig(**config)), startup_timeout=10))

        yield start


def env_for(server: SimulatorServer, key: str | None = API_KEY) -> dict[str, str]:
    env = {"RUNBASE_BASE_URL": server.base_url}
    if key is not None:
        env["RUNBASE_API_KEY"] = key
    return env


async def outputs_of_one_run(sim: Simulator, clock: FakeClock) -> list[bytes]:
    """Create one run on ``sim``, let it finish, and fetch each of its outputs as a correct client does."""
    async with api_client(sim) as client, files_client(sim) as files:
        run = await finished(client, clock, (await create(client)).json()["id"])
        return [(await files.get(url)).content for url in run["output"]["urls"]]


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Wait for ``condition`` with a generous deadline (a condition, never a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)
