"""Server text is scrubbed and printable, only PNG/JPEG/WebP bodies are saved, and each refusal
costs what it should: fresh URLs where they can help, never a second paid run where they cannot."""

from __future__ import annotations

import hashlib
import io
import json
import re
import struct
import zlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio
import httpx
import pytest

from batchgen import ExitCode
from batchgen.api import RunbaseClient
from batchgen.errors import (
    BadRequest,
    LinkRefused,
    NotAnImage,
    OutputUnusable,
    TransientError,
    Unauthorized,
)
from batchgen.images import IMAGE_TYPES, JPEG_END, PNG_END, sniff_image
from batchgen.models import JobSpec, image_input
from batchgen.simulator import SimConfig, Simulator
from batchgen.text import (
    MAX_SERVER_TEXT,
    MIN_REFUSED_SECRET_LENGTH,
    REDACTED,
    holds_secret,
    printable,
    scrub,
    server_text,
)

from .conftest import API_KEY, BASE_URL, export_records

ESC = "\x1b"
HOSTILE_TEXT = f"{ESC}]0;pwned\x07{ESC}[2J\u202eevil\x9b31m"
PNG = (
    b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + b"\x00" * 13 + struct.pack(">I", zlib.crc32(b"IHDR"))
    + b"\x00\x00\x00\x00" + PNG_END
)  # fmt: skip
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x00" * 40 + JPEG_END
WEBP = b"RIFF\x24\x00\x00\x00WEBPVP8 " + b"\x00" * 40
NOT_IMAGES = {
    "html": (b"<!DOCTYPE html><html><body>Please sign in</body></html>", "image/png", "an HTML page"),
    "xml": (b'<?xml version="1.0"?><Error><Code>AccessDenied</Code></Error>', "application/xml", "XML"),
    "svg": (b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>', "image/svg+xml", "SVG"),
    "empty": (b"", "image/png", "an empty body"),
    "gif": (b"GIF89a" + b"\x00" * 40, "image/gif", "a GIF"),
    "json": (b'{"error": "expired"}', "application/json", "JSON"),
}
Scope = dict[str, Any]
Send = Callable[[dict[str, Any]], Awaitable[None]]


# --- text helpers ---------------------------------------------------------------------------------


def test_scrub_removes_the_key_and_authorization_values_in_every_shape():
    """The key (raw, URL- or JSON-encoded), Bearer tokens, Authorization values and URL queries are redacted."""
    texts = [
        f"echo: Authorization: Bearer {API_KEY}",
        f'{{"headers": {{"authorization": "Bearer {API_KEY}"}}}}',
        f"key={API_KEY}",
        "Authorization: Bearer some-other-token",
        "authorization=Basic dXNlcjpwYXNz",
        "bearer%20abc.def",
        "https://files.example/x.png?X-Amz-Signature=abc&Expires=1",
    ]
    for text in texts:
        cleaned = scrub(text, [API_KEY])
        assert API_KEY not in cleaned and REDACTED in cleaned, cleaned
        for secret in ("some-other-token", "dXNlcjpwYXNz", "abc.def", "X-Amz-Signature"):
            assert secret not in cleaned
    assert scrub("nothing secret here: bearer", [API_KEY]) == "nothing secret here: bearer"


def test_only_a_key_long_enough_to_be_one_makes_an_id_or_url_refused():
    """A real key (as written or escaped) in a run id or an output URL is found; a short test key that a fake
    server's addresses hold by chance ('test' in files.test) is not, so its files are fetched."""
    assert len(API_KEY) >= MIN_REFUSED_SECRET_LENGTH
    assert holds_secret(f"https://files.example/a.png?token={API_KEY}", [API_KEY])
    assert holds_secret("run_" + quote(API_KEY, safe=""), [API_KEY])
    assert not holds_secret("http://files.test/out/test-1.png", ["test"])
    assert not holds_secret("run-fake-key-1", ["fake-key"])


def test_printable_escapes_what_a_terminal_would_act_on_and_keeps_the_rest():
    """ESC sequences, C0/C1 controls, DEL, bidi overrides and separators are escaped; accents and CJK stay."""
    shown = printable(f"a{HOSTILE_TEXT}\r\n\x00\x7f\u2028 é 日本")
    assert not any(ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F for ch in shown)
    assert "\u202e" not in shown and "\u2028" not in shown
    assert "\\x1b]0;pwned\\x07" in shown and "\\u202e" in shown and "\\x9b" in shown
    assert shown.endswith(" é 日本")
    assert printable(shown) == shown  # idempotent


def test_server_text_scrubs_before_it_cuts():
    """A key straddling the length limit is redacted whole, not cut into a visible prefix."""
    text = "x" * (MAX_SERVER_TEXT - 10) + " " + API_KEY + " tail"
    shown = server_text(text, [API_KEY])
    assert API_KEY[:8] not in shown and len(shown) <= MAX_SERVER_TEXT


# --- API answers echoing the key, with control characters ---------------------------------------------


def echo_app(status: int, *, json_body: bool = True) -> Callable[[Scope, Any, Send], Awaitable[None]]:
    """An API that answers everything with ``status`` and a body echoing the request's headers."""

    async def app(scope: Scope, receive: Any, send: Send) -> None:
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        text = f"bad request {HOSTILE_TEXT} you sent {headers}"
        body = json.dumps({"error": {"message": text}}).encode() if json_body else f"<h1>{text}</h1>".encode()
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"text/html")]})
        await send({"type": "http.response.body", "body": body})

    return app


