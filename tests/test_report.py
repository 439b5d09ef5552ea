"""`batchgen report`: the data it collects from a real batch, the page it writes, and its errors.

Batches are made by the real runner against the in-process simulator: some prompts are
refused (400), credits run out so some jobs stay pending, and a file is deleted afterwards.
What the page shows in a browser is tested in test_report_browser.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shutil
import struct
from pathlib import Path
from typing import Any

import pytest
import yaml

from batchgen import run_batch
from batchgen.cli import LEDGER_NAME
from batchgen.ledger import Ledger
from batchgen.report import (
    REPORT_NAME,
    CardState,
    FileStatus,
    ReportData,
    build_report_data,
    fix_command,
    render_html,
)
from batchgen.report.collect import check_file
from batchgen.report.images import image_size
from batchgen.report.render import clean_text
from batchgen.simulator import FAULTS, SimConfig, Simulator

from .conftest import API_KEY, BASE_URL, batchgen_cli

REFUSED_WORD = "forbidden"
HOSTILE_PROMPT = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2"> \x1b[31mred\x1b[0m lamp'
HOSTILE_ERROR = "\x1b[2J\x1b]0;owned\x07server said: </script><b onmouseover=alert(1)>bold</b>\x07 done"


@dataclasses.dataclass
class Batch:
    """A finished batch: its folders, the simulator that served it, and what the ledger says."""

    root: Path  # the folder the commands ran in
    manifest: Path
    output: Path
    sim: Simulator
    records: dict[str, dict[str, Any]]  # job id -> the ledger's export record
    deleted: str  # the job whose file was deleted after the run
    hostile: str  # the job whose prompt holds HTML and terminal escapes
    hostile_failed: str  # the failed job given an error with HTML and terminal escapes

    def ids(self, state: str) -> list[str]:
        return [job_id for job_id, r in self.records.items() if r["state"] == state]


def make_batch(root: Path, jobs: int = 14, credits: int = 9) -> Batch:
    """Run a real batch of ``jobs`` jobs: two refused (their errors full of terminal escapes, as the server
    sent them), one hostile prompt, credits for ``credits`` runs."""
    ratios = ("1:1", "3:2", "2:3")
    specs: list[dict[str, Any]] = []
    for i in range(jobs):
        prompt = f"studio photo of product {i}, soft light"
        if i in (3, 7):
            prompt += f", {REFUSED_WORD} content"
        spec = {"id": f"item-{i:02d}", "prompt": prompt, "aspect_ratio": ratios[i % 3]}
        spec["metadata"] = {"sku": f"SKU-{1000 + i}", "category": "lamps" if i % 2 else "mugs"}
        specs.append(spec)
    specs[5]["prompt"] = HOSTILE_PROMPT
    manifest = root / "catalogue.yaml"
    manifest.write_text(yaml.safe_dump({"jobs": specs}, sort_keys=False), encoding="utf-8")
    # Every error answer carries terminal escape sequences, as a hostile or broken server's may.
    sim = Simulator(
        SimConfig(latency=0.02, refuse_prompts_containing=REFUSED_WORD, credits=credits, faults={"control_chars": 1.0})
    )
    output = root / "out"
    run_batch(
        manifest,
        output_dir=output,
        transport=sim.transport(),
        api_key=API_KEY,
        base_url=BASE_URL,
        progress="none",
        backoff_base=0.01,
        concurrency=2,
    )
    with Ledger(output / LEDGER_NAME, readonly=True) as ledger:
        records = {r["job_id"]: r for r in ledger.iter_export()}
    succeeded = [job_id for job_id, r in records.items() if r["state"] == "succeeded" and job_id != "item-05"]
    deleted = succeeded[0]
    (output / records[deleted]["outputs"][0]["path"]).unlink()
    failed = [job_id for job_id, r in records.items() if r["state"] == "failed"]
    # An error text as a hostile server could send it, recorded through the ledger's own method.
    with Ledger(output / LEDGER_NAME) as ledger:
        ledger.job_failed(failed[0], HOSTILE_ERROR)
    with Ledger(output / LEDGER_NAME, readonly=True) as ledger:
        records = {r["job_id"]: r for r in ledger.iter_export()}
    return Batch(root, manifest, output, sim, records, deleted, "item-05", failed[0])


@pytest.fixture
def batch(tmp_path: Path) -> Batch:
    return make_batch(tmp_path)


def page_payload(page: str) -> dict[str, Any]:
    """The JSON the page's script reads."""
    match = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', page, re.S)
    assert match, "no data element in the page"
    payload: dict[str, Any] = json.loads(match.group(1))
    return payload


