"""What ``batchgen run`` writes for cron and programs, through the real CLI: timestamped lines off a terminal,
JSON events that parse and never hold the key, --quiet, --log-file, last-run.json, the why-waiting status line,
a terminal reporting 0 columns, and help texts that name the environment and the exit codes."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import pytest

from batchgen.cli import build_parser
from batchgen.exitcodes import EXIT_CODES
from batchgen.ledger import Ledger
from batchgen.progress import LINE_INTERVAL

from .conftest import REPO, batchgen_cli, env_for, killed_at_end, start_cli, wait_while_running

SECRET = "sk-live-Q7zv93TOPSECRETkey0xA1"  # distinctive: searched for in everything written
STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d"
EXAMPLE = REPO / "manifests" / "example.yaml"


def write_jobs(path: Path, prompts: list[str]) -> Path:
    path.write_text("jobs:\n" + "".join(f"  - prompt: {p}\n" for p in prompts), encoding="utf-8")
    return path


def everything_written(out: Path, *texts: str) -> str:
    files = [p for p in out.rglob("*") if p.is_file() and p.suffix in (".json", ".log", ".txt", "")]
    return "\n".join([*texts, *(p.read_text(encoding="utf-8", errors="replace") for p in files)])


def test_lines_off_a_terminal_start_with_an_iso_timestamp(tmp_path, serve):
    """Under cron (stderr not a terminal) every line starts with an ISO timestamp, job failures included."""
    server = serve(refuse_prompts_containing="forbidden")
    manifest = write_jobs(tmp_path / "m.yaml", ["a lamp", "a forbidden lamp", "a chair"])
    result = batchgen_cli("run", str(manifest), "--output", str(tmp_path / "out"), env=env_for(server))
    assert result.returncode == 1, result.stderr
    lines = result.stderr.splitlines()
    assert lines and all(re.match(STAMP + " ", line) for line in lines), result.stderr
    assert any("failed for good" in line and "content policy" in line for line in lines)
    assert any(re.match(STAMP + r" batchgen: 2 succeeded, 1 failed, 0 pending", line) for line in lines)
    stamps = [datetime.fromisoformat(line.split(" ")[0]) for line in lines]
    assert stamps == sorted(stamps)


def test_json_events_parse_name_jobs_and_runs_and_never_hold_the_key(tmp_path, serve):
    """--log-format json: every stderr line is one JSON object with a time and an event; runs created,
    succeeded, failed, throttled and stopped are all there with job and run ids; the key, echoed back by
    the server in its error bodies, appears in no output, no log file and not in last-run.json."""
    server = serve(
        api_key=SECRET,
        refuse_prompts_containing="forbidden",
        create_rate="4",
        create_burst=1,
        credits=6,
        faults={"echo_headers": 1.0, "http_500": 0.15},
    )
    prompts = [f"forbidden item {i}" for i in range(2)] + [f"item {i}" for i in range(10)]
    manifest, out = write_jobs(tmp_path / "m.yaml", prompts), tmp_path / "out"
    command = ["run", str(manifest), "--output", str(out), "--log-format", "json", "--concurrency", "4"]
    result = batchgen_cli(*command, env={"RUNBASE_API_KEY": SECRET, "RUNBASE_BASE_URL": server.base_url})
    assert result.returncode == 3, result.stderr  # stopped by the account: out of credits
    events = [json.loads(line) for line in result.stderr.splitlines()]
    assert all(isinstance(e, dict) and datetime.fromisoformat(e["time"]) and e["event"] for e in events)
    kinds = {e["event"] for e in events}
    assert {"started", "created", "succeeded", "failed", "throttled", "stopped", "finished"} <= kinds, kinds
    throttled = [e for e in events if e["event"] == "throttled"]
    assert all(e["pace"] > 0 and "fitted" in e and "running_limit" in e for e in throttled)  # what pacing made of it
    stats = server.simulator.stats()
    if stats["faults"].get("http_500"):
        assert "retried" in kinds
    run_ids = {run["id"] for run in stats["runs"]}
    created = [e for e in events if e["event"] == "created"]
    assert len(created) == stats["creates"] and {e["run_id"] for e in created} == run_ids
    assert all(e["job_id"] and e["attempt"] >= 1 for e in created)
    failed = [e for e in events if e["event"] == "failed"]
    assert {e["error_kind"] for e in failed} == {"rejected"} and len(failed) == 2
    assert any("[redacted]" in e["error"] or "Bearer" not in e["error"] for e in failed)
    (finished,) = [e for e in events if e["event"] == "finished"]
    assert finished["exit_code"] == 3 and finished["this_run"]["runs_created"] == stats["creates"]
    assert events[-1] is finished
    assert SECRET not in everything_written(out, result.stdout, result.stderr)

    # The same through --log-file: the file gets the events, standard error only the final summary.
    log = tmp_path / "batchgen.log"
    again = batchgen_cli(*command, "--log-file", str(log), env={"RUNBASE_API_KEY": SECRET,
                                                                "RUNBASE_BASE_URL": server.base_url})  # fmt: skip
    assert again.returncode == 3
    assert [json.loads(line)["event"] for line in again.stderr.splitlines()] == ["finished"]
    logged = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    assert logged[0]["event"] == "started" and logged[-1]["event"] == "finished"
    assert SECRET not in everything_written(out, again.stdout, again.stderr, log.read_text(encoding="utf-8"))


def test_quiet_writes_only_the_final_summary(tmp_path):
    """--quiet: only the final summary (text: the counts and the outcome; json: one 'finished' object)."""
    text = batchgen_cli("run", str(EXAMPLE), "--simulate", "--output", str(tmp_path / "a"), "--quiet")
    assert text.returncode == 0, text.stderr
    lines = text.stderr.splitlines()
    assert len(lines) == 2 and "8 succeeded" in lines[0] and "all jobs succeeded (exit 0)" in lines[1]
    as_json = batchgen_cli("run", str(EXAMPLE), "--simulate", "--output", str(tmp_path / "b"), "--quiet",
                           "--log-format", "json")  # fmt: skip
    assert [json.loads(line)["event"] for line in as_json.stderr.splitlines()] == ["finished"]


def test_last_run_json_holds_the_final_summary(tmp_path, serve):
    """DIR/last-run.json: counts, exit code, start and finish, manifest, runs created, reused and refused,
    agreeing with the ledger and the server."""
    server = serve(refuse_prompts_containing="forbidden")
    manifest = write_jobs(tmp_path / "m.yaml", ["one", "two", "a forbidden three", "two"])
    out = tmp_path / "out"
    started = time.time()
    result = batchgen_cli("run", str(manifest), "--output", str(out), "--no-progress", env=env_for(server))
    assert result.returncode == 1, result.stderr
    summary = json.loads((out / "last-run.json").read_text(encoding="utf-8"))
    with Ledger(out / "batchgen.sqlite", readonly=True) as ledger:
        assert summary["jobs"] == ledger.counts()
    assert summary["exit_code"] == 1 and summary["outcome"] == "done"
    assert summary["manifest"] == str(manifest) and summary["output_dir"] == str(out)
    begin, end = datetime.fromisoformat(summary["started"]), datetime.fromisoformat(summary["finished"])
    assert started - 1 <= begin.timestamp() <= end.timestamp() <= time.time()
    this_run = summary["this_run"]
    assert this_run["runs_created"] == server.simulator.stats()["creates"] == 2
    assert this_run["refused"] == 1 and this_run["succeeded"] == 3 and this_run["failed"] == 1
    assert this_run["reused"] == 1  # the second "two" got the first one's image: one request paid once
    assert not list(out.glob(".batchgen-*"))  # written through a temporary file, renamed into place


def test_an_overlapping_run_exits_5_at_once_and_leaves_last_run_json_to_the_first(tmp_path, serve):
    """A second run on a busy folder exits 5 at once; last-run.json ends up with the first run's summary."""
    server = serve(latency=3.0)
    manifest, out = write_jobs(tmp_path / "m.yaml", ["slow one", "slow two"]), tmp_path / "out"
    first = start_cli("run", str(manifest), "--output", str(out), "--no-progress", env=env_for(server, key=SECRET))
    with killed_at_end(first):
        wait_while_running(first, lambda: server.simulator.stats()["creates"] > 0, 30, "the first run's first create")
        second = batchgen_cli("run", str(manifest), "--output", str(out), env=env_for(server, key=SECRET), timeout=20)
        assert first.poll() is None
        assert not (out / "last-run.json").exists()  # the refused run wrote no summary over the folder
        _, err = first.communicate(timeout=60)
    assert second.returncode == 5 and "another batchgen run" in second.stderr
    assert first.returncode == 0, err
    assert json.loads((out / "last-run.json").read_text(encoding="utf-8"))["exit_code"] == 0