def assert_clean(text: str) -> None:
    assert API_KEY not in text, text
    assert not re.search(r"[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]", text), text


@pytest.mark.parametrize(("status", "error"), [(400, BadRequest), (401, Unauthorized), (500, TransientError)])
@pytest.mark.parametrize("json_body", [True, False])
def test_error_messages_never_carry_the_key_or_control_characters(status, error, json_body):
    """A 400/401/500 body that echoes Authorization and holds escape codes becomes a scrubbed, printable message."""

    async def main() -> None:
        async with RunbaseClient(
            BASE_URL, API_KEY, transport=httpx.ASGITransport(app=echo_app(status, json_body=json_body))
        ) as c:
            await c.create_run(JobSpec(job_id="a", input=image_input("a")))

    with pytest.raises(error) as caught:
        anyio.run(main)
    assert_clean(str(caught.value))
    assert REDACTED in caught.value.message and "\\x1b" in caught.value.message


def test_run_errors_and_status_words_are_scrubbed_and_printable():
    """A failed run's error and an unknown status word from the server arrive scrubbed and escaped."""

    async def app(scope: Scope, receive: Any, send: Send) -> None:
        body = {"id": "r1", "status": f"Failed{ESC}[0m", "error": f"worker said Bearer {API_KEY} {HOSTILE_TEXT}"}
        if scope["path"].endswith("/r2"):
            body = {"id": "r2", "status": "failed", "error": {"message": f"{API_KEY}{ESC}[2J"}}
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": json.dumps(body).encode()})

    async def main() -> list[Any]:
        async with RunbaseClient(BASE_URL, API_KEY, transport=httpx.ASGITransport(app=app)) as client:
            return [await client.get_run("r1"), await client.get_run("r2")]

    first, second = anyio.run(main)
    for info in (first, second):
        assert_clean(info.status)
        assert_clean(info.error)
    assert not first.finished  # "failed\x1b[0m" is no known word: still running, as the API notes say
    assert second.failed and REDACTED in second.error


# --- what counts as an image ---------------------------------------------------------------------------


def files_app(body: bytes, content_type: str, status: int = 200, headers: list[tuple[bytes, bytes]] | None = None):
    async def app(scope: Scope, receive: Any, send: Send) -> None:
        head = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": head + (headers or [])})
        await send({"type": "http.response.body", "body": body})

    return app


def download(app: Any, url: str = "http://files.test/x.png", **options: Any) -> tuple[Any, bytes]:
    sink = io.BytesIO()

    async def main() -> Any:
        async with RunbaseClient(BASE_URL, API_KEY, transport=httpx.ASGITransport(app=app), **options) as client:
            return await client.download(url, sink)

    return anyio.run(main), sink.getvalue()


