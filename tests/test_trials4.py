"""What a demanding newcomer and an independent server found: each test is one finding, against the real runner."""

from __future__ import annotations

import dataclasses
import hashlib
import subprocess
import sys

import anyio
import pytest

from batchgen import BatchConfig, ExitCode, run_batch_async
from batchgen.events import Events
from batchgen.simulator import SimConfig, Simulator

from .conftest import API_KEY, BASE_URL, batchgen_cli, cli_environment


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.anyio
async def test_two_creates_answered_with_one_run_id_both_finish(write_manifest, tmp_path):
    """A server that deduplicates identical requests answers two creates (--no-reuse) with one run id: both jobs
    get the run's image, the batch ends instead of waiting forever on the second, and nothing is paid twice."""
    jobs = [{"id": "first", "prompt": "the same lamp"}, {"id": "second", "prompt": "the same lamp"}]
    sim = Simulator(SimConfig(latency=0.05, dedupe_creates=True))
    config = BatchConfig(
        write_manifest(jobs=jobs), output_dir=tmp_path / "out", api_key=API_KEY, base_url=BASE_URL, progress="none",
        backoff_base=0.01, transport=sim.transport(), reuse=False,
    )  # fmt: skip
    with anyio.fail_after(30):
        result = await run_batch_async(config)
    assert result.exit_code == ExitCode.OK, result.message
    stats = sim.stats()
    assert stats["creates"] == 1 and stats["deduplicated"] == 1, stats
    (made,) = stats["runs"]
    (sha,) = {f["sha256"] for f in made["files"]}
    assert _sha256(tmp_path / "out" / "first.png") == sha == _sha256(tmp_path / "out" / "second.png")


@pytest.mark.anyio
async def test_an_api_that_moves_after_its_creates_is_not_said_to_have_created_nothing(write_manifest, tmp_path):
    """The API answers creates, then redirects every poll: exit 2, and the message says the runs made are recorded
    for the next run (not 'nothing was created there', not 'stopped by the account'); the next run, at the right
    address, collects them without a new create."""
    sim = Simulator(SimConfig(latency=3.0))  # still running when the API moves
    events, stopped, created, both_created = Events(), [], [], anyio.Event()
    events.listen(lambda event: stopped.append(event.fields), ["stopped"])

    def on_created(event) -> None:
        created.append(event)
        if len(created) == 2:
            both_created.set()

    events.listen(on_created, ["created"])
    config = BatchConfig(
        write_manifest(2), output_dir=tmp_path / "out", api_key=API_KEY, base_url=BASE_URL, progress="none",
        backoff_base=0.01, transport=sim.transport(), events=events,
    )  # fmt: skip
    async with anyio.create_task_group() as tg:
        results = []
        tg.start_soon(lambda: _into(results, run_batch_async(config)))
        with anyio.fail_after(60):
            await both_created.wait()
        sim.update_config({"moved_to": "http://elsewhere.runbase.test/api/v1"})
    (result,) = results
    assert result.exit_code == ExitCode.USAGE, result.message
    assert "the 2 runs created before it are recorded" in result.message.lower(), result.message
    assert "nothing was created" not in result.message.lower(), result.message
    assert [s["reason"] for s in stopped] == ["wrong API address"], stopped
    sim.update_config({"moved_to": None})
    again = await run_batch_async(dataclasses.replace(config, events=None))
    assert again.exit_code == ExitCode.OK, again.message
    assert sim.stats()["creates"] == 2


async def _into(results: list, coroutine) -> None:
    results.append(await coroutine)


def test_relative_output_urls_are_fetched_from_the_api_host_without_the_key(write_manifest, run, tmp_path):
    """A run whose output URLs are paths (/files/...) has them resolved against the API's URL: the images are
    saved, byte for byte what the server sent, and the file requests carry no key."""
    sim = Simulator(SimConfig(latency=0.05, relative_output_urls=True))
    result = run(write_manifest(2), sim)
    assert result.exit_code == ExitCode.OK, result.message
    stats = sim.stats()
    assert stats["creates"] == 2 and stats["auth_on_files"] == 0, stats
    served = {f["sha256"] for r in stats["runs"] for f in r["files"]}
    assert {_sha256(p) for p in (tmp_path / "out").glob("*.png")} == served and len(served) == 2


def test_status_and_export_survive_a_locale_that_cannot_show_the_text(tmp_path):
    """Under an ASCII locale (PYTHONIOENCODING=ascii), `status` escapes what it cannot show instead of a
    traceback, and `export` still writes the prompts as UTF-8 (it is data for a file)."""
    manifest = tmp_path / "m.csv"
    manifest.write_text("id,prompt\ncafe,Café “quoted” — ünïcode\n", encoding="utf-8")
    out = tmp_path / "out"
    ran = batchgen_cli("run", str(manifest), "--simulate", "--output", str(out), "--no-progress")
    assert ran.returncode == ExitCode.OK, ran.stderr
    ascii_env = {"PYTHONIOENCODING": "ascii"}
    status = batchgen_cli("status", "--output", str(out), env=ascii_env)
    assert status.returncode == 0 and "Traceback" not in status.stderr, status.stderr
    assert "jobs:" in status.stdout
    for fmt in ("csv", "jsonl"):
        exported = subprocess.run(
            [sys.executable, "-m", "batchgen", "export", "--output", str(out), "--format", fmt],
            capture_output=True, env=cli_environment(ascii_env), timeout=60,
        )  # fmt: skip
        assert exported.returncode == 0 and b"Traceback" not in exported.stderr, exported.stderr
        text = exported.stdout.decode("utf-8")
        assert "Café “quoted” — ünïcode" in text, text