def report(batch: Batch, *args: str) -> tuple[str, Any]:
    result = batchgen_cli("report", *args, cwd=batch.root)
    assert result.returncode == 0, result.stderr
    return result.stdout, result


# -- the command ---------------------------------------------------------------------------


def test_report_writes_one_page_into_the_output_folder(batch: Batch):
    """`report --output DIR` writes DIR/report.html and says where and what it holds."""
    stdout, _ = report(batch, "--output", "out")
    page = batch.output / REPORT_NAME
    assert page.is_file()
    counts = {state: len(batch.ids(state)) for state in ("succeeded", "failed", "pending")}
    assert stdout.startswith(f"{Path('out') / REPORT_NAME}: {len(batch.records)} jobs")
    assert f"{counts['failed']} failed" in stdout and f"{counts['pending']} pending" in stdout
    assert f"{counts['succeeded'] - 1} succeeded" in stdout  # one file was deleted
    assert "1 with missing or changed files" in stdout
    assert not list(batch.output.glob(".report-*")), "the temporary file was left behind"


def test_the_page_loads_nothing_from_anywhere(batch: Batch):
    """No external asset: no stylesheet or script link, no absolute URL in an attribute; a CSP forbids the network."""
    report(batch, "--output", "out")
    page = (batch.output / REPORT_NAME).read_text(encoding="utf-8")
    static = re.sub(r'<script type="application/json".*?</script>', "", page, flags=re.S)
    assert "<link" not in static and "@import" not in static
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:|//)""", static)
    assert not re.search(r"<script[^>]+src", static)
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', page)
    assert csp and "default-src &#x27;none&#x27;" in csp.group(1)


def test_help_names_the_options_and_exit_codes():
    """`report --help` lists --output, --ledger, --out and --verify with their defaults, and the exit codes."""
    result = batchgen_cli("report", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for words in ("--output DIR", "--ledger PATH", "--out FILE", "--verify", "default OUTPUT/report.html"):
        assert words in text, words
    assert "Exit 0 on success, 5 when" in text


def test_no_ledger_is_a_clear_error(tmp_path: Path):
    """Without a ledger the command says where it looked and what to do, exit 5, no traceback."""
    result = batchgen_cli("report", "--output", str(tmp_path / "nothing"))
    assert result.returncode == 5
    assert f"no ledger at {tmp_path / 'nothing' / LEDGER_NAME}" in result.stderr
    assert "batchgen run MANIFEST" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "nothing").exists()


def test_a_damaged_ledger_is_a_clear_error(tmp_path: Path):
    """A ledger that is not sqlite is named as unreadable, exit 5, no traceback, no page written."""
    out = tmp_path / "out"
    out.mkdir()
    (out / LEDGER_NAME).write_bytes(b"this is not a database" * 100)
    result = batchgen_cli("report", "--output", str(out))
    assert result.returncode == 5
    assert str(out / LEDGER_NAME) in result.stderr and "is damaged" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (out / REPORT_NAME).exists()


def test_a_page_that_cannot_be_written_is_a_clear_error(batch: Batch):
    """--out into a folder that does not exist: exit 5 naming the folder; nothing else is written."""
    result = batchgen_cli("report", "--output", "out", "--out", "nowhere/report.html", cwd=batch.root)
    assert result.returncode == 5
    assert "cannot write the report nowhere/report.html: the folder nowhere does not exist" in result.stderr
    assert not (batch.output / REPORT_NAME).exists()


def test_ledger_option_finds_the_images_where_the_ledger_recorded_them(batch: Batch):
    """`report --ledger PATH` alone shows the folder the batch wrote; its fix commands name the ledger."""
    ledger = batch.root / "elsewhere.sqlite"
    shutil.copy(batch.output / LEDGER_NAME, ledger)
    report(batch, "--ledger", "elsewhere.sqlite")
    payload = page_payload((batch.output / REPORT_NAME).read_text(encoding="utf-8"))
    assert payload["summary"]["location"] == f"--output {batch.output.resolve()} --ledger elsewhere.sqlite"
    failed = next(j for j in payload["jobs"] if j["state"] == "failed")
    assert failed["fix"].startswith(
        f"batchgen retry --output {batch.output.resolve()} --ledger elsewhere.sqlite --ids "
    )