@pytest.mark.parametrize(("body", "declared", "expected_type", "extension"), [
    (PNG, "image/png", "image/png", "png"),
    (JPEG, "image/jpeg", "image/jpeg", "jpg"),
    (WEBP, "image/webp", "image/webp", "webp"),
    (PNG, "text/html", "image/png", "png"),
    (JPEG, "application/octet-stream", "image/jpeg", "jpg"),
    (WEBP, "", "image/webp", "webp"),
])  # fmt: skip
def test_the_bytes_decide_the_type_and_the_extension(body, declared, expected_type, extension):
    """PNG, JPEG and WebP are recognised by their first bytes whatever the declared type; a contradiction is noted."""
    result, saved = download(files_app(body, declared))
    assert saved == body
    assert (result.content_type, result.extension) == (expected_type, extension)
    assert IMAGE_TYPES[expected_type] == extension
    assert (result.type_mismatch is not None) == (declared not in ("", expected_type))


@pytest.mark.parametrize("kind", sorted(NOT_IMAGES))
def test_a_body_that_is_not_an_image_is_refused_before_anything_is_written(kind):
    """HTML, XML, SVG, empty, GIF or JSON bodies raise NotAnImage naming what they look like; the sink gets nothing."""
    body, declared, looks_like = NOT_IMAGES[kind]
    with pytest.raises(NotAnImage, match=looks_like) as caught:
        download(files_app(body, declared), "http://files.test/x.png?sig=secret")
    assert "secret" not in caught.value.message
    assert sniff_image(body) is None


def test_sink_receives_nothing_from_a_refused_body():
    """The first bytes are judged before any byte reaches the sink."""
    sink = io.BytesIO()

    async def main() -> None:
        transport = httpx.ASGITransport(app=files_app(NOT_IMAGES["html"][0], "image/png"))
        async with RunbaseClient(BASE_URL, API_KEY, transport=transport) as client:
            await client.download("http://files.test/x.png", sink)

    with pytest.raises(NotAnImage):
        anyio.run(main)
    assert sink.getvalue() == b""


