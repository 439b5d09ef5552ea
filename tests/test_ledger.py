"""The ledger against real sqlite files: migrations, grouped writes, damaged files, newer schemas."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from pathlib import Path

import pytest

from batchgen.errors import LedgerError
from batchgen.ledger import MIGRATIONS, SCHEMA_VERSION, Ledger, sql_statements
from batchgen.models import AttemptStatus, JobSpec, SavedOutput, image_input

from .conftest import batchgen_cli


def old_ledger(path: Path, version: int) -> None:
    """A ledger as batchgen wrote it at schema ``version``, with one job of each state and their rows."""
    db = sqlite3.connect(path, isolation_level=None)
    for number in range(1, version + 1):
        for statement in sql_statements(MIGRATIONS[number - 1]):
            db.execute(statement)
    db.execute(f"PRAGMA user_version = {version}")
    spec = '{"input": {"prompt": "a lamp"}, "model": "openai/gpt-image-1.5"}'
    for seq, (job_id, state) in enumerate([("a", "succeeded"), ("b", "failed"), ("c", "running"), ("d", "pending")]):
        db.execute(
            "INSERT INTO jobs (job_id, seq, generation, spec_json, spec_hash, state, attempts, error, updated_at) "
            "VALUES (?, ?, 1, ?, 'v1:h', ?, 1, ?, 0)",
            (job_id, seq, spec, state, "boom" if state == "failed" else None),
        )
    db.execute("INSERT INTO meta VALUES ('generation', '1'), ('manifest', 'm.yaml'), ('output_dir', '/tmp/o')")
    columns = "(attempt_id, job_id, spec_hash, run_id, status, error, started_at, created_at, finished_at)"
    db.execute(f"INSERT INTO attempts {columns} VALUES (1, 'a', 'v1:h', 'run_a', 'succeeded', NULL, 0, 1, 2)")
    db.execute(f"INSERT INTO attempts {columns} VALUES (2, 'b', 'v1:h', 'run_b', 'failed', 'boom', 0, 1, 2)")
    db.execute(f"INSERT INTO attempts {columns} VALUES (3, 'c', 'v1:h', 'run_c', 'running', NULL, 0, 1, NULL)")
    db.execute("INSERT INTO outputs VALUES ('a', 0, 1, 'a.png', 10, 'ff', 'image/png', 2)")
    db.execute("INSERT INTO sessions (session_id, manifest, started_at) VALUES (1, 'm.yaml', 0)")
    db.close()


@pytest.mark.parametrize("version", range(1, SCHEMA_VERSION))
def test_an_old_ledger_migrates_and_keeps_everything(tmp_path, version):
    """A ledger of each earlier schema opens at the current one with every job, attempt, file and session kept."""
    path = tmp_path / "old.sqlite"
    old_ledger(path, version)
    with Ledger(path) as ledger:
        assert ledger.counts() == {"pending": 1, "running": 1, "succeeded": 1, "failed": 1}
        assert [(r.run_id, r.job.spec.job_id) for r in ledger.open_runs()] == [("run_c", "c")]
        records = {r["job_id"]: r for r in ledger.iter_export()}
        assert records["a"]["outputs"] == [{"n": 0, "path": "a.png", "bytes": 10, "sha256": "ff"}]
        assert records["b"]["error"] == "boom"
        assert ledger.last_session()["manifest"] == "m.yaml"
        next_attempt = ledger.begin_attempt(JobSpec("d", image_input("a lamp")))
        ledger.flush()
    assert next_attempt == 4  # ids continue after the migrated ones
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert db.execute("PRAGMA foreign_key_check").fetchall() == []
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_a_ledger_from_a_newer_batchgen_is_refused_and_left_alone(tmp_path):
    """A schema newer than this code is refused with a message saying to upgrade; the file is not touched."""
    path = tmp_path / "new.sqlite"
    old_ledger(path, SCHEMA_VERSION)
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    before = path.read_bytes()
    with pytest.raises(LedgerError, match="newer batchgen"):
        Ledger(path)
    with pytest.raises(LedgerError, match="newer batchgen"):
        Ledger(path, readonly=True)
    assert path.read_bytes() == before


def test_read_only_open_of_an_older_ledger_says_how_to_upgrade(tmp_path):
    """status/export on a ledger of an older schema explain that one `batchgen run` upgrades it."""
    path = tmp_path / "old.sqlite"
    old_ledger(path, 1)
    with pytest.raises(LedgerError, match="run `batchgen run` on it once"):
        Ledger(path, readonly=True)


def test_a_failing_migration_step_leaves_the_ledger_as_it_was(tmp_path):
    """A step that fails its reference check is rolled back whole: the version and the tables stay as before."""
    path = tmp_path / "old.sqlite"
    old_ledger(path, 1)
    db = sqlite3.connect(path)  # foreign keys are off on a plain connection: write a dangling reference
    db.execute("INSERT INTO outputs VALUES ('a', 1, 99, 'a~2.png', 10, 'ee', 'image/png', 2)")
    db.commit()
    with pytest.raises(LedgerError, match="migration 2 would break references"):
        Ledger(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == 1
    assert "error_kind" not in [row[1] for row in db.execute("PRAGMA table_info(jobs)")]
    assert db.execute("SELECT count(*) FROM attempts").fetchone()[0] == 3


def test_sql_statements_split_where_sqlite_says_a_statement_ends():
    """A ';' in a string literal, a comment or a trigger body does not split a statement."""
    script = """
    CREATE TABLE t (x TEXT DEFAULT 'a;b');  -- a comment; with a semicolon
    CREATE TRIGGER tr AFTER INSERT ON t BEGIN UPDATE t SET x = 'c;d'; DELETE FROM t WHERE x = 'e'; END;
    INSERT INTO t VALUES ('f;g');
    """
    statements = list(sql_statements(script))
    assert len(statements) == 3
    db = sqlite3.connect(":memory:")
    for statement in statements:
        db.execute(statement)
    assert db.execute("SELECT x FROM t").fetchall() == [("c;d",)]
    with pytest.raises(ValueError, match="incomplete"):
        list(sql_statements("CREATE TRIGGER tr AFTER INSERT ON t BEGIN SELECT 1;"))


def test_queued_writes_are_invisible_until_flushed_and_lost_together_on_error(tmp_path):
    """Writes are queued, committed by flush() in one transaction, and a failing flush keeps none of them."""
    path = tmp_path / "l.sqlite"
    job = JobSpec("j", image_input("a lamp"))
    with Ledger(path) as ledger:
        ledger.sync_manifest("m.yaml", [job], output_dir=str(tmp_path))
        attempt = ledger.begin_attempt(job)
        other = sqlite3.connect(path)
        assert other.execute("SELECT count(*) FROM attempts").fetchone()[0] == 0
        ledger.flush()
        assert other.execute("SELECT status FROM attempts").fetchall() == [("creating",)]
        ledger.run_created(attempt, "run_1", job)
        ledger._queue("INSERT INTO no_such_table VALUES (1)")
        with pytest.raises(LedgerError):
            ledger.flush()
        assert other.execute("SELECT status, run_id FROM attempts").fetchall() == [("creating", None)]
        assert ledger.queued == 0
        other.close()


def test_a_job_satisfied_without_a_run_says_where_its_image_came_from(tmp_path):
    """A reused or adopted image is an attempt of that status with the job's files, and the job succeeded."""
    job = JobSpec("j", image_input("a lamp"))
    saved = [SavedOutput(n=0, path="j.png", bytes=3, sha256="abc", content_type="image/png")]
    with Ledger(tmp_path / "l.sqlite") as ledger:
        ledger.sync_manifest("m.yaml", [job], output_dir=str(tmp_path))
        ledger.job_satisfied("j", job.spec_hash(), saved, status=AttemptStatus.REUSED, run_id="run_x", note="as k")
        ledger.flush()
        (record,) = ledger.iter_export()
        assert (record["state"], record["source"], record["run_id"]) == ("succeeded", "reused", "run_x")
        assert ledger.attempt_counts() == {"reused": 1}