def test_links_are_relative_so_the_folder_can_move(batch: Batch):
    """A page written elsewhere links the images relative to itself; the moved output folder still works."""
    (batch.root / "share").mkdir()
    report(batch, "--output", "out", "--out", "share/gallery.html")
    payload = page_payload((batch.root / "share" / "gallery.html").read_text(encoding="utf-8"))
    hrefs = [f["href"] for job in payload["jobs"] for f in job["files"] if f["status"] == "ok"]
    assert hrefs and all(h.startswith("../out/") for h in hrefs)
    assert all((batch.root / "share" / h).is_file() for h in hrefs)
    moved = batch.root / "moved" / "images"
    shutil.copytree(batch.output, moved)
    report(batch, "--output", "moved/images")
    payload = page_payload((moved / REPORT_NAME).read_text(encoding="utf-8"))
    hrefs = [f["href"] for job in payload["jobs"] for f in job["files"] if f["status"] == "ok"]
    assert len(hrefs) == len(batch.ids("succeeded")) - 1
    assert all(not h.startswith(("/", "..")) and (moved / h).is_file() for h in hrefs)


# -- the data ------------------------------------------------------------------------------


def collect(batch: Batch, **options: Any) -> ReportData:
    with Ledger(batch.output / LEDGER_NAME, readonly=True) as ledger:
        return build_report_data(ledger, batch.output, **options)


def test_report_data_matches_the_ledger_and_the_server(batch: Batch):
    """Counts, runs created, files and their sha256 are what the ledger recorded and the server sent."""
    data = collect(batch)
    stats = batch.sim.stats()
    assert [job.job_id for job in data.jobs] == list(batch.records)
    assert data.summary.runs_created == stats["creates"]
    assert data.summary.possible_double_charges == 0
    assert data.summary.jobs["failed"] == len(batch.ids("failed"))
    served = {f["sha256"] for run in stats["runs"] for f in run["files"]}
    for job in data.jobs:
        assert job.state == batch.records[job.job_id]["state"]
        assert job.metadata == batch.records[job.job_id]["metadata"]
        for output in job.outputs:
            assert output.sha256 in served
            if output.status == FileStatus.OK:
                assert hashlib.sha256((batch.output / output.path).read_bytes()).hexdigest() == output.sha256
                width, height = (int(n) for n in job.input["aspect_ratio"].split(":"))
                assert output.width is not None and output.height is not None
                assert output.width * height == output.height * width
    assert data.summary.last_run is not None and data.summary.last_run.outcome == "stopped by the account"
    assert data.summary.wall_time_s is not None  # one session made every image, the deleted one too
    assert data.summary.images_in_last_run == len(batch.ids("succeeded")) == stats["downloads"]


def test_429s_and_retries_are_summed_over_sessions_as_the_server_counted_them(tmp_path: Path):
    """Two sessions under a create limit with 5xx faults: the summary's 429s and retries are the server's counts."""
    jobs = [{"id": f"job-{i:02d}", "prompt": f"product photo {i}"} for i in range(12)]
    manifest = tmp_path / "m.yaml"
    manifest.write_text(yaml.safe_dump({"jobs": jobs}), encoding="utf-8")
    sim = Simulator(SimConfig(latency=0.02, create_rate=4, retry_after=False, credits=6, faults={"http_503": 0.15}))
    results = []
    for _ in range(2):  # the first stops when the credits run out; the second finishes
        results.append(
            run_batch(
                manifest,
                output_dir=tmp_path / "out",
                transport=sim.transport(),
                api_key=API_KEY,
                base_url=BASE_URL,
                progress="none",
                backoff_base=0.01,
            )  # fmt: skip
        )
        sim.add_credits(len(jobs))
    assert [r.exit_code for r in results] == [3, 0]
    stats = sim.stats()
    with Ledger(tmp_path / "out" / LEDGER_NAME, readonly=True) as ledger:
        summary = build_report_data(ledger, tmp_path / "out").summary
    assert summary.rate_limited == stats["rate_limited_creates"] + stats["rate_limited_gets"] > 0
    assert summary.retries == sum(n for fault, n in stats["faults"].items() if fault in FAULTS) > 0
    assert summary.images_in_last_run == results[1].stats.downloads
    assert summary.last_run is not None and summary.last_run.exit_code == 0