def test_refusals_are_classified_by_what_can_help():
    """403 → LinkRefused; over the cap (declared or streamed), data:/file: URLs → OutputUnusable."""
    with pytest.raises(LinkRefused):
        download(files_app(b"expired", "text/plain", status=403))
    with pytest.raises(OutputUnusable, match="cap"):
        download(files_app(PNG * 10, "image/png"), max_download_bytes=len(PNG))

    async def chunked(scope: Scope, receive: Any, send: Send) -> None:  # no Content-Length: caught while streaming
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for _ in range(10):
            await send({"type": "http.response.body", "body": PNG, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    with pytest.raises(OutputUnusable, match="cap"):
        download(chunked, max_download_bytes=len(PNG) * 3)
    for url in ("data:image/png;base64,iVBORw0KGgo=", "file:///etc/passwd", "ftp://files.test/x.png"):
        with pytest.raises(OutputUnusable, match="non-http"):
            download(files_app(PNG, "image/png"), url)


# --- through the real runner: each hostile output fails its job without a second paid run ------------


class Hostile:
    """The simulator, with its file answers or its run answers replaced as a test chooses; like a
    Simulator it offers ``transport()``, so the ``run`` fixture takes it in the simulator's place."""

    def __init__(self, sim: Simulator, *, files: Callable[[int], tuple[int, bytes, str] | None] | None = None,
                 runs: Callable[[dict[str, Any]], dict[str, Any]] | None = None):  # fmt: skip
        self.sim = sim
        self.files = files
        self.runs = runs
        self.fetches = 0

    def transport(self) -> httpx.ASGITransport:
        return httpx.ASGITransport(app=self)

    async def __call__(self, scope: Scope, receive: Any, send: Send) -> None:
        if self.files is not None and scope["path"].startswith("/files/"):
            self.fetches += 1
            replaced = self.files(self.fetches)
            if replaced is not None:
                status, body, content_type = replaced
                return await files_app(body, content_type, status)(scope, receive, send)
        if self.runs is not None and scope["method"] == "GET" and "/runs/" in scope["path"]:
            captured: list[dict[str, Any]] = []

            async def capture(message: dict[str, Any]) -> None:
                captured.append(message)

            await self.sim(scope, receive, capture)
            start, body = captured[0], b"".join(m.get("body", b"") for m in captured[1:])
            data = json.loads(body) if start["status"] == 200 else None
            if isinstance(data, dict) and data.get("status") == "succeeded":
                body = json.dumps(self.runs(data)).encode()
            headers = [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"]
            await send({**start, "headers": headers + [(b"content-length", str(len(body)).encode())]})
            return await send({"type": "http.response.body", "body": body})
        await self.sim(scope, receive, send)


def with_urls(urls: list[str]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda data: {**data, "output": {"urls": urls}}


def output_files(out: Path) -> list[Path]:
    """Files in the output folder other than batchgen's own (the ledger, the folder's .batchgen/)."""
    return [
        p
        for p in out.rglob("*")
        if p.is_file() and not p.name.startswith("batchgen.sqlite") and ".batchgen" not in p.relative_to(out).parts
    ]


HOSTILE_OUTPUTS = {
    "html page": ({"files": lambda n: (200, NOT_IMAGES["html"][0], "image/png")}, {}, "an HTML page"),
    "xml error": ({"files": lambda n: (200, NOT_IMAGES["xml"][0], "application/xml")}, {}, "XML"),
    "svg": ({"files": lambda n: (200, NOT_IMAGES["svg"][0], "image/svg+xml")}, {}, "SVG"),
    "empty body": ({"files": lambda n: (200, b"", "image/png")}, {}, "empty body"),
    "over the cap": ({}, {"max_download_bytes": 50}, "cap"),
    "data: url": ({"runs": with_urls(["data:image/png;base64,iVBORw0KGgo="])}, {}, "non-http"),
    "file: url": ({"runs": with_urls(["file:///etc/passwd"])}, {}, "non-http"),
    "redirect to file:": ({"files": lambda n: None}, {"faults": {"redirect_bad_scheme": 1.0}}, "non-http"),
    "no urls": ({"runs": with_urls([])}, {}, "without output URLs"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_OUTPUTS))
def test_a_hostile_output_fails_the_job_with_the_reason_and_pays_for_no_second_run(write_manifest, run, tmp_path, case):
    """Each hostile output ends the job failed with its reason, nothing in the output folder, one run paid."""
    hostile, shared_options, reason = HOSTILE_OUTPUTS[case]
    options = dict(shared_options)  # the table is shared by every run of this test in the process
    faults = options.pop("faults", {})
    sim = Simulator(SimConfig(latency=0.02, faults=faults))
    result = run(write_manifest(1), Hostile(sim, **hostile), max_attempts=3, **options)
    assert result.exit_code == ExitCode.JOBS_FAILED, result.message
    assert sim.stats()["creates"] == 1  # no second paid run
    assert output_files(tmp_path / "out") == []
    (record,) = export_records(tmp_path / "out")
    assert record["state"] == "failed" and reason in record["error"], record


def test_a_sign_in_page_behind_an_expired_link_gets_fresh_urls_and_the_real_image(write_manifest, run, tmp_path):
    """The first fetch answers an HTML page; the fresh URL answers the image, saved with the server's sha256."""
    sim = Simulator(SimConfig(latency=0.02))
    app = Hostile(sim, files=lambda n: (200, NOT_IMAGES["html"][0], "image/png") if n == 1 else None)
    result = run(write_manifest(1), app)
    assert result.exit_code == ExitCode.OK, result.message
    assert result.stats.url_refreshes == 1 and sim.stats()["creates"] == 1
    (path,) = output_files(tmp_path / "out")
    assert path.name == "job-000.png"
    assert [hashlib.sha256(path.read_bytes()).hexdigest()] == [f["sha256"] for f in sim.stats()["runs"][0]["files"]]


# --- the key, echoed by the server, appears nowhere: stderr, ledger, status, export -------------------


class Echoing:
    """The simulator, except that creates whose prompt says 'refuse' get a 400 and every run's first
    poll a 500, both echoing the request's headers (the key among them) with terminal escape codes."""

    def __init__(self, sim: Simulator):
        self.sim = sim
        self.polled: set[str] = set()

    async def __call__(self, scope: Scope, receive: Any, send: Send) -> None:
        if scope["type"] != "http":
            return
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        echo = f"{HOSTILE_TEXT} request headers: {headers}"
        path = scope["path"]
        body: bytes | None = None
        if scope["method"] == "POST" and path.endswith("/runs"):
            request = b""
            while True:
                message = await receive()
                request += message.get("body", b"")
                if not message.get("more_body"):
                    break
            if b"refuse" in request:
                status, body = 400, json.dumps({"error": {"message": f"content policy: {echo}"}}).encode()
            else:
                replay = [{"type": "http.request", "body": request, "more_body": False}]

                async def replayed() -> dict[str, Any]:
                    return replay.pop() if replay else {"type": "http.disconnect"}

                return await self.sim(scope, replayed, send)
        elif scope["method"] == "GET" and "/runs/" in path and path not in self.polled:
            self.polled.add(path)
            status, body = 500, f"<html><body><pre>{echo}</pre></body></html>".encode()
        if body is None:
            return await self.sim(scope, receive, send)
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"text/html")]})
        await send({"type": "http.response.body", "body": body})