def test_status_and_export_of_a_damaged_ledger_exit_5_with_what_to_do(tmp_path):
    """A ledger whose pages are garbage gives one clear line and exit 5 in status and export, no traceback."""
    out = tmp_path / "out"
    out.mkdir()
    ledger_file = out / "batchgen.sqlite"
    with Ledger(ledger_file) as ledger:
        ledger.sync_manifest("m.yaml", [JobSpec("j", image_input("a lamp"))], output_dir=str(out))
    data = bytearray(ledger_file.read_bytes())
    data[100:] = b"\xde\xad\xbe\xef" * ((len(data) - 100) // 4)
    ledger_file.write_bytes(bytes(data))
    for command in (["status"], ["status", "--json"], ["export"], ["export", "--format", "csv"]):
        result = batchgen_cli(*command, "--output", str(out))
        assert result.returncode == 5, (command, result.stderr)
        assert "Traceback" not in result.stderr
        assert "damaged" in result.stderr or "not a database" in result.stderr, result.stderr


def test_export_cuts_model_and_input_out_of_any_stored_spec(tmp_path):
    """export (JSONL and CSV) gives each job's model, input and metadata as stored, whatever the spec holds:
    a nested "model" key and quotes in the input, a sample number, a file name, non-ASCII text, a job with
    two files (in order) and one whose file is gone."""
    out = tmp_path / "out"
    out.mkdir()
    jobs = [
        JobSpec("nested", {"prompt": 'a "lamp",\n"model":"x"', "n": {"model": "inner", "k": [1, 2]}}, "m/one"),
        JobSpec("sample", image_input("a lamp, two"), "m/two", metadata={"sku": "S-1", "tags": ["a", "b"]}, sample=2),
        JobSpec("named", image_input("été ☀"), 'm"q', filename='sub/name,"x'),
        JobSpec("plain", image_input("a chair", image_urls=["https://e.example/a.png", "https://e.example/b.png"])),
    ]
    with Ledger(out / "batchgen.sqlite") as ledger:
        ledger.sync_manifest("m.yaml", jobs, output_dir=str(out))
        files = {"nested": ["nested.png", "nested~2.png"], "sample": ["sample.png"], "named": ["gone.png"]}
        for job in jobs:
            attempt = ledger.begin_attempt(job)
            ledger.run_created(attempt, f"run-{job.job_id}", job)
            saved = [
                SavedOutput(n, name, 3, f"sha-{name}", "image/png") for n, name in enumerate(files.get(job.job_id, []))
            ]
            ledger.job_succeeded(attempt, job.job_id, saved[::-1])  # recorded out of order: exported by n
            for output in saved:
                if output.path != "gone.png":
                    (out / output.path).write_bytes(b"png")
        ledger.flush()
    lines = batchgen_cli("export", "--output", str(out))
    assert lines.returncode == 0, lines.stderr
    records = {r["job_id"]: r for r in map(json.loads, lines.stdout.splitlines())}
    assert list(records) == [job.job_id for job in jobs]
    for job in jobs:
        record = records[job.job_id]
        assert (record["model"], record["input"], record["metadata"]) == (job.model, job.input, job.metadata)
        assert record["run_id"] == f"run-{job.job_id}" and record["state"] == "succeeded"
    assert records["nested"]["outputs"] == [str(out / "nested.png"), str(out / "nested~2.png")]
    assert records["nested"]["sha256"] == ["sha-nested.png", "sha-nested~2.png"]
    assert records["named"]["outputs"] == [] and records["named"]["missing_outputs"] == [str(out / "gone.png")]
    table = batchgen_cli("export", "--output", str(out), "--format", "csv")
    assert table.returncode == 0, table.stderr
    rows = {row["job_id"]: row for row in csv.DictReader(io.StringIO(table.stdout))}
    assert rows["nested"]["prompt"] == jobs[0].input["prompt"]
    assert rows["nested"]["outputs"] == f"{out / 'nested.png'}|{out / 'nested~2.png'}"
    assert rows["sample"]["tags"] == '["a", "b"]' and rows["sample"]["sku"] == "S-1"
    assert rows["named"]["prompt"] == "été ☀" and rows["named"]["outputs"] == ""
    assert rows["plain"]["image_urls"] == "https://e.example/a.png|https://e.example/b.png"