def test_cards_say_what_is_wrong_and_how_to_fix_it(batch: Batch):
    """Failed, pending and missing-file jobs become such cards, each with the command that fixes it."""
    data = collect(batch)
    by_id = {job.job_id: job for job in data.jobs}
    assert by_id[batch.deleted].card_state == CardState.MISSING
    assert by_id[batch.deleted].outputs[0].status == FileStatus.MISSING
    assert data.summary.missing_files == 1
    manifest = data.summary.manifest
    assert manifest == str(batch.manifest)
    for job_id in batch.ids("failed"):
        assert by_id[job_id].card_state == CardState.FAILED and by_id[job_id].error
        assert fix_command(by_id[job_id], data.summary) == (f"batchgen retry --ids {job_id} && batchgen run {manifest}")
    assert batch.ids("pending"), "credits ran out, so some jobs must be pending"
    for job_id in batch.ids("pending"):
        assert by_id[job_id].card_state == CardState.PENDING
        assert fix_command(by_id[job_id], data.summary) == f"batchgen run {manifest}"
    assert fix_command(by_id[batch.deleted], data.summary) == f"batchgen run {manifest}"  # fetched again
    refused = [j for j in batch.ids("failed") if j != batch.hostile_failed]
    assert all("refused by the content policy" in (by_id[j].error or "") for j in refused)


def test_the_command_shown_for_pending_and_missing_jobs_makes_them_right(batch: Batch):
    """Running the card's command (`batchgen run MANIFEST`) fetches the deleted file again and does the pending jobs."""
    data = collect(batch)
    fixes = {job.job_id: fix_command(job, data.summary) for job in data.jobs}
    assert fixes[batch.deleted] == f"batchgen run {batch.manifest}"
    assert {fixes[j] for j in batch.ids("pending")} == {f"batchgen run {batch.manifest}"}
    batch.sim.add_credits(len(batch.records))
    run_batch(
        batch.manifest, output_dir=batch.output, transport=batch.sim.transport(), api_key=API_KEY,
        base_url=BASE_URL, progress="none", backoff_base=0.01,
    )  # fmt: skip
    after = collect(batch)
    assert after.card_counts()["missing"] == after.card_counts()["pending"] == 0
    refetched = next(job for job in after.jobs if job.job_id == batch.deleted)
    assert refetched.outputs[0].status == FileStatus.OK
    assert (
        hashlib.sha256((batch.output / refetched.outputs[0].path).read_bytes()).hexdigest()
        == (batch.records[batch.deleted]["outputs"][0]["sha256"])
    )
    assert batch.sim.stats()["creates_per_prompt_max"] == 1  # fetched from its run, not paid for again


def test_a_changed_file_is_found_by_size_and_by_verify(batch: Batch):
    """A file of another size is 'changed' at once; one of the same size only with verify (sha256)."""
    ok = [job_id for job_id in batch.ids("succeeded") if job_id != batch.deleted]
    resized, same_size = (batch.output / batch.records[j]["outputs"][0]["path"] for j in ok[:2])
    resized.write_bytes(resized.read_bytes() + b"extra")
    original = same_size.read_bytes()
    same_size.write_bytes(original[:-1] + bytes([original[-1] ^ 0xFF]))
    states = {job.job_id: job.outputs[0].status for job in collect(batch).jobs if job.outputs}
    assert states[ok[0]] == FileStatus.CHANGED and states[ok[1]] == FileStatus.OK
    states = {job.job_id: job.outputs[0].status for job in collect(batch, verify=True).jobs if job.outputs}
    assert states[ok[0]] == FileStatus.CHANGED and states[ok[1]] == FileStatus.CHANGED