def test_a_key_echoed_by_the_server_reaches_no_output_ledger_or_message(write_manifest, tmp_path):
    """Error bodies echoing Authorization with escape codes: the key and raw escapes are in no file or output."""
    from batchgen.simulator import SimulatorServer

    from .conftest import batchgen_cli

    jobs = [{"id": "ok-1", "prompt": "a lamp"}, {"id": "bad-1", "prompt": "refuse this lamp"}]
    manifest = write_manifest(jobs=jobs)
    out = tmp_path / "out"
    sim = Simulator(SimConfig(latency=0.02))
    with SimulatorServer(Echoing(sim)) as server:  # type: ignore[arg-type]
        env = {"RUNBASE_API_KEY": API_KEY, "RUNBASE_BASE_URL": server.base_url}
        ran = batchgen_cli("run", str(manifest), "--output", str(out), "--no-progress", env=env)
    assert ran.returncode == ExitCode.JOBS_FAILED, ran.stderr
    assert sim.stats()["auth_on_files"] == 0
    texts = {"run stderr": ran.stderr, "run stdout": ran.stdout}
    for args in (["status"], ["status", "--json"], ["export"], ["export", "--format", "csv"]):
        shown = batchgen_cli(*args, "--output", str(out))
        assert shown.returncode == 0, shown.stderr
        texts[" ".join(args)] = shown.stdout + shown.stderr
    assert "content policy" in texts["status --json"]  # the server's reason is kept, scrubbed
    for name, text in texts.items():
        assert API_KEY not in text, name
        assert ESC not in text and "\u202e" not in text, name
    for path in out.rglob("*"):
        if path.is_file():
            assert API_KEY.encode() not in path.read_bytes(), path  # binary files: an ESC byte proves nothing


def test_a_recorded_run_id_that_cannot_be_a_path_segment_is_given_up_at_once(write_manifest, run, sim, tmp_path):
    """A run id holding ESC in the ledger (creates refuse such ids) fails its attempt without a 404 grace."""
    from batchgen.ledger import Ledger
    from batchgen.manifest import load_jobs

    manifest = write_manifest(1)
    with Ledger(tmp_path / "out" / "batchgen.sqlite") as ledger:
        ledger.sync_manifest(str(manifest), load_jobs(manifest), output_dir=str(tmp_path / "out"))
        job = load_jobs(manifest)[0]
        ledger.run_created(ledger.begin_attempt(job), "run\x1b[2J", job)
    result = run(manifest)  # the default grace for 404s is minutes: this test would time out inside it
    assert result.exit_code == ExitCode.OK, result.message
    assert sim.stats()["gets"] >= 1 and all(run["polls"] >= 1 for run in sim.stats()["runs"])
    (record,) = export_records(tmp_path / "out")
    assert record["state"] == "succeeded" and record["attempts"] == 2


# --- the simulator's hostile faults, through the real runner ------------------------------------------

SIM_REFUSALS = {  # fault (probability 1) → what the job's error must say
    "body_html_login": "an HTML page",
    "body_xml_error": "XML",
    "body_svg_script": "SVG",
    "body_empty": "an empty body",
    "body_bin": "no accepted image format",
    "body_huge": "cap",
    "body_cut_image": "cut short",
    "redirect_bad_scheme": "non-http",
    "output_data_url": "non-http",
    "output_file_url": "non-http",
    "no_output_urls": "without output URLs",
}


