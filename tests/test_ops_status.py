"""``batchgen status`` through the real CLI: counts, the most common errors with how many jobs each,
failures by kind, the last run, and the exact command that continues the batch; checked against the ledger."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from batchgen.ledger import Ledger

from .conftest import batchgen_cli, env_for


def write_jobs(path: Path, prompts: list[str]) -> Path:
    path.write_text("jobs:\n" + "".join(f"  - prompt: {p}\n" for p in prompts), encoding="utf-8")
    return path


def test_status_counts_errors_and_the_command_to_continue(tmp_path, serve):
    """After a batch with refusals, failed runs and a stop for credits, status (text and --json) agrees with the
    ledger: jobs by state, errors with their job counts ('N of M shown'), failures by kind, the last run's exit
    code and figures, and a next command that names the manifest and folder and works when pasted."""
    server = serve(refuse_prompts_containing="forbidden", failure_rate=0.0, credits=4)
    prompts = [f"forbidden thing {i}" for i in range(3)] + [f"fine thing {i}" for i in range(6)]
    write_jobs(tmp_path / "catalogue.yaml", prompts)
    out = tmp_path / "images"
    run = batchgen_cli("run", "catalogue.yaml", "--output", "images", "--no-progress", "--concurrency", "1",
                       env=env_for(server), cwd=tmp_path)  # fmt: skip
    assert run.returncode == 3, run.stderr  # out of credits after 4 runs

    report = batchgen_cli("status", "--output", str(out), "--json")
    assert report.returncode == 0, report.stderr
    status = json.loads(report.stdout)
    with Ledger(out / "batchgen.sqlite", readonly=True) as ledger:
        assert status["jobs"] == ledger.counts()
        assert status["attempts"] == ledger.attempt_counts()
        top = ledger.error_summary(limit=5)
    assert status["jobs"]["failed"] == 3 and status["jobs"]["succeeded"] == 4 and status["jobs"]["pending"] == 2
    assert status["failed_by_kind"] == {"rejected": 3}
    assert status["errors"]["top"] == top and top[0]["jobs"] == 3 and top[0]["kind"] == "rejected"
    assert status["errors"]["jobs"] == 3 and status["errors"]["distinct"] == 1
    assert status["runs_created"] == server.simulator.stats()["creates"] == 4
    assert status["possible_double_charges"] == 0
    session = status["last_session"]
    assert session["exit_code"] == 3 and session["outcome"] == "stopped by the account"
    assert session["stats"]["created"] == 4 and session["finished"] is not None
    assert status["retry_command"] is None  # refusals would only be refused again
    argv = status["next_command_argv"]
    assert argv[:3] == ["cd", str(tmp_path), "&&"] or argv[:2] == ["batchgen", "run"]
    assert "catalogue.yaml" in argv and "images" in argv

    text = batchgen_cli("status", "--output", str(out), "--errors", "1")
    assert text.returncode == 0, text.stderr
    assert "4 succeeded, 3 failed, 2 pending" in text.stdout
    assert "(1 of 1 shown)" in text.stdout and "3  [bad request / content policy]" in text.stdout
    assert "exit 3" in text.stdout and "4 runs created" in text.stdout
    assert "possible double charges: 0" in text.stdout
    assert "change them in the manifest" in text.stdout

    # The command status gives, pasted into a shell elsewhere, finishes the batch once credits are back.
    topped_up = serve(refuse_prompts_containing="forbidden")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    finish = status["next_command"] + " --no-progress"
    done = _shell(finish, elsewhere, env_for(topped_up))
    assert done.returncode == 1, done.stderr  # finished; the three refusals remain failed
    assert topped_up.simulator.stats()["creates"] == 2


def test_status_shows_retryable_failures_and_several_distinct_errors(tmp_path, serve):
    """Failed runs of several kinds: status lists 'N of M shown' with --errors N, and a retry command naming
    the kinds worth trying again."""
    server = serve(failure_rate=1.0)
    manifest, out = write_jobs(tmp_path / "m.yaml", [f"item {i}" for i in range(8)]), tmp_path / "out"
    run = batchgen_cli("run", str(manifest), "--output", str(out), "--no-progress", "--max-attempts", "1",
                       env=env_for(server))  # fmt: skip
    assert run.returncode == 1, run.stderr
    status = json.loads(batchgen_cli("status", "--output", str(out), "--json", "--errors", "1").stdout)
    assert status["failed_by_kind"] == {"run_failed": 8}
    assert status["errors"]["shown"] == 1 and status["errors"]["distinct"] > 1 and status["errors"]["jobs"] == 8
    assert status["retry_command"] == f"batchgen retry --failed --error-kind run-failed --output {out}"
    text = batchgen_cli("status", "--output", str(out), "--errors", "1").stdout
    assert f"(1 of {status['errors']['distinct']} shown)" in text
    assert "batchgen retry --failed --error-kind run-failed" in text


def test_attempts_of_jobs_dropped_from_the_manifest_are_not_counted(tmp_path, serve):
    """After the manifest drops a job, the run says its image stays but is no longer shown; status counts only
    the current manifest's jobs and their attempts, and its last run is the latest, which had nothing to do."""
    server = serve()
    out = tmp_path / "out"
    manifest = write_jobs(tmp_path / "m.yaml", ["one", "two", "three"])
    assert (
        batchgen_cli("run", str(manifest), "--output", str(out), "--no-progress", env=env_for(server)).returncode == 0
    )
    write_jobs(manifest, ["one", "two"])
    again = batchgen_cli("run", str(manifest), "--output", str(out), "--no-progress", env=env_for(server))
    assert again.returncode == 0
    assert f"1 job with images in {out} is not in {manifest}" in again.stderr  # told once, when dropped
    once_more = batchgen_cli("run", str(manifest), "--output", str(out), "--no-progress", env=env_for(server))
    assert "are not in" not in once_more.stderr
    status = json.loads(batchgen_cli("status", "--output", str(out), "--json").stdout)
    assert status["jobs"]["succeeded"] == 2 and status["attempts"] == {"succeeded": 2}
    # The later runs had nothing to do; the latest is still the last run status tells of.
    last = status["last_session"]
    assert (last["session"], last["outcome"], last["exit_code"], last["stats"]["created"]) == (3, "done", 0, 0)