def test_a_recorded_path_outside_the_output_folder_is_neither_read_nor_linked(tmp_path: Path):
    """A ledger path like ../secret.png (a tampered ledger) is marked outside: no size read, no link."""
    root = tmp_path / "out"
    root.mkdir()
    (tmp_path / "secret.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    for path in ("../secret.png", str(tmp_path / "secret.png"), "a/../../secret.png"):
        checked = check_file(root, {"path": path, "bytes": 48, "sha256": "0" * 64})
        assert checked.status == FileStatus.OUTSIDE and checked.size_on_disk is None, path


# -- escaping ------------------------------------------------------------------------------


def test_prompts_and_errors_cannot_inject_html_or_terminal_codes(batch: Batch):
    """A prompt holding <script> and an error holding HTML and terminal escapes end up as text only."""
    report(batch, "--output", "out")
    page = (batch.output / REPORT_NAME).read_text(encoding="utf-8")
    assert page.count("<script") == 2  # the data element and the page's own script
    assert "\x1b" not in page and "\x07" not in page
    assert "<img src=x" not in page and "<b onmouseover" not in page and "</script><b" not in page
    payload = page_payload(page)
    jobs = {job["id"]: job for job in payload["jobs"]}
    refused = [j for j in batch.ids("failed") if j != batch.hostile_failed]
    assert refused and all("\\x1b[" in batch.records[j]["error"] for j in refused)  # stored escaped by batchgen.api
    assert all(jobs[j]["error"] == clean_text(batch.records[j]["error"]) for j in refused)
    assert all("\x1b" not in jobs[j]["error"] and "refused by the content policy" in jobs[j]["error"] for j in refused)
    assert jobs[batch.hostile]["input"]["prompt"] == clean_text(HOSTILE_PROMPT)
    assert "<script>window.__pwned = 1</script>" in jobs[batch.hostile]["input"]["prompt"]
    assert jobs[batch.hostile_failed]["error"] == "server said: </script><b onmouseover=alert(1)>bold</b>\\x07 done"


def test_clean_text_removes_terminal_sequences_and_shows_other_controls():
    """CSI and OSC sequences go; a lone BEL or backspace and bidi overrides are written out as escapes."""
    assert clean_text("\x1b[1;31mred\x1b[0m") == "red"
    assert clean_text("\x1b]0;title\x07after") == "after"
    assert clean_text("a\x07b\x08c") == "a\\x07b\\x08c"
    assert clean_text("abc\u202edef") == "abc\\u202edef"
    assert clean_text("line one\nline two\tend") == "line one\nline two\tend"


def test_the_page_escapes_what_it_renders_itself(batch: Batch):
    """The title and summary (rendered without the script) escape a manifest name holding HTML."""
    data = collect(batch)
    hostile = dataclasses.replace(data.summary, manifest="<img src=x onerror=alert(1)>.yaml")
    page = render_html(ReportData(hostile, data.jobs), batch.output / REPORT_NAME)
    assert "<img src=x" not in page
    assert "&lt;img src=x onerror=alert(1)&gt;.yaml" in page


# -- image headers -------------------------------------------------------------------------


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("name", "data", "size"),
    [
        ("png", b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + struct.pack(">II", 1536, 1024), (1536, 1024)),
        ("gif", b"GIF89a" + struct.pack("<HH", 300, 200) + b"\x00" * 8, (300, 200)),
        (
            "jpeg",
            b"\xff\xd8"
            + b"\xff\xe0"
            + struct.pack(">H", 16)
            + b"JFIF\x00" * 2
            + b"\x00" * 4
            + b"\xff\xc0"
            + struct.pack(">HBHH", 17, 8, 1536, 1024)
            + b"\x03" * 10,
            (1024, 1536),
        ),
        (
            "webp-vp8x",
            b"RIFF\x00\x00\x00\x00WEBPVP8X" + b"\x0a\x00\x00\x00" + b"\x00" * 4 + b"\xff\x03\x00\xff\x05\x00",
            (1024, 1536),
        ),
        (
            "webp-vp8l",
            b"RIFF\x00\x00\x00\x00WEBPVP8L" + b"\x00" * 4 + b"\x2f" + (1023 | (1535 << 14)).to_bytes(4, "little"),
            (1024, 1536),
        ),
        ("html", b"<html>not an image</html>", None),
        ("empty", b"", None),
    ],
)
def test_image_size_reads_headers(tmp_path: Path, name: str, data: bytes, size: tuple[int, int] | None):
    """Width and height come from the header of PNG, GIF, JPEG and WebP files; anything else gives None."""
    assert image_size(_write(tmp_path / name, data)) == size


def test_image_size_of_a_missing_file_is_none(tmp_path: Path):
    """An unreadable file has no size rather than an exception."""
    assert image_size(tmp_path / "absent.png") is None