@pytest.mark.parametrize("status", [303, 302])
def test_a_create_redirected_to_its_run_is_polled_there_not_paid_again(write_manifest, run, tmp_path, status):
    """A create answered 303 See Other (or 302, as many servers send) with the new run's URL under the API's
    own runs URL (the POST/redirect/GET pattern): the run is taken as made and polled, one create per job,
    every image saved; before, the batch stopped with exit 2 saying nothing was created, with a run paid for
    each time it was started."""
    sim = Simulator(SimConfig(latency=0.05, create_redirect_to_run=status))
    result = run(write_manifest(3), sim)
    assert result.exit_code == ExitCode.OK, result.message
    stats = sim.stats()
    assert stats["creates"] == 3 and result.unknown_creates_total == 0, stats
    served = {f["sha256"] for r in stats["runs"] for f in r["files"]}
    assert {_sha256(p) for p in (tmp_path / "out").glob("*.png")} == served and len(served) == 3


def test_a_create_redirected_with_307_or_elsewhere_is_still_never_followed(write_manifest, run):
    """307 to a run's URL (send the POST again there) and a 308 to another host are not runs made: exit 2 with
    the redirect named, and no second create."""
    for config in (SimConfig(create_redirect_to_run=307), SimConfig(moved_to="http://elsewhere.test/api/v1")):
        sim = Simulator(config)
        result = run(write_manifest(2), sim)
        assert result.exit_code == ExitCode.USAGE and "never follows an API redirect" in result.message
        assert sim.stats()["creates"] <= 1


@pytest.mark.parametrize("how", ["option", "environment"])
def test_a_base_url_holding_a_password_is_refused_without_showing_it(write_manifest, tmp_path, how):
    """A base URL with user:password@ (on the command line or in RUNBASE_BASE_URL) exits 2 at once with one line
    that gives the URL without them, never the password; before, aiohttp refused it deep in the batch and the
    CLI died with a traceback."""
    url = "http://someone:hunter2-pass@127.0.0.1:9/api/v1"
    option = ["--base-url", url] if how == "option" else []
    env = {"RUNBASE_API_KEY": API_KEY, **({"RUNBASE_BASE_URL": url} if how == "environment" else {})}
    out = tmp_path / "out"
    ran = batchgen_cli("run", str(write_manifest(1)), "--output", str(out), *option, env=env)
    assert ran.returncode == ExitCode.USAGE, ran.stderr
    assert "Traceback" not in ran.stderr and "hunter2" not in ran.stderr, ran.stderr
    assert "give it as http://127.0.0.1:9/api/v1" in ran.stderr, ran.stderr
    assert not out.exists()


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("http://127.0.0.1:99999/api/v1", "Port out of range"),
        ("http://127.0.0.1:abc/api/v1", "Port could not be cast"),
        ("http://[::1/api/v1", "Invalid IPv6 URL"),
        ("http://exa mple.local/api/v1", "must be an http(s) URL"),
    ],
)
def test_a_malformed_base_url_is_one_line_and_exit_2(write_manifest, tmp_path, url, said):
    """A base URL with a port out of range or not a number, a broken IPv6 address or a space in the host exits 2
    with one line naming it, before anything is made; before, the first three died with a traceback (exit 1)
    and the last tried to resolve the name."""
    out = tmp_path / "out"
    ran = batchgen_cli(
        "run", str(write_manifest(1)), "--output", str(out), "--base-url", url, env={"RUNBASE_API_KEY": API_KEY}
    )
    assert ran.returncode == ExitCode.USAGE and "Traceback" not in ran.stderr, ran.stderr
    assert said in ran.stderr and repr(url) in ran.stderr, ran.stderr
    assert not out.exists()


def test_retry_of_one_unknown_id_says_it_in_the_singular(write_manifest, tmp_path):
    """`retry --ids nope` on a batch: '1 of the 1 id given is not a job of the current manifest', exit 2, never
    '1 of the 1 id(s) given are not jobs'; two unknown of three say it in the plural."""
    out = tmp_path / "out"
    assert batchgen_cli("run", str(write_manifest(2)), "--simulate", "--output", str(out)).returncode == 0
    one = batchgen_cli("retry", "--ids", "nope", "--output", str(out))
    assert one.returncode == ExitCode.USAGE, one.stderr
    assert "1 of the 1 id given is not a job of the current manifest" in one.stderr, one.stderr
    two = batchgen_cli("retry", "--ids", "nope,job-000,nada", "--output", str(out))
    assert "2 of the 3 ids given are not jobs of the current manifest" in two.stderr, two.stderr


@pytest.mark.parametrize(
    "words",
    [
        ["run", "{manifest}", "--simulate", "--output", ""],
        ["run", "", "--simulate"],
        ["status", "--output", ""],
        ["report", "--output", ""],
        ["retry", "--failed", "--output", "", "--ids-from", ""],
    ],
    ids=["run --output ''", "run ''", "status --output ''", "report --output ''", "retry --ids-from ''"],
)
def test_an_empty_path_is_refused_not_taken_for_the_current_folder(write_manifest, tmp_path, words):
    """`--output "$OUT"` with OUT unset in a cron script: an empty path meant the current folder, so a night's
    images, ledger and report landed wherever cron started. It is refused (exit 2) naming the argument, and
    nothing is written where the command ran."""
    manifest = write_manifest(2)
    cwd = tmp_path / "cron-home"
    cwd.mkdir()
    result = batchgen_cli(*(w.format(manifest=manifest) for w in words), cwd=cwd)
    assert result.returncode == ExitCode.USAGE, result.stderr
    assert "the path is empty (an unset variable in a script?)" in result.stderr
    assert list(cwd.iterdir()) == []