def _shell(command: str, cwd: Path, env: dict[str, str]):
    import os
    import subprocess
    import sys

    # `batchgen` on PATH is this interpreter's; the command is run by a shell as a user would paste it.
    full = {k: v for k, v in os.environ.items() if not k.startswith("RUNBASE_")}
    full.update(env)
    bin_dir = Path(sys.executable).parent
    full["PATH"] = f"{bin_dir}{os.pathsep}{full.get('PATH', '')}"
    assert shlex.split(command)  # it parses as a shell line
    return subprocess.run(["bash", "-c", command], cwd=cwd, env=full, capture_output=True, text=True, timeout=60)


def test_status_reads_a_ledger_no_run_has_upgraded_yet(tmp_path, serve):
    """A schema-2 ledger (before status's indexes) is read by status as it is, with the same figures; the next
    run upgrades it."""
    import sqlite3

    from batchgen.ledger import SCHEMA_VERSION

    server = serve()
    out = tmp_path / "out"
    manifest = write_jobs(tmp_path / "m.yaml", ["one", "two"])
    command = ("run", str(manifest), "--output", str(out), "--no-progress")
    assert batchgen_cli(*command, env=env_for(server)).returncode == 0
    current = json.loads(batchgen_cli("status", "--output", str(out), "--json").stdout)
    db = sqlite3.connect(out / "batchgen.sqlite")
    db.executescript("DROP INDEX attempts_by_status; DROP INDEX jobs_errors; PRAGMA user_version = 2;")
    db.close()
    older = batchgen_cli("status", "--output", str(out), "--json")
    assert older.returncode == 0, older.stderr
    assert json.loads(older.stdout)["jobs"] == current["jobs"] and json.loads(older.stdout)["attempts"] == {
        "succeeded": 2
    }
    assert batchgen_cli(*command, env=env_for(server)).returncode == 0
    db = sqlite3.connect(out / "batchgen.sqlite")
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    db.close()


def test_status_of_a_ledger_no_run_has_read_a_manifest_into(tmp_path):
    """A ledger made by a run stopped before it read its manifest: status says so in words, not `None`."""
    out = tmp_path / "out"
    out.mkdir()
    Ledger(out / "batchgen.sqlite").close()
    result = batchgen_cli("status", "--output", str(out))
    assert result.returncode == 0, result.stderr
    assert "manifest: (none yet" in result.stdout and "None" not in result.stdout