def read_until(fd: int, pattern: str, deadline: float) -> str:
    """Read from ``fd`` until ``pattern`` matches what was read, or fail at the deadline."""
    seen = b""
    while not re.search(pattern, seen.decode(errors="replace")):
        left = deadline - time.monotonic()
        if left <= 0:
            pytest.fail(f"no {pattern!r} in time; got:\n{seen.decode(errors='replace')}")
        ready, _, _ = select.select([fd], [], [], min(left, 1.0))
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # the child closed the terminal
                chunk = b""
            if not chunk:
                pytest.fail(f"output ended without {pattern!r}:\n{seen.decode(errors='replace')}")
            seen += chunk
    return seen.decode(errors="replace")


@contextmanager
def on_terminal(args: list[str], columns: int, env: dict[str, str]) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """The CLI on a new terminal ``columns`` wide: yields it and the terminal's end to read; at the end of the
    block it is killed if it still runs, and the terminal closed."""
    main, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    process = subprocess.Popen(
        [sys.executable, "-m", "batchgen", *args], stdin=child, stdout=child, stderr=child, env=env, close_fds=True
    )
    os.close(child)
    try:
        with killed_at_end(process):
            yield process, main
    finally:
        os.close(main)


def test_a_terminal_reporting_0_columns_gets_status_lines_saying_why_it_waits(tmp_path):
    """On a terminal of 0 columns (COLUMNS=0, stty cols 0) progress falls back to status lines, and while the
    API is unreachable the line says so: 'API unreachable: connection refused, retrying (Nth time)'."""
    with socket.socket() as probe:  # a port nothing listens on: connections are refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNBASE_")}
    env.update(COLUMNS="0", RUNBASE_API_KEY=SECRET, RUNBASE_BASE_URL=f"http://127.0.0.1:{port}/api/v1")
    manifest = write_jobs(tmp_path / "m.yaml", ["one", "two", "three"])
    with on_terminal(["run", str(manifest), "--output", str(tmp_path / "out")], 0, env) as (process, terminal):
        seen = read_until(
            terminal,
            r"0/3 done.*API unreachable: connection refused, retrying \(\d+(st|nd|rd|th) time\)",
            time.monotonic() + LINE_INTERVAL + 30,
        )
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 130
    assert not re.search(STAMP, seen)  # a terminal: no timestamps
    assert SECRET not in seen


