"""The key stays with the API, files stay in the output folder, downloads stay bounded."""

from __future__ import annotations

import io
import logging
import os
import stat

import anyio
import pytest

from batchgen import BatchConfig, ExitCode
from batchgen.api import RunbaseClient
from batchgen.errors import DownloadRefused
from batchgen.ledger import Ledger
from batchgen.outputs import PartialFile, UnsafeName, output_path
from batchgen.simulator import SimConfig, Simulator

from .conftest import API_KEY, BASE_URL
from .served import assert_saved_as_served, image_files


def test_key_is_in_no_repr_log_record_or_result(write_manifest, run, tmp_path, caplog):
    """repr() of the config, the client, the ledger and the result, and every log record down to DEBUG
    (batchgen.api logs each request there, httpx and httpcore their own), never show the key, through retries
    and failed runs."""
    caplog.set_level(logging.DEBUG)
    sim = Simulator(SimConfig(latency=0.02, failure_rate=0.3, faults={"http_500": 0.2, "reset": 0.1}, seed=7))
    result = run(write_manifest(8), sim)
    assert result.exit_code in (ExitCode.OK, ExitCode.JOBS_FAILED), result.message
    assert sim.stats()["faults"] and result.stats.retries > 0
    config = BatchConfig(manifest=tmp_path / "m.yaml", api_key=API_KEY)
    client = RunbaseClient(BASE_URL, API_KEY)
    ledger = Ledger(tmp_path / "l.sqlite")
    try:
        texts = [repr(config), repr(client), repr(ledger), repr(result), result.message]
    finally:
        ledger.close()
        anyio.run(client.aclose)
    logged = [record.getMessage() for record in caplog.records]
    assert any("POST" in line for line in logged)  # the requests were logged: the search below saw them
    for text in texts + logged:
        assert API_KEY not in text


def test_authorization_never_reaches_output_hosts_even_through_redirects(write_manifest, run, tmp_path):
    """Output files, redirected or not, are fetched without the Authorization header."""
    sim = Simulator(SimConfig(latency=0.02, faults={"redirect": 0.5, "expire_first_fetch": 0.3}, seed=4))
    assert run(write_manifest(10), sim).exit_code == ExitCode.OK
    assert sim.stats()["faults"]["redirect"] > 0
    assert sim.stats()["auth_on_files"] == 0
    assert_saved_as_served(tmp_path / "out", sim.stats(), succeeded=10)


def test_download_size_cap_refuses_big_files(write_manifest, run, tmp_path):
    """An output larger than --max-download-mb is refused and no file is kept."""
    sim = Simulator(SimConfig(latency=0.02))
    result = run(write_manifest(2), sim, max_download_bytes=50, max_attempts=1)
    assert result.exit_code == ExitCode.JOBS_FAILED
    with Ledger(tmp_path / "out" / "batchgen.sqlite") as ledger:
        errors = dict(ledger.recent_errors())
    assert len(errors) == 2 and all("cap" in error for error in errors.values()), errors
    assert_saved_as_served(tmp_path / "out", sim.stats(), succeeded=0)  # and no file of any name kept


def test_non_http_output_url_is_refused():
    """The client refuses to fetch file://, ftp:// and other schemes."""

    async def fetch(url: str) -> None:
        async with RunbaseClient(BASE_URL, API_KEY) as client:
            await client.download(url, io.BytesIO())

    for url in ("file:///etc/passwd", "ftp://example.com/x.png", "gopher://x/", "//no-scheme/x"):
        with pytest.raises(DownloadRefused):
            anyio.run(fetch, url)


@pytest.mark.parametrize(
    "name",
    ["../x.png", "/etc/passwd", "a/../../b.png", "a//b.png", "a/./b.png", "a\\b.png", "", ".", "..", "x\x00.png"]
    + [".hidden.png", "a/.b.png", "a" * 300, "/".join(["a"] * 17)],
)
def test_output_names_cannot_leave_the_folder(tmp_path, name):
    """A name with '..', an absolute path, empty or dot segments, NUL or excessive length is refused."""
    with pytest.raises(UnsafeName):
        output_path(tmp_path, name)


def test_output_names_may_use_subfolders_inside_the_folder(tmp_path):
    """A name of plain segments joined by '/' stays inside the output folder."""
    assert output_path(tmp_path, "lighting/lamp-01.png") == tmp_path / "lighting" / "lamp-01.png"


def test_a_symlinked_subfolder_is_not_written_through(tmp_path):
    """A subfolder that is a symlink (pointing outside) is refused when a file is committed there."""
    outside = tmp_path / "outside"
    outside.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "cat").symlink_to(outside)
    with PartialFile(out, "job") as part, pytest.raises(UnsafeName):
        part.write(b"data")
        part.commit("cat/job.png", 0, "image/png")
    assert list(outside.iterdir()) == []


def test_files_follow_the_umask_and_the_ledger_is_not_world_writable(write_manifest, run, tmp_path):
    """Output files and the ledger are created with the user's umask."""
    old = os.umask(0o077)
    try:
        assert run(write_manifest(2)).exit_code == ExitCode.OK
    finally:
        os.umask(old)
    out = tmp_path / "out"
    assert len(image_files(out)) == 2
    for path in out.iterdir():
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o077 == 0, (path.name, oct(mode))


def test_ledger_is_never_world_writable_even_with_umask_zero(write_manifest, run, tmp_path):
    """With umask 000 the ledger, the lock files and the folder's journal still are not world-writable."""
    old = os.umask(0)
    try:
        assert run(write_manifest(1)).exit_code == ExitCode.OK
    finally:
        os.umask(old)
    state = [".batchgen", ".batchgen/lock", ".batchgen/journal", ".batchgen/id"]
    for name in ("batchgen.sqlite", "batchgen.sqlite.lock", *state):
        mode = stat.S_IMODE((tmp_path / "out" / name).stat().st_mode)
        assert not mode & stat.S_IWOTH, (name, oct(mode))