@pytest.mark.parametrize("fault", sorted(SIM_REFUSALS))
def test_each_hostile_output_of_the_simulator_fails_its_job_with_one_run_paid(write_manifest, run, tmp_path, fault):
    """Every hostile output the simulator can serve fails the job with its reason, leaves no file, pays one run."""
    sim = Simulator(SimConfig(latency=0.02, faults={fault: 1.0}, huge_body_bytes=4 << 20))
    result = run(write_manifest(2), sim, max_attempts=3, max_download_bytes=1 << 20)
    assert result.exit_code == ExitCode.JOBS_FAILED, result.message
    assert sim.stats()["creates"] == 2  # one run per job: no refusal bought a second
    assert output_files(tmp_path / "out") == []
    for record in export_records(tmp_path / "out"):
        assert record["state"] == "failed" and SIM_REFUSALS[fault] in record["error"], record


def test_a_png_labelled_octet_stream_is_saved_as_png(write_manifest, run, tmp_path):
    """The bytes decide: a real PNG served as application/octet-stream is saved as .png with the server's sha256."""
    sim = Simulator(SimConfig(latency=0.02, faults={"png_octet_stream": 1.0}))
    assert run(write_manifest(3), sim).exit_code == ExitCode.OK
    saved = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in output_files(tmp_path / "out")}
    assert sorted(saved) == ["job-000.png", "job-001.png", "job-002.png"]
    assert set(saved.values()) == {f["sha256"] for r in sim.stats()["runs"] for f in r["files"]}


def test_odd_run_ids_from_the_simulator_are_polled_under_their_own_path(write_manifest, run, tmp_path):
    """Runs whose ids are '.', '..', 'a/x', '?x', 'x%2e'... are polled and saved, each paid once."""
    sim = Simulator(SimConfig(latency=0.02, faults={"odd_run_id": 1.0}, seed=3))
    result = run(write_manifest(12), sim)
    assert result.exit_code == ExitCode.OK, result.message
    stats = sim.stats()
    assert stats["creates"] == 12
    ids = {r["id"] for r in stats["runs"]}
    assert {".", ".."} & ids or any("/" in i or "?" in i or "%" in i for i in ids), ids
    saved = {hashlib.sha256(p.read_bytes()).hexdigest() for p in output_files(tmp_path / "out")}
    assert saved == {f["sha256"] for r in stats["runs"] for f in r["files"]} and len(saved) == 12


def test_the_simulator_echoing_the_key_with_escape_codes_leaks_nothing(write_manifest, tmp_path):
    """echo_headers and control_chars on every error (400s, 500s, failed runs): the key and raw ESC appear nowhere."""
    from batchgen.simulator import SimulatorServer

    from .conftest import batchgen_cli

    jobs = [{"id": f"ok-{i}", "prompt": f"a lamp {i}"} for i in range(6)] + [{"id": "bad", "prompt": "refuse me"}]
    manifest = write_manifest(jobs=jobs)
    out = tmp_path / "out"
    faults = {"echo_headers": 1.0, "control_chars": 1.0, "http_500": 0.3}
    config = SimConfig(latency=0.02, faults=faults, failure_rate=0.3, refuse_prompts_containing="refuse", seed=2)
    sim = Simulator(config)
    with SimulatorServer(sim) as server:
        env = {"RUNBASE_API_KEY": API_KEY, "RUNBASE_BASE_URL": server.base_url}
        ran = batchgen_cli("run", str(manifest), "--output", str(out), "--no-progress", "--max-attempts", "2", env=env)
    assert ran.returncode == ExitCode.JOBS_FAILED, ran.stderr
    assert sim.stats()["faults"].get("echo_headers", 0) > 0
    texts = {"run": ran.stdout + ran.stderr}
    for args in (["status"], ["status", "--json"], ["export"], ["export", "--format", "csv"]):
        shown = batchgen_cli(*args, "--output", str(out))
        assert shown.returncode == 0, shown.stderr
        texts[" ".join(args)] = shown.stdout + shown.stderr
    for name, text in texts.items():
        assert API_KEY not in text, name
        assert ESC not in text, name
    for path in out.rglob("*"):
        if path.is_file():
            assert API_KEY.encode() not in path.read_bytes(), path