def test_a_terminal_with_a_width_gets_the_bar(tmp_path):
    """On a terminal that reports 80 columns, run draws a progress bar."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNBASE_", "COLUMNS"))}
    command = ["run", str(EXAMPLE), "--simulate", "--output", str(tmp_path / "o")]
    with on_terminal(command, 80, env) as (process, terminal):
        seen = read_until(terminal, r"all jobs succeeded", time.monotonic() + 60)
        assert process.wait(timeout=30) == 0
    assert re.search(r"\d+%\|", seen) and "8/8" in seen


def test_a_429_pause_is_named_on_the_status_line(tmp_path, serve):
    """While a 429's Retry-After holds every request, the cron status line says 'paused by 429 for N s'."""
    server = serve(create_rate="1", create_burst=1, retry_after="fixed:40")
    manifest = write_jobs(tmp_path / "m.yaml", [f"item {i}" for i in range(4)])
    command = ("run", str(manifest), "--output", str(tmp_path / "out"))
    with killed_at_end(start_cli(*command, env=env_for(server, key=SECRET), stdout=subprocess.DEVNULL)) as process:
        assert process.stderr is not None
        seen = read_until(process.stderr.fileno(), STAMP + r" batchgen: \d/4 done.*paused by 429 for \d+ s",
                          time.monotonic() + LINE_INTERVAL + 30)  # fmt: skip
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 130
    assert server.simulator.stats()["rate_limited_creates"] >= 1
    assert SECRET not in seen


# -- help -------------------------------------------------------------------------------------------------


def test_run_help_names_the_environment_and_every_exit_code():
    """`run --help` names RUNBASE_API_KEY and RUNBASE_BASE_URL and lists every exit code with its meaning."""
    result = batchgen_cli("run", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "RUNBASE_API_KEY" in text and "RUNBASE_BASE_URL" in text
    for code, (meaning, _action) in EXIT_CODES.items():
        assert f"{int(code)} {' '.join(meaning.split())}" in text, code


@pytest.mark.parametrize("command", ["run", "validate", "status", "export", "retry"])
def test_every_option_says_its_default_and_unit(command):
    """Each option of the command says its default in --help, and options taking seconds or sizes say the unit."""
    parser = build_parser()
    (commands,) = [a for a in parser._actions if a.dest == "command"]
    sub = commands.choices[command]
    for action in sub._actions:
        if not action.option_strings or action.dest == "help" or action.help == "==SUPPRESS==":
            continue
        assert action.help and "default" in action.help, action.option_strings
        if action.metavar == "S":
            assert "seconds" in action.help, action.option_strings
        if action.metavar == "M":
            assert "MiB" in action.help, action.option_strings


def test_every_command_says_what_it_does():
    """Each command has a line in `batchgen --help` and a description at the top of its own --help."""
    parser = build_parser()
    (commands,) = [a for a in parser._actions if a.dest == "command"]
    listed = {choice.dest: choice.help for choice in commands._choices_actions}
    for name, sub in commands.choices.items():
        assert listed.get(name), f"`batchgen --help` lists {name} without a line"
        assert sub.description and len(sub.description) > 30, f"`batchgen {name} --help` has no description"


def test_the_readme_exit_code_table_is_the_code_table():
    """The README's exit-code table says, code for code, what batchgen/exitcodes.py says (and --help prints)."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for code, (meaning, action) in EXIT_CODES.items():
        assert f"| {int(code)} | {meaning} | {action} |" in readme, code
