"""Attacks on batchgen's promises, each kept as the test that failed before its fix: nothing built from
manifest data writes, deletes or renames outside the output folder, even through symlinks someone put
there between runs; the key never lands in a message."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from batchgen import ExitCode
from batchgen.api import ALLOW_HTTP, check_key_stays_private
from batchgen.errors import ApiError, ManifestError
from batchgen.folder import MADE_BY
from batchgen.lastrun import LAST_RUN_NAME, read_last_run, write_last_run
from batchgen.ledger import Ledger
from batchgen.ledger.store import SIDE_FILES
from batchgen.manifest import read_manifest
from batchgen.models import LEDGER_NAME, SavedOutput
from batchgen.outputs import TEMP_PREFIX, TEMP_SUFFIX, PartialFile, UnsafeName
from batchgen.report import REPORT_NAME

from .conftest import batchgen_cli, export_records
from .served import sha256

ROWS = "sku,name,cat\na1,Lamp,sub\n"
CATALOGUE = 'rows: rows.csv\njob: {id: "{{ sku }}", prompt: "photo of {{ name }}", filename: "{{ cat }}/{{ id }}"}\n'


def write_catalogue(tmp_path: Path) -> Path:
    """A catalogue manifest whose one job, a1, writes into the subfolder sub/."""
    (tmp_path / "rows.csv").write_text(ROWS, encoding="utf-8")
    manifest = tmp_path / "m.yaml"
    manifest.write_text(CATALOGUE, encoding="utf-8")
    return manifest


def swap_for_symlink(folder: Path, outside: Path) -> None:
    """Put a symlink to ``outside`` where ``folder`` was, holding copies of its files (bytes the same)."""
    outside.mkdir()
    for path in folder.iterdir():
        (outside / path.name).write_bytes(path.read_bytes())
    folder.rename(folder.with_name(folder.name + ".real"))
    folder.symlink_to(outside)


def test_retry_never_moves_a_file_through_a_symlinked_subfolder(tmp_path, run):
    """retry moves a job's image aside only from the folder itself: a subfolder replaced by a symlink to a
    folder outside (holding a file under the image's name, the same bytes) leaves that file where it is."""
    out, outside = tmp_path / "out", tmp_path / "outside"
    assert run(write_catalogue(tmp_path)).exit_code == ExitCode.OK
    image = sha256(out / "sub" / "a1.png")
    swap_for_symlink(out / "sub", outside)

    marked = batchgen_cli("retry", "--output", str(out), "--ids", "a1")
    assert marked.returncode == 0, marked.stderr
    assert sha256(outside / "a1.png") == image  # still there, untouched
    assert "already gone from the folder" in marked.stdout
    with Ledger(out / "batchgen.sqlite", readonly=True) as ledger:
        assert ledger.versions("a1") == []
    assert not list((out / ".batchgen").rglob("a1.png"))


def test_retry_never_keeps_earlier_images_through_a_symlinked_state_folder(tmp_path, run):
    """retry refuses (exit 5, nothing changed) when .batchgen/versions/ is a symlink to a folder outside,
    rather than moving the image out of the output folder into it."""
    out, outside = tmp_path / "out", tmp_path / "outside"
    assert run(write_catalogue(tmp_path)).exit_code == ExitCode.OK
    image = sha256(out / "sub" / "a1.png")
    outside.mkdir()
    (out / ".batchgen" / "versions").symlink_to(outside)

    marked = batchgen_cli("retry", "--output", str(out), "--ids", "a1")
    assert marked.returncode == ExitCode.LOCAL, marked.stdout
    assert "not a plain folder" in marked.stderr and "nothing changed" in marked.stderr
    assert list(outside.iterdir()) == []
    assert sha256(out / "sub" / "a1.png") == image
    with Ledger(out / "batchgen.sqlite", readonly=True) as ledger:
        assert ledger.counts()["succeeded"] == 1


def test_an_earlier_prompts_image_is_never_kept_aside_through_a_symlinked_state_folder(tmp_path, run):
    """A job whose prompt changed keeps its earlier image in .batchgen/replaced/; when that is a symlink to a
    folder outside, the image is not moved out there: the run stops (exit 5) saying why and the image stays."""
    out, outside = tmp_path / "out", tmp_path / "outside"
    manifest = write_catalogue(tmp_path)
    assert run(manifest).exit_code == ExitCode.OK
    image = sha256(out / "sub" / "a1.png")
    outside.mkdir()
    (out / ".batchgen" / "replaced").symlink_to(outside)
    (tmp_path / "rows.csv").write_text(ROWS.replace("Lamp", "Desk lamp"), encoding="utf-8")

    result = run(manifest, max_attempts=1)
    assert list(outside.iterdir()) == []
    assert sha256(out / "sub" / "a1.png") == image
    assert result.exit_code == ExitCode.LOCAL, result.message
    assert "not a plain folder" in result.message


def test_report_writes_nothing_through_a_symlinked_report_html(tmp_path, run):
    """`batchgen report` replaces a report.html that is a symlink with the page itself and writes nothing in
    the folder the symlink points into (where it made its temporary file before): with that folder absent,
    the report is still written."""
    out = tmp_path / "out"
    assert run(write_catalogue(tmp_path)).exit_code == ExitCode.OK
    (out / REPORT_NAME).symlink_to(tmp_path / "elsewhere" / "page.html")

    written = batchgen_cli("report", "--output", str(out))
    assert written.returncode == 0, written.stderr
    assert not (tmp_path / "elsewhere").exists()
    assert not (out / REPORT_NAME).is_symlink()
    assert "sub/a1.png" in (out / REPORT_NAME).read_text(encoding="utf-8")


def test_a_key_with_non_ascii_characters_is_refused_plainly(tmp_path):
    """A key with a character no HTTP header can carry (a typo'd 'é', a pasted Cyrillic letter) is refused
    with exit 4 and a message naming the variable, never a traceback quoting a character of the key."""
    manifest = write_catalogue(tmp_path)
    key = "sk-sécret-ключ-0123456789"
    env = {"RUNBASE_API_KEY": key, "RUNBASE_BASE_URL": "http://127.0.0.1:9/api/v1"}
    refused = batchgen_cli("run", str(manifest), "--output", str(tmp_path / "out"), "--no-progress", env=env)
    assert refused.returncode == ExitCode.UNAUTHORIZED, refused.stderr
    assert "RUNBASE_API_KEY" in refused.stderr and "Traceback" not in refused.stderr
    for secret_part in ("é", "\\xe9", "ключ", "0123456789"):
        assert secret_part not in refused.stderr + refused.stdout


def test_a_filename_equal_to_another_jobs_id_is_a_problem(tmp_path):
    """A job saved under its id (its filename: renders empty) and a job whose filename is that id, in any
    letter case, would write one file: validate names both rows, and nothing is sent."""
    (tmp_path / "rows.csv").write_text("sku,name,fn\nlamp,Lamp,\nb2,Bowl,Lamp\nc3,Cup,LAMP2\nlamp2,Mug,\n")
    manifest = tmp_path / "m.yaml"
    manifest.write_text('rows: rows.csv\njob: {id: "{{ sku }}", prompt: "{{ name }}", filename: "{{ fn }}"}\n')
    checked = batchgen_cli("validate", str(manifest))
    assert checked.returncode == ExitCode.USAGE, checked.stderr
    problems = [line for line in checked.stderr.splitlines() if "field 'filename'" in line]
    assert len(problems) == 2, problems
    assert "rows.csv row 3: file name 'Lamp' differs only in letter case from 'lamp' on rows.csv row 2" in problems[0]
    assert "rows.csv row 5: file name 'lamp2' differs only in letter case from 'LAMP2' on rows.csv row 4" in problems[1]


def test_a_job_cannot_take_the_name_of_batchgens_own_files(tmp_path, write_manifest):
    """A job id 'last-run' (whose --sidecar would be last-run.json, the run's summary) and a filename whose
    folder is named like the ledger, the summary or report.html, in any letter case, are problems: nothing is
    sent, rather than one file overwriting the other or the report failing."""
    manifest = write_manifest(jobs=[{"id": "Last-Run", "prompt": "a lamp"}])
    checked = batchgen_cli("validate", str(manifest))
    assert checked.returncode == ExitCode.USAGE and "'Last-Run'" in checked.stderr, checked.stderr
    assert LAST_RUN_NAME in checked.stderr

    folders = [LEDGER_NAME, f"{LEDGER_NAME}-wal", LAST_RUN_NAME, REPORT_NAME.upper()]
    rows = "sku,folder\n" + "".join(f"s{n},{folder}\n" for n, folder in enumerate(folders))
    (tmp_path / "rows.csv").write_text(rows, encoding="utf-8")
    manifest.write_text('rows: rows.csv\njob: {id: "{{ sku }}", prompt: "x", filename: "{{ folder }}/{{ id }}"}\n')
    checked = batchgen_cli("validate", str(manifest))
    problems = [line for line in checked.stderr.splitlines() if "field 'filename'" in line]
    assert checked.returncode == ExitCode.USAGE and len(problems) == len(folders), checked.stderr
    for folder, problem in zip(folders, problems, strict=True):
        assert f"folder '{folder}'" in problem and "batchgen's own" in problem


def test_the_folders_state_files_are_never_written_through_symlinks(tmp_path, run):
    """.batchgen/journal replaced by a symlink to a file outside, or .batchgen itself by a symlink to a folder
    outside: the next run writes nothing there (it stops with exit 5 naming the symlink)."""
    out, outside = tmp_path / "out", tmp_path / "outside"
    manifest = write_catalogue(tmp_path)
    assert run(manifest).exit_code == ExitCode.OK
    outside.mkdir()
    victim = outside / "notes.txt"
    victim.write_text("mine\n", encoding="utf-8")
    journal = out / ".batchgen" / "journal"
    journal.unlink()
    journal.symlink_to(victim)
    (tmp_path / "rows.csv").write_text(ROWS.replace("Lamp", "Desk lamp"), encoding="utf-8")  # a run to journal

    result = run(manifest)
    assert result.exit_code == ExitCode.LOCAL, result.message
    assert "journal" in result.message
    assert victim.read_text(encoding="utf-8") == "mine\n"

    (out / ".batchgen").rename(out / "state")
    (out / ".batchgen").symlink_to(outside)
    result = run(manifest)
    assert result.exit_code == ExitCode.LOCAL, result.message
    assert ".batchgen" in result.message
    assert sorted(path.name for path in outside.iterdir()) == ["notes.txt"]


def test_the_run_summary_is_not_written_through_a_planted_temporary_name(tmp_path):
    """last-run.json is written through a temporary file of its own making: a symlink someone put under the
    temporary name it used to take (.batchgen-last-run-<pid>.part) is not written through."""
    out, victim = tmp_path / "out", tmp_path / "notes.txt"
    out.mkdir()
    victim.write_text("mine\n", encoding="utf-8")
    (out / f"{TEMP_PREFIX}last-run-{os.getpid()}{TEMP_SUFFIX}").symlink_to(victim)

    assert write_last_run(out, {"exit_code": 0}) == out / LAST_RUN_NAME
    assert victim.read_text(encoding="utf-8") == "mine\n"
    assert read_last_run(out) == {"exit_code": 0}


def test_a_subfolder_swapped_for_a_symlink_after_the_check_is_not_written_through(tmp_path):
    """Between the subfolder check and the rename into place (here: while the journal records the file, in
    PartialFile's before_rename), someone replaces the subfolder with a symlink to a folder outside: the
    image is not renamed into that folder; the commit fails instead."""
    out, outside = tmp_path / "out", tmp_path / "outside"
    out.mkdir()
    outside.mkdir()

    def swap(saved: SavedOutput) -> None:
        (out / "cat").rename(out / "cat.real")
        (out / "cat").symlink_to(outside)

    with PartialFile(out, "job", before_rename=swap) as part, pytest.raises(UnsafeName):
        part.write(b"data")
        part.commit("cat/job.png", 0, "image/png")
    assert list(outside.iterdir()) == []


def test_a_reused_image_is_not_copied_through_a_symlinked_subfolder(tmp_path, run):
    """A second batch whose subfolder is a symlink to a folder outside, reusing the first batch's image: the
    run does not crash; the job fails naming the folder, and nothing lands outside."""
    manifest, outside = write_catalogue(tmp_path), tmp_path / "outside"
    assert run(manifest, output_dir=tmp_path / "first").exit_code == ExitCode.OK
    second = tmp_path / "second"
    second.mkdir()
    outside.mkdir()
    (second / "sub").symlink_to(outside)

    result = run(manifest, output_dir=second)
    assert result.exit_code == ExitCode.JOBS_FAILED, result.message
    assert list(outside.iterdir()) == []
    with Ledger(second / "batchgen.sqlite", readonly=True) as ledger:
        (error,) = dict(ledger.recent_errors()).values()
    assert "not a plain folder" in error


def test_a_folder_named_like_another_jobs_sidecar_is_a_problem(tmp_path):
    """A filename whose folder is named like a --sidecar file (x.json, as job x's sidecar is) is a problem at
    validate, rather than a job that fails after its run was paid for."""
    (tmp_path / "rows.csv").write_text("sku,fn\nx,\nb2,X.JSON/y\n", encoding="utf-8")
    manifest = tmp_path / "m.yaml"
    manifest.write_text('rows: rows.csv\njob: {id: "{{ sku }}", prompt: "a lamp", filename: "{{ fn }}"}\n')
    checked = batchgen_cli("validate", str(manifest))
    assert checked.returncode == ExitCode.USAGE, checked.stderr
    assert "folder 'X.JSON' is named like" in checked.stderr


def test_a_journal_line_naming_a_file_outside_is_not_adopted(write_manifest, run, sim, tmp_path):
    """The ledger lost, and the folder's journal edited to say a job's image is ../elsewhere.png (a file with
    the image's bytes outside the folder): the repair does not adopt that file as the job's; it polls the run
    again and the image is saved in the folder, paying nothing twice."""
    out = tmp_path / "out"
    manifest = write_manifest(jobs=[{"id": "lamp", "prompt": "a lamp"}])
    assert run(manifest).exit_code == ExitCode.OK
    image = out / "lamp.png"
    (tmp_path / "elsewhere.png").write_bytes(image.read_bytes())
    journal = out / ".batchgen" / "journal"
    journal.write_text(journal.read_text().replace('"path":"lamp.png"', '"path":"../elsewhere.png"'))
    image.unlink()
    for name in ("batchgen.sqlite", "batchgen.sqlite-wal", "batchgen.sqlite-shm"):
        (out / name).unlink(missing_ok=True)

    result = run(manifest)
    assert result.exit_code == ExitCode.OK, result.message
    assert [record["outputs"] for record in export_records(out)] == [[str(out / "lamp.png")]]
    assert sha256(out / "lamp.png") == sim.stats()["runs"][0]["files"][0]["sha256"]
    assert sim.stats()["create_requests"] == 1


def test_the_key_is_never_sent_unencrypted_to_another_machine(tmp_path):
    """A base URL of http:// on a host other than this machine (a typo for https, a stale setting) is refused
    with exit 2 before anything is sent: the key would cross the network in clear text."""
    manifest = write_catalogue(tmp_path)
    env = {"RUNBASE_API_KEY": "sk-test-0123456789abcdef", "RUNBASE_BASE_URL": "http://runbase.net/api/v1"}
    refused = batchgen_cli("run", str(manifest), "--output", str(tmp_path / "out"), "--no-progress", env=env)
    assert refused.returncode == ExitCode.USAGE, refused.stderr
    assert "https://" in refused.stderr and "sk-test" not in refused.stderr


@pytest.mark.parametrize(
    ("url", "refused"),
    [
        ("http://runbase.net/api/v1", True),
        ("http://8.8.8.8:8000/api/v1", True),
        ("https://runbase.net/api/v1", False),
        ("http://127.0.0.1:8000/api/v1", False),
        ("http://[::1]:8000/api/v1", False),
        ("http://localhost:8000/api/v1", False),
        ("http://fake-runbase:8000/api/v1", False),  # a container's service name
        ("http://172.18.0.2:8000/api/v1", False),  # a container network
        ("http://192.168.1.20/api/v1", False),
        ("http://host.docker.internal:8000/api/v1", False),
        ("http://runbase.test/api/v1", False),
    ],
)
def test_plain_http_is_refused_only_on_the_open_network(url, refused):
    """Plain http:// is refused for a host on the open network, and taken for this machine, a private
    address, a name with no dot or under a suffix reserved for local use; BATCHGEN_ALLOW_HTTP=1 takes any."""
    if refused:
        with pytest.raises(ApiError, match=ALLOW_HTTP):
            check_key_stays_private(url)
    else:
        check_key_stays_private(url)
    check_key_stays_private(url, allow=True)


def test_the_made_by_mark_is_never_written_through_a_symlink(tmp_path, run):
    """An output folder prepared with .batchgen/made-by as a symlink to a file outside: the first run, which
    records what makes the folder's images, does not truncate and rewrite that file; it stops with exit 5
    naming the mark."""
    out, victim = tmp_path / "out", tmp_path / "notes.txt"
    victim.write_text("mine\n", encoding="utf-8")
    (out / ".batchgen").mkdir(parents=True)
    (out / ".batchgen" / MADE_BY).symlink_to(victim)

    result = run(write_catalogue(tmp_path))
    assert victim.read_text(encoding="utf-8") == "mine\n"
    assert result.exit_code == ExitCode.LOCAL, result.message
    assert MADE_BY in result.message


@pytest.mark.parametrize("side", SIDE_FILES)
def test_a_folder_named_like_a_ledger_side_file_is_a_problem(tmp_path, side):
    """A filename whose folder is named like one of the ledger's side files (batchgen.sqlite-journal among them:
    a folder of that name stops sqlite opening the ledger at all) is a problem at validate, not a folder the
    run makes."""
    folder = LEDGER_NAME + side
    manifest = tmp_path / "m.yaml"
    (tmp_path / "rows.csv").write_text(f"sku,fn\na,{folder}/a\n", encoding="utf-8")
    manifest.write_text('rows: rows.csv\njob: {id: "{{ sku }}", prompt: "a lamp", filename: "{{ fn }}"}\n')
    with pytest.raises(ManifestError, match=f"folder '{re.escape(folder)}' is named like batchgen's own file"):
        list(read_manifest(manifest).jobs())
