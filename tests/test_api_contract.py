"""The API client's contract, answer by answer: a real ``RunbaseClient`` against a fake Runbase (an
``httpx.MockTransport`` whose handler plays the server, its files host and what goes wrong on the way),
each answer the API document describes and each one real servers give off the happy path turned into
exactly one of batchgen's exceptions with the fields the scheduler reads. Deadlines are tested on an
event loop whose clock the fake server moves forward, so nothing here waits for them."""

from __future__ import annotations

import asyncio
import email.utils
import io
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import anyio
import httpx
import pytest

from batchgen.api import (
    MAX_REDIRECTS,
    MAX_RETRY_AFTER,
    MAX_RUN_ID_LENGTH,
    MAX_STATUS_LENGTH,
    MIN_DOWNLOAD_RATE,
    Download,
    RunbaseClient,
    Timeouts,
    parse_retry_after,
    run_path,
)
from batchgen.errors import (
    ApiError,
    BadRequest,
    Forbidden,
    LinkRefused,
    Misaddressed,
    NotAnImage,
    OutOfCredits,
    OutputUnusable,
    RateLimited,
    Redirected,
    RunIdRefused,
    RunNotFound,
    TransientError,
    Unauthorized,
    UnusableRun,
)
from batchgen.images import IMAGE_TYPES, JPEG_END, JPEG_HEADERS, PNG_END, PNG_IHDR, PNG_SIGNATURE, SNIFF_BYTES
from batchgen.models import JobSpec, RunInfo, image_input
from batchgen.text import MAX_SERVER_TEXT, REDACTED

from .conftest import API_KEY, BASE_URL

JOB = JobSpec(job_id="lamp", input=image_input("a ceramic lamp"))
PNG = PNG_SIGNATURE + PNG_IHDR + bytes(range(17)) + b"\x00\x00\x00\x00" + PNG_END  # signature, IHDR ... IEND
JPEG = b"\xff\xd8\xff\xe0\x00\x10" + JPEG_HEADERS[0] + bytes(range(24)) + JPEG_END
FILE_URL = "http://files.test/out/lamp.png"
Answer = Callable[[httpx.Request], "httpx.Response | Awaitable[httpx.Response]"]


# --- the fake server, and a loop whose clock it can move ----------------------------------------------


class SteppedLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock a fake server moves forward: deadlines pass without waiting for them."""

    def __init__(self) -> None:
        super().__init__()
        self.skipped = 0.0

    def time(self) -> float:
        return super().time() + self.skipped


async def skip(seconds: float) -> None:
    """Move the loop's clock ``seconds`` on, then let the loop run what fell due (a deadline, say)."""
    loop = asyncio.get_running_loop()
    assert isinstance(loop, SteppedLoop)
    loop.skipped += seconds
    await asyncio.sleep(0.001)
    await asyncio.sleep(0.001)


class Chunks(httpx.AsyncByteStream):
    """A response body sent in pieces; a callable piece is awaited instead of sent (a stall, a clock skip)."""

    def __init__(self, *pieces: bytes | Callable[[], Awaitable[None]]):
        self.pieces = pieces
        self.sent = 0
        self.closed = False

    async def aclose(self) -> None:
        self.closed = True

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for piece in self.pieces:
            if isinstance(piece, bytes):
                self.sent += len(piece)
                yield piece
            else:
                await piece()


class Server:
    """A fake Runbase (API and files hosts alike): ``answer`` plays the server; every request is kept."""

    def __init__(self, answer: Answer):
        self.answer = answer
        self.requests: list[httpx.Request] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        response = self.answer(request)
        return response if isinstance(response, httpx.Response) else await response

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self)


def answer(status: int, body: Any = b"", headers: dict[str, str] | None = None) -> httpx.Response:
    """An answer as a server sends it: ``body`` (JSON unless it is bytes) streamed, with its Content-Length."""
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.Response(
        status, headers={"Content-Length": str(len(content)), **(headers or {})}, stream=Chunks(content)
    )


def reply(status: int, body: Any = b"", headers: dict[str, str] | None = None) -> Server:
    """A server that gives every request the same answer."""
    return Server(lambda request: answer(status, body, headers))


def call(server: Server, method: str, *args: Any, **options: Any) -> Any:
    """``client.<method>(*args)`` on a client of the fake server, on the stepped loop."""

    async def main() -> Any:
        async with RunbaseClient(BASE_URL, API_KEY, transport=server.transport(), **options) as client:
            return await getattr(client, method)(*args)

    return anyio.run(main, backend_options={"loop_factory": SteppedLoop})


def failure(server: Server, method: str, *args: Any, **options: Any) -> ApiError:
    """The ApiError ``client.<method>(*args)`` raises (the test fails if it returns)."""
    with pytest.raises(ApiError) as caught:
        call(server, method, *args, **options)
    return caught.value


def create(server: Server, **options: Any) -> Any:
    return call(server, "create_run", JOB, **options)


def download(server: Server, url: str = FILE_URL, **options: Any) -> tuple[Download, bytes]:
    sink = io.BytesIO()
    return call(server, "download", url, sink, **options), sink.getvalue()


def download_failure(server: Server, url: str = FILE_URL, **options: Any) -> tuple[ApiError, bytes]:
    sink = io.BytesIO()
    return failure(server, "download", url, sink, **options), sink.getvalue()


# --- what goes out ---------------------------------------------------------------------------------


def test_create_posts_the_job_body_with_the_key_to_the_runs_path():
    """A create is one POST of the job's request body to <base>/runs with the key and batchgen's User-Agent."""
    server = reply(201, {"id": "run_1", "status": "queued"})
    assert create(server) == RunInfo(run_id="run_1", status="queued")
    (request,) = server.requests
    assert (request.method, str(request.url)) == ("POST", f"{BASE_URL}/runs")
    assert json.loads(request.content) == JOB.request_body()
    assert request.headers["authorization"] == f"Bearer {API_KEY}"
    assert request.headers["user-agent"] == "batchgen"
    assert request.headers["content-type"] == "application/json"


@pytest.mark.parametrize("base", [BASE_URL, BASE_URL + "/"])
def test_a_poll_gets_the_run_path_under_the_base_url(base):
    """A poll is one GET of <base>/runs/<id> (a trailing slash on the base changes nothing), with the key."""
    server = reply(200, {"id": "a b/c", "status": "running"})

    async def main() -> RunInfo:
        async with RunbaseClient(base, API_KEY, transport=server.transport()) as client:
            return await client.get_run("a b/c")

    assert anyio.run(main) == RunInfo(run_id="a b/c", status="running")
    (request,) = server.requests
    assert request.method == "GET"
    assert request.url.raw_path.decode() == httpx.URL(BASE_URL).raw_path.decode() + "/" + run_path("a b/c")
    assert run_path("a b/c") == "runs/a%20b%2Fc"
    assert request.headers["authorization"] == f"Bearer {API_KEY}"


@pytest.mark.parametrize("run_id", ["run_1", "a b/c", ".", "..", "...", "ü?#%2e;x", "x" * MAX_RUN_ID_LENGTH])
@pytest.mark.parametrize("base", [BASE_URL, "http://127.0.0.1:8000", "https://api.example.com:8443/v1/?tenant=a"])
def test_a_poll_url_is_the_one_httpx_parses_from_the_base_and_the_run_path(base, run_id):
    """Each poll's URL, built from the base URL's parts without parsing the whole URL again, is the URL httpx
    makes of the text <base>/<run path>, whatever the id, and still when the base URL carries a query."""
    server = reply(200, {"id": run_id, "status": "running"})

    async def main() -> RunInfo:
        async with RunbaseClient(base, API_KEY, transport=server.transport()) as client:
            return await client.get_run(run_id)

    assert anyio.run(main).run_id == run_id
    (request,) = server.requests
    assert request.url == httpx.URL(base.rstrip("/") + "/" + run_path(run_id))
    assert str(request.url) == str(httpx.URL(base.rstrip("/") + "/" + run_path(run_id)))


def test_a_create_body_is_the_json_httpx_would_send():
    """The create's body, encoded by batchgen, is byte for byte what httpx sends for json=<the request body>, with
    its Content-Type and Content-Length, non-ASCII text included."""
    job = JobSpec(job_id="lamp", input=image_input("une lampe « café » 🌙"))
    server = reply(201, {"id": "run_1", "status": "queued"})

    async def main() -> RunInfo:
        async with RunbaseClient(BASE_URL, API_KEY, transport=server.transport()) as client:
            return await client.create_run(job)

    anyio.run(main)
    (request,) = server.requests
    expected = httpx.Request("POST", BASE_URL, json=job.request_body())
    assert request.content == expected.content
    for header in ("content-type", "content-length"):
        assert request.headers[header] == expected.headers[header]


@pytest.mark.parametrize("run_id", [".", ".."])
def test_dot_run_ids_are_sent_encoded_so_no_normalisation_can_drop_them(run_id):
    """The ids '.' and '..' go out as %2E segments, never as dot segments a URL parser would remove."""
    assert run_path(run_id) == "runs/" + "%2E" * len(run_id)


@pytest.mark.parametrize(
    ("timeouts", "expected"),
    [
        (None, {"connect": 10.0, "read": 30.0, "write": 30.0, "pool": 60.0}),
        (5, {"connect": 5.0, "read": 5.0, "write": 5.0, "pool": 60.0}),
        (100, {"connect": 10.0, "read": 100.0, "write": 100.0, "pool": 100.0}),
        (Timeouts(connect=1, read=2, write=3, pool=4), {"connect": 1.0, "read": 2.0, "write": 3.0, "pool": 4.0}),
    ],
)
def test_each_request_carries_the_timeouts_asked_for(timeouts, expected):
    """--timeout's one number → connect ≤ 10 s, read and write of that many seconds, pool ≥ 60 s, on every request."""
    if isinstance(timeouts, int):  # as --timeout gives it (built here, where the code under test runs)
        timeouts = Timeouts.from_seconds(timeouts)
    server = reply(201, {"id": "r", "status": "queued"})
    call(server, "create_run", JOB, timeouts=timeouts)
    call(server, "get_run", "r", timeouts=timeouts)
    server.answer = lambda request: answer(200, PNG)
    download(server, timeouts=timeouts)
    assert [request.extensions["timeout"] for request in server.requests] == [expected] * 3


@pytest.mark.parametrize("base", ["ftp://runbase.net/api/v1", "runbase.net/api/v1", "http://", "file:///api"])
def test_a_base_url_that_is_not_http_is_refused(base):
    """A base URL that is not http(s) with a host is an ApiError naming it, before any request."""
    with pytest.raises(ApiError, match="must be an http"):
        RunbaseClient(base, API_KEY, transport=reply(200).transport())


def test_the_client_shows_its_base_url_and_never_its_key():
    """repr() names the base URL and hides the key."""
    client = RunbaseClient(BASE_URL, API_KEY, transport=reply(200).transport())
    assert repr(client) == f"RunbaseClient(base_url={BASE_URL!r})"
    anyio.run(client.aclose)


def test_before_send_is_awaited_once_just_before_the_request_leaves():
    """A create and a poll each await their before_send once, before the server sees their request."""
    server = reply(201, {"id": "run_1"})
    seen: list[int] = []

    async def before_send() -> None:
        seen.append(len(server.requests))

    async def main() -> None:
        async with RunbaseClient(BASE_URL, API_KEY, transport=server.transport()) as client:
            await client.create_run(JOB, before_send=before_send)
            await client.get_run("run_1", before_send=before_send)
            await client.get_run("run_1")

    anyio.run(main)
    assert seen == [0, 1] and len(server.requests) == 3


def test_concurrent_requests_wait_for_one_of_max_connections_slots():
    """With max_connections=2, at most two API requests and two downloads are at the server at once."""
    active = {"api": 0, "files": 0}
    peak = {"api": 0, "files": 0}

    async def serve(request: httpx.Request) -> httpx.Response:
        side = "files" if request.url.host == "files.test" else "api"
        active[side] += 1
        peak[side] = max(peak[side], active[side])
        for _ in range(5):
            await asyncio.sleep(0)
        active[side] -= 1
        return answer(200, PNG if side == "files" else {"id": "r"})

    async def main() -> None:
        async with RunbaseClient(BASE_URL, API_KEY, transport=Server(serve).transport(), max_connections=2) as client:
            async with anyio.create_task_group() as group:
                for _ in range(5):
                    group.start_soon(client.get_run, "r")
                    group.start_soon(client.download, FILE_URL, io.BytesIO())

    anyio.run(main)
    assert peak == {"api": 2, "files": 2}


# --- status codes: each one becomes exactly one exception ---------------------------------------------

# status -> (exception on create, maybe_created on create, exception on a poll)
STATUSES: dict[int, tuple[type[ApiError], bool, type[ApiError]]] = {
    400: (BadRequest, False, TransientError),
    401: (Unauthorized, False, Unauthorized),
    402: (OutOfCredits, False, OutOfCredits),
    403: (Forbidden, False, Forbidden),
    404: (Misaddressed, False, RunNotFound),
    405: (Misaddressed, False, TransientError),
    408: (TransientError, False, TransientError),
    409: (BadRequest, False, TransientError),
    410: (BadRequest, False, TransientError),
    413: (BadRequest, False, TransientError),
    422: (BadRequest, False, TransientError),
    425: (TransientError, False, TransientError),
    499: (BadRequest, False, TransientError),
    500: (TransientError, False, TransientError),
    502: (TransientError, False, TransientError),
    503: (TransientError, False, TransientError),
    504: (TransientError, True, TransientError),
    520: (TransientError, False, TransientError),
    524: (TransientError, True, TransientError),
}


@pytest.mark.parametrize("status", sorted(STATUSES))
def test_each_status_on_create_is_one_exception_with_its_status(status):
    """4xx → BadRequest; 401/402/403 → account errors; 404/405 → Misaddressed (no create at that address: the
    base URL is wrong, no job is); 408/425/5xx → TransientError (504/524: maybe created)."""
    expected, maybe, _ = STATUSES[status]
    error = failure(reply(status, {"error": {"message": "nope"}}), "create_run", JOB)
    assert type(error) is expected
    assert error.status == status
    if expected is Misaddressed:
        assert error.message.startswith(f"HTTP {status}: nope; {BASE_URL}/runs does not take creates")
        assert "RUNBASE_BASE_URL" in error.message
    else:
        assert error.message == f"HTTP {status}: nope"
    assert getattr(error, "maybe_created", False) is maybe


@pytest.mark.parametrize("status", sorted(STATUSES))
def test_each_status_on_a_poll_is_one_exception_with_its_status(status):
    """A poll's 404 → RunNotFound, 401/402/403 → account errors, other errors → TransientError, never maybe created."""
    _, _, expected = STATUSES[status]
    error = failure(reply(status, {"error": "nope"}), "get_run", "run_1")
    assert type(error) is expected
    assert error.status == status
    assert error.message == f"HTTP {status}: nope"
    assert getattr(error, "maybe_created", False) is False


@pytest.mark.parametrize("method", ["create_run", "get_run"])
def test_a_429_is_rate_limited_with_the_servers_wait(method):
    """429 on a create or a poll → RateLimited with status 429, retry_after from the header, never maybe created."""
    server = reply(429, {"error": "slow down"}, {"Retry-After": "7"})
    error = failure(server, method, JOB if method == "create_run" else "run_1")
    assert type(error) is RateLimited
    assert (error.status, error.retry_after, error.maybe_created) == (429, 7.0, False)
    assert error.message == "HTTP 429: slow down"


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_from_the_api_is_not_followed_and_the_key_goes_nowhere_else(status):
    """An API redirect is Redirected (it stops the batch: the base URL is wrong), never followed: its
    Location (another host) is never asked, so the key never leaves the API host. The message names
    where it pointed, resolved and without its query, and how to fix the address."""
    server = reply(status, b"", {"Location": "http://elsewhere.test/steal?sig=secret"})
    for method, arg in (("create_run", JOB), ("get_run", "run_1")):
        error = failure(server, method, arg)
        assert type(error) is Redirected and error.status == status
        assert error.location == "http://elsewhere.test/steal"
        assert error.message.startswith(f"HTTP {status}: the API at {BASE_URL}/runs")
        assert "redirects to http://elsewhere.test/steal; " in error.message and "secret" not in error.message
        assert "RUNBASE_BASE_URL" in error.message
        assert not getattr(error, "maybe_created", False)
    assert {request.url.host for request in server.requests} == {"api.runbase.test"}
    assert len(server.requests) == 2


@pytest.mark.parametrize(("location", "shown"), [("/v2/runs", "http://api.runbase.test/v2/runs"), ("", None)])
def test_a_relative_or_missing_api_redirect_location_is_named_as_the_user_would_use_it(location, shown):
    """A relative Location is resolved against the request; none at all is said so."""
    server = reply(301, b"", {"Location": location} if location else {})
    error = failure(server, "create_run", JOB)
    assert type(error) is Redirected and error.location == shown
    assert (f"redirects to {shown};" if shown else "redirects without a location;") in error.message


# --- Retry-After, in every form --------------------------------------------------------------------

RETRY_AFTER = {
    "7": 7.0,
    "0.5": 0.5,
    " 3 ": 3.0,
    "0": 0.0,
    "-5": 0.0,
    "99999": MAX_RETRY_AFTER,
    "inf": MAX_RETRY_AFTER,
    "nan": None,
    "soon": None,
    "": None,
    "7 seconds": None,
    "Wed, 21 Oct 2015 07:28:00 GMT": 0.0,  # a date in the past: no wait
    "Fri, 01 Jan 2100 00:00:00 GMT": MAX_RETRY_AFTER,  # far ahead: capped
    "Fri, 31 Feb 2100 00:00:00 GMT": None,  # no such day
}


@pytest.mark.parametrize("header", sorted(RETRY_AFTER))
def test_retry_after_in_every_form_a_server_sends(header):
    """Retry-After as seconds, an HTTP date, or garbage → seconds within [0, MAX_RETRY_AFTER], or None when unusable."""
    error = failure(reply(429, b"", {"Retry-After": header}), "get_run", "run_1")
    assert isinstance(error, RateLimited)
    assert error.retry_after == RETRY_AFTER[header]


def test_a_429_without_retry_after_has_no_wait():
    """A 429 with no Retry-After header → retry_after None (the throttle chooses the pause)."""
    error = failure(reply(429, b""), "create_run", JOB)
    assert isinstance(error, RateLimited) and error.retry_after is None


NOW = 1_800_000_000.0  # a whole second, in 2027


def asctime(when: time.struct_time) -> str:
    """The asctime HTTP-date form: 'Sun Nov  6 08:49:37 1994' (the day padded with a space)."""
    return time.strftime("%a %b ", when) + f"{when.tm_mday:2d}" + time.strftime(" %H:%M:%S %Y", when)


def test_an_http_date_is_counted_from_now():
    """A Retry-After date two minutes ahead of now is 120 s, in each of the three HTTP-date formats."""
    now = NOW
    when = time.gmtime(now + 120)
    forms = [
        email.utils.formatdate(now + 120, usegmt=True),  # IMF-fixdate
        time.strftime("%A, %d-%b-%y %H:%M:%S GMT", when),  # RFC 850
        asctime(when),  # no zone, and it means GMT
    ]
    assert [parse_retry_after(form, now=now) for form in forms] == [120.0, 120.0, 120.0]


@pytest.fixture
def far_from_utc() -> Iterator[None]:
    """The machine's local time zone is five hours behind UTC for the test."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = "EST+05"
    time.tzset()
    try:
        yield
    finally:
        if before is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = before
        time.tzset()


def test_an_http_date_without_a_zone_is_gmt_whatever_the_local_zone(far_from_utc):
    """An asctime or '-0000' Retry-After date is GMT (as HTTP says), not the machine's local time."""
    now = NOW
    when = time.gmtime(now + 120)
    unknown_zone = time.strftime("%a, %d %b %Y %H:%M:%S -0000", when)
    assert parse_retry_after(asctime(when), now=now) == 120.0
    assert parse_retry_after(unknown_zone, now=now) == 120.0


# --- what an error answer says ------------------------------------------------------------------------

ERROR_BODIES: list[tuple[int, bytes, str]] = [
    (400, b'{"error": {"message": "prompt too long"}}', "prompt too long"),
    (400, b'{"error": "prompt too long"}', "prompt too long"),
    (400, b'{"message": "prompt too long"}', "prompt too long"),
    (400, b'{"detail": "prompt too long"}', "prompt too long"),
    (400, b'{"error": {"code": 7}}', "{'code': 7}"),
    (400, b'{"error": "", "detail": "x"}', '{"error": "", "detail": "x"}'),
    (400, b"[1, 2]", "[1, 2]"),
    (502, b"<html><body><h1>502 Bad Gateway</h1>\n<hr>nginx</body></html>", "502 Bad Gateway nginx"),
    (503, b"upstream connect error\r\n  or disconnect", "upstream connect error or disconnect"),
    (400, b"", "Bad Request"),
    (400, b"   \n ", "Bad Request"),
    (499, b"", "no details"),
    (500, b"\xff\xfe not utf-8 \x9b31m", "\ufffd\ufffd not utf-8 \ufffd31m"),
    (400, b'{"error": "' + b"[" * 100_000 + b'"}', "[" * (MAX_SERVER_TEXT - 1) + "…"),
    (400, b"[" * 100_000, "[" * (MAX_SERVER_TEXT - 1) + "…"),
]


@pytest.mark.parametrize(("status", "body", "shown"), ERROR_BODIES)
def test_an_error_body_becomes_its_most_useful_short_text(status, body, shown):
    """JSON error/message/detail, an HTML page's words, plain text, an empty body's reason, huge or broken bodies."""
    error = failure(reply(status, body), "create_run", JOB)
    assert error.message == f"HTTP {status}: {shown}"


def test_an_error_body_echoing_the_key_shows_it_redacted():
    """A server that echoes the Authorization header in its error gets it redacted in the message."""
    server = Server(lambda request: answer(401, {"error": f"bad header {request.headers['authorization']}"}))
    error = failure(server, "get_run", "run_1")
    assert API_KEY not in error.message and REDACTED in error.message


# --- a create's 2xx answer --------------------------------------------------------------------------


@pytest.mark.parametrize("status", [200, 201, 202])
def test_a_create_accepted_with_any_2xx_gives_the_run(status):
    """200, 201 and 202 with an id are all a created run; an integer id becomes its text."""
    assert create(reply(status, {"id": 42, "status": "Queued"})) == RunInfo(run_id="42", status="queued")


@pytest.mark.parametrize(
    "body",
    [{}, {"id": ""}, {"id": None}, {"id": True}, {"id": 1.5}, {"id": ["r"]}, {"run": {"id": "r"}}],
    ids=repr,
)
def test_a_create_answer_without_a_usable_id_may_have_made_a_run(body):
    """A 2xx without a string (or integer) id is a TransientError that may have made a run (it was accepted)."""
    error = failure(reply(201, body), "create_run", JOB)
    assert type(error) is TransientError
    assert error.maybe_created and error.status == 201
    assert error.message.startswith("the API accepted the run but its answer has no run id")


@pytest.mark.parametrize(
    "body",
    [b"", b"not json", b"[]", b'"r"', b"null", b"\xff\xfe{}", b"[" * 100_000, b'{"id": "r"'],
    ids=["empty", "text", "list", "string", "null", "not utf-8", "too deep", "cut"],
)
def test_a_create_answer_that_is_not_a_json_object_may_have_made_a_run(body):
    """A 2xx whose body is not a JSON object is a TransientError that may have made a run."""
    error = failure(reply(201, body), "create_run", JOB)
    assert type(error) is TransientError
    assert error.maybe_created and error.status == 201
    assert error.message.startswith("HTTP 201 with a body that is not a JSON object")


def test_a_create_answered_204_may_have_made_a_run():
    """204 (no body at all) to a create: the run may exist."""
    error = failure(reply(204), "create_run", JOB)
    assert isinstance(error, TransientError) and error.maybe_created and error.status == 204


@pytest.mark.parametrize(
    "run_id", ["a\x1b[2Jb", "a\nb", "\u202eabc", "x" * (MAX_RUN_ID_LENGTH + 1)], ids=["esc", "newline", "bidi", "long"]
)
def test_a_create_answered_with_an_unusable_id_made_a_run_that_cannot_be_followed(run_id):
    """An id that cannot be one path segment is UnusableRun (a run made, another create would meet the same), never
    rewritten."""
    error = failure(reply(201, {"id": run_id}), "create_run", JOB)
    assert type(error) is UnusableRun
    assert error.status == 201
    assert error.message.startswith("the API accepted the run but answered with an unusable id: refusing run id")
    assert "\x1b" not in error.message and "\n" not in error.message


def test_the_longest_run_id_is_accepted():
    """An id of exactly MAX_RUN_ID_LENGTH printable characters is a run, polled under its own path."""
    run_id = "r" * MAX_RUN_ID_LENGTH
    assert create(reply(201, {"id": run_id})).run_id == run_id
    server = reply(200, {"id": run_id})
    assert call(server, "get_run", run_id).run_id == run_id
    assert server.requests[0].url.raw_path.decode().endswith("/runs/" + run_id)


# --- a poll's answer --------------------------------------------------------------------------------


@pytest.mark.parametrize("run_id", ["", "a\x1bb", "a\nb", "\u202eabc", "x" * (MAX_RUN_ID_LENGTH + 1)])
def test_a_run_id_that_cannot_be_a_path_segment_is_refused_without_a_request(run_id):
    """Empty ids, control characters, bidi overrides and absurd lengths → RunIdRefused, and nothing is sent."""
    server = reply(200, {"id": "r"})
    error = failure(server, "get_run", run_id)
    assert type(error) is RunIdRefused
    assert error.message.startswith("refusing run id") and "\x1b" not in error.message
    assert server.requests == []


@pytest.mark.parametrize("answered", ["run_other", 7])
def test_an_answer_about_another_run_is_refused(answered):
    """A poll answered about another id (a proxy normalised the path) → RunIdRefused naming both ids."""
    error = failure(reply(200, {"id": answered, "status": "succeeded"}), "get_run", "run_1")
    assert type(error) is RunIdRefused
    assert error.message == (
        f"asked about run 'run_1', the API answered about {str(answered)!r}: the id does not survive the way to the API"
    )


@pytest.mark.parametrize("answered", [{"id": "7"}, {"id": 7}, {"id": ""}, {"id": None}, {"id": True}, {}], ids=repr)
def test_an_answer_naming_the_same_run_or_none_is_accepted(answered):
    """An answer whose id is the one asked (as text or a number) or absent is about this run."""
    assert call(reply(200, {**answered, "status": "running"}), "get_run", "7") == RunInfo("7", "running")


@pytest.mark.parametrize("body", [b"", b"<html>oops</html>", b"[]", b"\xff"], ids=["empty", "html", "list", "bytes"])
def test_a_poll_answer_that_is_not_a_json_object_is_transient(body):
    """A 200 poll whose body is not a JSON object → TransientError (poll again), not maybe created."""
    error = failure(reply(200, body), "get_run", "run_1")
    assert type(error) is TransientError
    assert error.status == 200 and not error.maybe_created


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            {"status": " Succeeded ", "output": {"urls": ["https://f.test/1.png", "https://f.test/2.png"]}},
            RunInfo("r", "succeeded", ("https://f.test/1.png", "https://f.test/2.png")),
        ),
        (
            {"status": "succeeded", "output": ["https://f.test/1.png"]},
            RunInfo("r", "succeeded", ("https://f.test/1.png",)),
        ),
        (
            {"status": "succeeded", "output": {"urls": "https://f.test/1.png"}},
            RunInfo("r", "succeeded", ("https://f.test/1.png",)),
        ),
        (
            {
                "status": "succeeded",
                "output": {"urls": ["https://f.test/1.png", "", None, 3, ["https://f.test/2.png"]]},
            },
            RunInfo("r", "succeeded", ("https://f.test/1.png",)),
        ),
        ({"status": "succeeded", "output": {"urls": {"a": "https://f.test/1.png"}}}, RunInfo("r", "succeeded")),
        ({"status": "succeeded", "output": "https://f.test/1.png"}, RunInfo("r", "succeeded")),
        ({"status": "succeeded", "output": None}, RunInfo("r", "succeeded")),
        ({"status": "succeeded"}, RunInfo("r", "succeeded")),
        ({"status": 3}, RunInfo("r", "unknown")),
        ({}, RunInfo("r", "unknown")),
        ({"status": "x" * 100}, RunInfo("r", "x" * (MAX_STATUS_LENGTH - 1) + "…")),
        ({"status": "failed", "error": "nsfw"}, RunInfo("r", "failed", error="nsfw")),
        ({"status": "failed", "error": {"message": "nsfw", "code": 9}}, RunInfo("r", "failed", error="nsfw")),
        ({"status": "failed", "error": {"code": 9}}, RunInfo("r", "failed", error='{"code": 9}')),
        ({"status": "failed", "error": {"message": ""}}, RunInfo("r", "failed", error='{"message": ""}')),
        ({"status": "failed", "error": 500}, RunInfo("r", "failed", error="500")),
        ({"status": "failed", "error": ""}, RunInfo("r", "failed")),
        ({"status": "failed", "error": None}, RunInfo("r", "failed")),
        ({"status": "failed", "error": "a\n\n  b"}, RunInfo("r", "failed", error="a b")),
    ],
    ids=repr,
)
def test_a_run_is_read_tolerantly(body, expected):
    """Status words trimmed and lowercased (else 'unknown'), URLs from output.urls in each shape, the error as text."""
    assert call(reply(200, body), "get_run", "r") == expected


# --- what goes wrong on the way: the transport's exceptions ----------------------------------------


def raising(error: type[httpx.HTTPError], text: str = "it broke") -> Server:
    """A way to the server that fails with ``error`` (as httpx reports a refused connection, a reset...)."""

    def fail(request: httpx.Request) -> httpx.Response:
        raise error(text, request=request) if issubclass(error, httpx.RequestError) else error(text)

    return Server(fail)


# exception -> (message start, maybe created when a create met it)
TRANSPORT_ERRORS: dict[type[httpx.HTTPError], tuple[str, bool]] = {
    httpx.ConnectError: ("could not connect: ConnectError: it broke", False),
    httpx.ConnectTimeout: ("could not connect: ConnectTimeout: it broke", False),
    httpx.PoolTimeout: ("could not connect: PoolTimeout: it broke", False),
    httpx.ReadTimeout: ("no answer in time: ReadTimeout: it broke", True),
    httpx.WriteTimeout: ("no answer in time: WriteTimeout: it broke", True),
    httpx.ReadError: ("connection failed: ReadError: it broke", True),
    httpx.WriteError: ("connection failed: WriteError: it broke", True),
    httpx.RemoteProtocolError: ("connection failed: RemoteProtocolError: it broke", True),
    httpx.LocalProtocolError: ("connection failed: LocalProtocolError: it broke", True),
    httpx.ProxyError: ("connection failed: ProxyError: it broke", True),
}


@pytest.mark.parametrize("error", list(TRANSPORT_ERRORS), ids=lambda e: e.__name__)
def test_a_create_that_may_have_reached_the_server_says_so(error):
    """Refused connections and pool waits made no run; timeouts, resets and protocol errors after sending may have."""
    message, maybe = TRANSPORT_ERRORS[error]
    failed = failure(raising(error), "create_run", JOB)
    assert type(failed) is TransientError
    assert failed.message == message and failed.maybe_created is maybe and failed.status is None
    assert isinstance(failed.__cause__, error)


@pytest.mark.parametrize("error", list(TRANSPORT_ERRORS), ids=lambda e: e.__name__)
def test_a_poll_that_failed_on_the_way_is_transient_and_created_nothing(error):
    """Every transport failure of a poll is a TransientError, never maybe created."""
    failed = failure(raising(error), "get_run", "run_1")
    assert type(failed) is TransientError
    assert failed.message == TRANSPORT_ERRORS[error][0] and failed.maybe_created is False


def test_a_transport_error_without_text_is_named_by_its_kind():
    """An exception with no message is shown by its class name alone."""
    assert failure(raising(httpx.ReadError, ""), "get_run", "r").message == "connection failed: ReadError"


def test_a_transport_error_quoting_the_key_is_scrubbed():
    """Text of a transport exception that holds the key reaches no message."""
    failed = failure(raising(httpx.ConnectError, f"proxy said Authorization: Bearer {API_KEY}\x1b[2J"), "get_run", "r")
    assert API_KEY not in failed.message and REDACTED in failed.message and "\x1b" not in failed.message


def test_a_created_run_whose_answer_cannot_be_decoded_may_exist():
    """A 201 whose gzip body is broken came from a server that took the create: maybe created, never sent twice."""
    server = reply(201, b"\x1f\x8b not really gzip", {"Content-Encoding": "gzip"})
    failed = failure(server, "create_run", JOB)
    assert type(failed) is TransientError
    assert failed.message.startswith("undecodable response: DecodingError")
    assert failed.maybe_created


def test_a_poll_whose_answer_cannot_be_decoded_is_transient():
    """A poll answered with a broken gzip body → TransientError: poll again."""
    failed = failure(reply(200, b"\x1f\x8b broken", {"Content-Encoding": "gzip"}), "get_run", "r")
    assert type(failed) is TransientError and not failed.maybe_created


# --- deadlines: the whole answer within connect + 2 × read ---------------------------------------------

TIMEOUTS = Timeouts(connect=1.0, read=2.0, write=2.0, pool=60.0)
DEADLINE = TIMEOUTS.connect + 2 * TIMEOUTS.read


def late(seconds: float, status: int = 200, body: Any = b'{"id": "run_1", "status": "queued"}') -> Server:
    """A server whose answer comes ``seconds`` after the request (on the stepped clock)."""

    async def answer_late(request: httpx.Request) -> httpx.Response:
        await skip(seconds)
        return answer(status, body)

    return Server(answer_late)


@pytest.mark.parametrize("method", ["create_run", "get_run"])
def test_an_answer_just_inside_the_deadline_is_taken(method):
    """An answer arriving just before connect + 2 × read seconds is used."""
    info = call(late(DEADLINE - 0.5), method, JOB if method == "create_run" else "run_1", timeouts=TIMEOUTS)
    assert info.run_id == "run_1"


def test_a_create_answered_after_the_deadline_may_have_made_a_run():
    """No complete answer within connect + 2 × read seconds → TransientError, maybe created (the request left)."""
    failed = failure(late(DEADLINE + 0.5), "create_run", JOB, timeouts=TIMEOUTS)
    assert type(failed) is TransientError
    assert failed.message == f"no complete answer within {DEADLINE:.0f} s" and failed.maybe_created


def test_a_poll_answered_after_the_deadline_is_transient():
    """A poll past its deadline → TransientError, not maybe created."""
    failed = failure(late(DEADLINE + 0.5), "get_run", "run_1", timeouts=TIMEOUTS)
    assert type(failed) is TransientError
    assert failed.message == f"no complete answer within {DEADLINE:.0f} s" and not failed.maybe_created


def test_a_body_trickled_past_the_deadline_is_given_up():
    """Headers in time and the body trickling past the deadline: TransientError, maybe created."""
    body = b'{"id": "run_1"}'

    async def trickle() -> None:
        await skip(DEADLINE + 0.5)

    server = Server(
        lambda request: httpx.Response(
            201, headers={"Content-Length": str(len(body))}, stream=Chunks(body[:5], trickle, body[5:])
        )
    )
    failed = failure(server, "create_run", JOB, timeouts=TIMEOUTS)
    assert failed.message.startswith("no complete answer within") and failed.maybe_created


# --- downloads ---------------------------------------------------------------------------------------


def files(body: bytes, content_type: str = "image/png", status: int = 200, **headers: str) -> Server:
    return reply(status, body, {"Content-Type": content_type, **headers})


def test_a_download_saves_the_bytes_and_never_sends_the_key():
    """An image is streamed whole into the sink; the files host (even the API's own) never sees Authorization."""
    for url in (FILE_URL, f"{BASE_URL}/files/lamp.png"):
        server = files(PNG)
        result, saved = download(server, url)
        assert saved == PNG
        assert result == Download("image/png", len(PNG), IMAGE_TYPES["image/png"], "image/png")
        (request,) = server.requests
        assert request.method == "GET" and str(request.url) == url
        assert "authorization" not in request.headers and request.headers["user-agent"] == "batchgen"


@pytest.mark.parametrize(
    ("declared", "body", "declared_type", "note"),
    [
        ("image/png", PNG, "image/png", None),
        ("IMAGE/PNG; charset=binary", PNG, "image/png", None),
        ("image/jpg", JPEG, "image/jpg", None),
        ("image/jpeg", JPEG, "image/jpeg", None),
        ("image/jpg", PNG, "image/jpg", "declared image/jpg, the bytes are image/png"),
        ("image/jpeg", PNG, "image/jpeg", "declared image/jpeg, the bytes are image/png"),
        ("application/octet-stream", JPEG, "application/octet-stream",
         "declared application/octet-stream, the bytes are image/jpeg"),
        ("", PNG, "", None),
        (f"text/{'x' * 200}", PNG, f"text/{'x' * 74}…", f"declared text/{'x' * 74}…, the bytes are image/png"),
    ],
)  # fmt: skip
def test_the_declared_type_is_kept_and_a_contradiction_noted(declared, body, declared_type, note):
    """The bytes decide the type; the host's Content-Type is kept lowercased, without parameters, noted if different."""
    result, _ = download(files(body, declared))
    assert result.declared_type == declared_type and result.type_mismatch == note


def test_a_download_without_a_content_type_is_judged_by_its_bytes():
    """No Content-Type header at all: the bytes decide and nothing is noted."""
    result, saved = download(Server(lambda request: answer(200, JPEG)))
    assert saved == JPEG and result == Download("image/jpeg", len(JPEG), "jpg", "")


@pytest.mark.parametrize("size", [1, 3, SNIFF_BYTES - 1, SNIFF_BYTES, SNIFF_BYTES + 1])
def test_an_image_in_small_pieces_is_judged_on_its_first_bytes_and_saved_whole(size):
    """Bytes arriving a few at a time are collected until the type can be told, then all reach the sink in order."""
    body = PNG * 3
    server = Server(
        lambda request: httpx.Response(
            200,
            headers={"Content-Length": str(len(body))},
            stream=Chunks(*(body[i : i + size] for i in range(0, len(body), size))),
        )
    )
    result, saved = download(server)
    assert saved == body and result.size == len(body) and result.content_type == "image/png"


def test_a_body_shorter_than_the_sniffed_bytes_is_judged_on_what_there_is():
    """A body of only the PNG signature (under SNIFF_BYTES) starts as a PNG does: by the API's description of
    an image it is one, and is saved as it came."""
    signature = PNG[:8]
    assert len(signature) < SNIFF_BYTES
    result, saved = download(files(signature))
    assert saved == signature and result.content_type == "image/png"


def test_a_body_that_only_starts_like_an_image_is_one():
    """Bytes that start with an image's signature and go on as no real file does (a fake's placeholder,
    an identifying trailer) are an image by the API's description: saved as they came, not held to an end
    their format does not promise."""
    for body in (PNG_SIGNATURE + b"image for job 3", b"\xff\xd8\xff\xe0" + bytes(40), b"RIFF\xff\x00\x00\x00WEBPjunk"):
        result, saved = download(files(body))
        assert saved == body and result.size == len(body)


@pytest.mark.parametrize(
    ("body", "cut"),
    [
        (PNG[:-1], "a PNG cut short"),
        (PNG[: len(PNG) // 2], "a PNG cut short"),
        (JPEG[:-2], "a JPEG cut short"),
        (b"RIFF\x30\x00\x00\x00WEBPVP8 " + bytes(20), "a WebP cut short (its header promises 56 bytes)"),
    ],
)
def test_an_image_that_stops_before_its_formats_end_is_refused(body, cut):
    """Served whole (Content-Length matching), a PNG without IEND, a JPEG without EOI, a short WebP: refused."""
    failed, _ = download_failure(files(body))
    assert type(failed) is NotAnImage and cut in failed.message, failed


def test_complete_images_with_padding_after_their_end_are_saved():
    """A JPEG padded after its end-of-image marker, a WebP followed by a spare byte and a PNG with bytes
    after its IEND chunk are whole images."""
    webp = b"RIFF\x0c\x00\x00\x00WEBPVP8 \x00\x00\x00\x00"
    for body in (JPEG + bytes(16), webp + b"\x00", PNG + b"job 3, after the end"):
        result, saved = download(files(body))
        assert saved == body and result.size == len(body)


@pytest.mark.parametrize(
    ("body", "looks"),
    [
        (b"<!DOCTYPE html><html><body>Sign in</body></html>", "an HTML page"),
        (b"", "an empty body"),
        (b"GIF89a" + bytes(20), "a GIF image"),
        (b"RIFF\x00\x00\x00\x00WAVEfmt ", "bytes of no accepted image format"),
        (b"\x89PNG", "bytes of no accepted image format"),
    ],
)
def test_a_body_that_is_not_an_image_is_refused_and_nothing_reaches_the_sink(body, looks):
    """HTML, empty, GIF, RIFF not WebP, a cut signature → NotAnImage saying what it looks like and the declared type."""
    failed, saved = download_failure(files(body, "image/png"), FILE_URL + "?X-Signature=secret")
    assert type(failed) is NotAnImage
    assert failed.message == f"not an image: {looks}, declared image/png, from {FILE_URL}"
    assert saved == b""


def test_a_non_image_without_a_declared_type_says_so_plainly():
    """A refused body with no Content-Type names only what it looks like."""
    failed, _ = download_failure(Server(lambda request: answer(200, b"<html></html>")))
    assert failed.message == f"not an image: an HTML page, from {FILE_URL}"


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 451])
def test_a_file_host_refusing_the_link_is_link_refused(status):
    """4xx from the files host (other than 408/429) → LinkRefused with that status: fresh URLs may help."""
    failed, saved = download_failure(files(b"AccessDenied", "application/xml", status), FILE_URL + "?sig=secret")
    assert type(failed) is LinkRefused
    assert failed.status == status and failed.message == f"HTTP {status} downloading {FILE_URL}"
    assert saved == b""


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_a_file_host_that_is_busy_or_broken_is_transient(status):
    """408, 429 and 5xx from the files host → TransientError with that status: try again later."""
    failed, _ = download_failure(files(b"busy", "text/plain", status))
    assert type(failed) is TransientError
    assert failed.status == status and failed.message == f"HTTP {status} downloading {FILE_URL}"


CAP = 10 * len(PNG)


@pytest.mark.parametrize(("declared", "refused"), [(CAP, False), (CAP + 1, True)])
def test_a_declared_length_over_the_cap_is_refused_before_any_byte(declared, refused):
    """A Content-Length over max_download_bytes → OutputUnusable before reading; at the cap exactly, it is read."""
    body = PNG * 10 + b"x" * (declared - CAP)
    stream = Chunks(body)
    server = Server(lambda request: httpx.Response(200, headers={"Content-Length": str(declared)}, stream=stream))
    if not refused:
        assert download(server, max_download_bytes=CAP)[1] == body
        return
    failed, saved = download_failure(server, max_download_bytes=CAP)
    assert type(failed) is OutputUnusable
    assert failed.message == f"output is {CAP + 1} bytes, over the {CAP}-byte cap: {FILE_URL}"
    assert saved == b"" and stream.sent == 0


@pytest.mark.parametrize(("size", "refused"), [(CAP, False), (CAP + 1, True)])
def test_a_body_without_a_length_is_cut_at_the_cap(size, refused):
    """A body sent without Content-Length is counted as it comes: one byte over max_download_bytes → OutputUnusable."""
    body = (PNG * 11)[:size]
    server = Server(lambda request: httpx.Response(200, stream=Chunks(body[:CAP], body[CAP:])))
    if not refused:
        assert download(server, max_download_bytes=CAP)[1] == body
        return
    failed, _ = download_failure(server, max_download_bytes=CAP)
    assert type(failed) is OutputUnusable
    assert failed.message == f"output exceeds the {CAP}-byte cap: {FILE_URL}"


@pytest.mark.parametrize("sent", [len(PNG) - 1, len(PNG) + 1, SNIFF_BYTES - 2])
def test_a_body_that_is_not_the_declared_length_is_transient(sent):
    """Fewer (or more) bytes than Content-Length declared → TransientError naming both counts: fetch it again."""
    body = (PNG * 2)[:sent]
    server = Server(lambda request: httpx.Response(200, headers={"Content-Length": str(len(PNG))}, stream=Chunks(body)))
    failed, _ = download_failure(server)
    assert type(failed) is TransientError
    assert failed.message == f"download truncated: got {sent} of {len(PNG)} bytes from {FILE_URL}"


@pytest.mark.parametrize("length", ["-1", "many", ""])
def test_a_content_length_that_is_no_length_is_ignored(length):
    """A negative or non-numeric Content-Length is treated as absent: the body is read and saved."""
    server = Server(lambda request: httpx.Response(200, headers={"Content-Length": length}, stream=Chunks(PNG)))
    assert download(server)[1] == PNG


def redirects(hops: list[str], final: Server | None = None, status: int = 302) -> Server:
    """A files host that redirects through ``hops`` (Location values, in order), then serves a PNG."""
    locations = iter(hops)

    def serve(request: httpx.Request) -> httpx.Response:
        location = next(locations, None)
        return answer(200, PNG) if location is None else answer(status, b"", {"Location": location})

    return Server(serve)


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_download_follows_redirects_by_hand_without_the_key(status):
    """Redirects, relative or to other hosts, are followed hop by hop with no Authorization on any hop."""
    server = redirects(["/b/lamp.png", "https://cdn.test/c.png?sig=1", "d.png", BASE_URL + "/runs"], status=status)
    assert download(server)[1] == PNG
    assert [str(r.url) for r in server.requests] == [
        FILE_URL,
        "http://files.test/b/lamp.png",
        "https://cdn.test/c.png?sig=1",
        "https://cdn.test/d.png",
        BASE_URL + "/runs",
    ]
    assert all("authorization" not in r.headers for r in server.requests)


def test_at_most_max_redirects_are_followed():
    """MAX_REDIRECTS hops are followed; one more → OutputUnusable, and that hop's target is never asked."""
    server = redirects([f"/{n}.png" for n in range(MAX_REDIRECTS)])
    assert download(server)[1] == PNG and len(server.requests) == MAX_REDIRECTS + 1
    server = redirects([f"/{n}.png?sig=s" for n in range(MAX_REDIRECTS + 1)])
    failed, _ = download_failure(server)
    assert type(failed) is OutputUnusable
    assert failed.message == f"more than {MAX_REDIRECTS} redirects for http://files.test/{MAX_REDIRECTS}.png"
    assert len(server.requests) == MAX_REDIRECTS + 1


def test_a_redirect_without_a_location_is_a_refused_link():
    """A 302 with no Location → LinkRefused naming the URL."""
    failed, _ = download_failure(files(b"", "text/plain", 302))
    assert type(failed) is LinkRefused and failed.message == f"redirect without a location from {FILE_URL}"


@pytest.mark.parametrize("target", ["file:///etc/passwd", "data:image/png;base64,iVBORw0KGgo=", "ftp://files.test/x"])
def test_a_redirect_to_another_scheme_is_refused_for_good(target):
    """A hop to file:, data:, ftp: → OutputUnusable (httpx may refuse to build it first); nothing is asked there."""
    server = redirects([target])
    failed, _ = download_failure(server)
    assert type(failed) is OutputUnusable
    assert failed.message.startswith(("refusing to download from a non-http(s) URL", "unusable URL"))
    assert len(server.requests) == 1


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("data:image/png;base64,iVBORw0KGgo=", "data:image/png;base64,…"),
        ("file:///etc/passwd", "file:///etc/passwd"),
        ("javascript:alert(1)", "javascript:alert(1)"),
        ("http:///x.png?sig=s", "http:///x.png"),
    ],
)
def test_a_url_that_is_not_http_is_refused_without_a_request(url, shown):
    """data:, file:, other schemes and host-less URLs → OutputUnusable, shown without their payload or query."""
    server = files(PNG)
    failed, _ = download_failure(server, url)
    assert type(failed) is OutputUnusable
    assert failed.message == f"refusing to download from a non-http(s) URL: {shown}"
    assert server.requests == []


def test_a_url_httpx_cannot_use_is_unusable():
    """A URL with a port that is no number → OutputUnusable ('unusable URL'), nothing sent."""
    server = files(PNG)
    failed, _ = download_failure(server, "http://files.test:abc/x.png")
    assert type(failed) is OutputUnusable and failed.message.startswith("unusable URL: InvalidURL")
    assert server.requests == []


@pytest.mark.parametrize("error", list(TRANSPORT_ERRORS), ids=lambda e: e.__name__)
def test_a_download_that_failed_on_the_way_is_transient(error):
    """A refused connection, timeout or reset while downloading → TransientError."""
    failed, _ = download_failure(raising(error))
    assert type(failed) is TransientError and failed.message == TRANSPORT_ERRORS[error][0]


def test_a_download_cut_off_mid_body_is_transient():
    """The connection failing after part of the image arrived → TransientError ('connection failed')."""

    async def reset() -> None:
        raise httpx.ReadError("connection reset")

    server = Server(lambda request: httpx.Response(200, headers={"Content-Length": "999"}, stream=Chunks(PNG, reset)))
    failed, _ = download_failure(server)
    assert type(failed) is TransientError and failed.message == "connection failed: ReadError: connection reset"
    assert failed.maybe_created is False  # a download makes no run


# --- a download's deadline grows with the bytes received ------------------------------------------------


def stalling(*pieces: bytes | float) -> Server:
    """A files host sending ``pieces``; a number is a stall of that many seconds (on the stepped clock)."""

    def stall(seconds: float) -> Callable[[], Awaitable[None]]:
        return lambda: skip(seconds)

    body = b"".join(p for p in pieces if isinstance(p, bytes))
    chunks = [p if isinstance(p, bytes) else stall(p) for p in pieces]
    return Server(
        lambda request: httpx.Response(200, headers={"Content-Length": str(len(body))}, stream=Chunks(*chunks))
    )


def test_a_host_that_stalls_past_the_deadline_is_given_up():
    """Headers and a first piece in time, then a stall past the deadline → TransientError saying how long it waited."""
    failed, saved = download_failure(stalling(PNG, DEADLINE + 1, PNG), timeouts=TIMEOUTS)
    assert type(failed) is TransientError
    assert failed.message == f"download too slow: gave up after {DEADLINE + 1:.0f} s"  # the time on the stepped clock
    assert saved == PNG  # it was an image, only too slow


def test_a_page_is_refused_as_soon_as_its_first_bytes_are_in():
    """SNIFF_BYTES of HTML, then a stall past the deadline: NotAnImage at once, not a wait ending in 'too slow'."""
    page = b"<html><body>Sign in" * 10
    failed, saved = download_failure(
        stalling(page[:SNIFF_BYTES], DEADLINE + 0.5, page[SNIFF_BYTES:]), timeouts=TIMEOUTS
    )
    assert type(failed) is NotAnImage and saved == b""


def test_a_download_within_its_deadline_is_saved():
    """A stall that ends inside the deadline costs nothing."""
    assert download(stalling(PNG, DEADLINE - 0.5, PNG), timeouts=TIMEOUTS)[1] == PNG * 2


@pytest.mark.parametrize(("extra", "saved"), [(-0.5, True), (0.5, False)])
def test_each_byte_received_extends_the_deadline_at_the_minimum_rate(extra, saved):
    """8 × MIN_DOWNLOAD_RATE bytes move the deadline 8 s on: a stall just inside is waited out, past it is not."""
    big = PNG + bytes(8 * MIN_DOWNLOAD_RATE - len(PNG))
    server = stalling(big, DEADLINE + 8 + extra, PNG)
    if saved:
        assert download(server, timeouts=TIMEOUTS)[1] == big + PNG
    else:
        failed, _ = download_failure(server, timeouts=TIMEOUTS)
        assert failed.message.startswith("download too slow")


# --- reference links: asked like a download, answered with why they are dead ---------------------------


def check(server: Server, url: str = FILE_URL, **options: Any) -> str | None:
    return call(server, "check_link", url, **options)  # type: ignore[no-any-return]


def test_a_live_link_is_asked_with_head_and_without_the_key():
    """A 200 to HEAD → None (alive); the host never sees Authorization."""
    server = files(b"")
    assert check(server) is None
    (request,) = server.requests
    assert request.method == "HEAD" and "authorization" not in request.headers


@pytest.mark.parametrize("status", [405, 501])
def test_a_host_without_head_is_asked_for_one_byte(status):
    """405/501 to HEAD → a GET of bytes 0-0, whose answer decides."""
    server = Server(
        lambda r: answer(status) if r.method == "HEAD" else answer(206, b"\x89", {"Content-Range": "0-0/9"})
    )
    assert check(server) is None
    assert [(r.method, r.headers.get("range")) for r in server.requests] == [("HEAD", None), ("GET", "bytes=0-0")]
    server = Server(lambda r: answer(status) if r.method == "HEAD" else answer(404))
    assert check(server) == f"HTTP 404 from {FILE_URL}"


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410])
def test_a_link_refused_for_good_says_why(status):
    """A 4xx (other than 408/429) → its status and the URL without its query, as the reason the link is dead."""
    assert check(files(b"", status=status), FILE_URL + "?sig=secret") == f"HTTP {status} from {FILE_URL}"


@pytest.mark.parametrize("status", [408, 429, 500, 503])
def test_a_link_that_cannot_be_told_now_is_transient(status):
    """408, 429 and 5xx → TransientError: the API may still reach the link."""
    with pytest.raises(TransientError, match=f"HTTP {status} from {FILE_URL}"):
        check(files(b"", status=status))


def test_a_link_check_follows_redirects_and_counts_them():
    """Redirects are followed; more than MAX_REDIRECTS is a dead link; a hop to file: is refused by name."""
    assert check(redirects([f"/{n}.png" for n in range(MAX_REDIRECTS)])) is None
    assert check(redirects([f"/{n}.png" for n in range(MAX_REDIRECTS + 1)])) == (
        f"more than {MAX_REDIRECTS} redirects from http://files.test/{MAX_REDIRECTS}.png"
    )
    assert check(redirects(["file:///etc/passwd"])) == "refusing to download from a non-http(s) URL: file:///etc/passwd"


@pytest.mark.parametrize("status", [200, 404])
def test_a_location_on_an_answer_that_is_no_redirect_is_not_followed(status):
    """A Location header on a 200 or a 404 is not a redirect: the link is judged by that answer alone."""
    server = files(b"", status=status, Location="http://elsewhere.test/x.png")
    assert check(server) == (None if status == 200 else f"HTTP {status} from {FILE_URL}")
    assert len(server.requests) == 1


def test_a_link_check_that_cannot_connect_or_stalls_is_transient():
    """A refused connection or no answer within the deadline → TransientError."""
    with pytest.raises(TransientError, match="could not connect"):
        check(raising(httpx.ConnectError))

    async def stall(request: httpx.Request) -> httpx.Response:
        await skip(DEADLINE + 0.5)
        return answer(200)

    with pytest.raises(TransientError, match=f"no answer in time from {FILE_URL}"):
        check(Server(stall), timeouts=TIMEOUTS)


def test_a_create_whose_deadline_ends_while_waiting_for_a_slot_was_not_sent():
    """A create still waiting for a connection slot at its deadline never awaited before_send and made no run."""
    create_waiting, release = asyncio.Event(), asyncio.Event()
    sent: list[str] = []
    errors: list[ApiError] = []

    async def serve(request: httpx.Request) -> httpx.Response:  # the poll holding the only slot
        await create_waiting.wait()
        await skip(DEADLINE + 0.5)
        await release.wait()
        return answer(200, {"id": "run_1"})

    async def before_send() -> None:
        sent.append("sent")

    async def main() -> None:
        client = RunbaseClient(
            BASE_URL, API_KEY, transport=Server(serve).transport(), timeouts=TIMEOUTS, max_connections=1
        )

        async def poll() -> None:
            try:
                await client.get_run("run_1")
            except TransientError:
                pass  # its own deadline passed as well

        async def create() -> None:
            try:
                await client.create_run(JOB, before_send=before_send)
            except TransientError as exc:
                errors.append(exc)
            release.set()

        async with client, anyio.create_task_group() as group:
            group.start_soon(poll)
            await asyncio.sleep(0.01)
            group.start_soon(create)
            await asyncio.sleep(0.01)
            create_waiting.set()

    anyio.run(main, backend_options={"loop_factory": SteppedLoop})
    (failed,) = errors
    assert failed.message == f"no complete answer within {DEADLINE:.0f} s"
    assert failed.maybe_created is False and sent == []


# --- the client's own lifetime and defaults ------------------------------------------------------------


class ClosingTransport(httpx.MockTransport):
    """A fake server's transport that counts how often a client closed it."""

    def __init__(self, server: Server):
        super().__init__(server)
        self.closed = 0

    async def aclose(self) -> None:
        self.closed += 1


def test_leaving_the_client_closes_both_connection_sets():
    """Leaving ``async with`` closes the API client and the files client (two closes of a shared transport)."""
    transport = ClosingTransport(reply(200, {"id": "r"}))

    async def main() -> None:
        async with RunbaseClient(BASE_URL, API_KEY, transport=transport) as client:
            await client.get_run("r")
            assert transport.closed == 0

    anyio.run(main)
    assert transport.closed == 2


def test_without_a_transport_the_client_is_built_for_the_network():
    """With no transport given, a client for the default network transport is built and closed without a request."""

    async def main() -> None:
        async with RunbaseClient(BASE_URL, API_KEY) as client:
            assert client.base_url == BASE_URL

    anyio.run(main)


def test_the_default_size_cap_applies_without_a_cap_given():
    """A declared length one byte over the default max_download_bytes is refused; at it, the body is read."""
    cap = RunbaseClient(BASE_URL, API_KEY, transport=reply(200).transport()).max_download_bytes
    over = Server(lambda request: httpx.Response(200, headers={"Content-Length": str(cap + 1)}, stream=Chunks(PNG)))
    failed, _ = download_failure(over)
    assert type(failed) is OutputUnusable and f"over the {cap}-byte cap" in failed.message
    at = Server(lambda request: httpx.Response(200, headers={"Content-Length": str(cap)}, stream=Chunks(PNG)))
    failed, saved = download_failure(at)
    assert type(failed) is TransientError and failed.message.startswith("download truncated") and saved == PNG


def test_a_declared_length_of_zero_with_a_body_is_transient():
    """Content-Length: 0 with an image behind it is not the declared length: TransientError, not a saved file."""
    server = Server(lambda request: httpx.Response(200, headers={"Content-Length": "0"}, stream=Chunks(PNG)))
    failed, _ = download_failure(server)
    assert type(failed) is TransientError
    assert failed.message == f"download truncated: got {len(PNG)} of 0 bytes from {FILE_URL}"


def test_a_300_is_no_success_for_the_api_or_a_file_host():
    """300 Multiple Choices is neither a run nor a file: Redirected from the API (its address is not
    where it answers), LinkRefused from a file host."""
    server = reply(300, {"id": "r"}, {"Content-Type": "image/png"})
    assert type(failure(server, "create_run", JOB)) is Redirected
    assert type(failure(server, "get_run", "r")) is Redirected
    failed, saved = download_failure(reply(300, PNG))
    assert type(failed) is LinkRefused and saved == b""


def test_messages_show_long_urls_and_ids_shortened():
    """A URL in a message is cut to 200 characters, a data: URL to its media type, a refused run id to 80."""
    long_url = "http://files.test/" + "p" * 300
    failed, _ = download_failure(files(b"", status=404), long_url)
    assert failed.message == f"HTTP 404 downloading {long_url[:199]}…"
    failed, _ = download_failure(files(PNG), "data:" + "t" * 100 + ",AAAA")
    assert failed.message == f"refusing to download from a non-http(s) URL: data:{'t' * 39}…,…"
    error = failure(reply(200, {}), "get_run", "x" * (MAX_RUN_ID_LENGTH + 1))
    assert error.message == f"refusing run id '{'x' * 78}…: it cannot be one URL path segment"
    error = failure(reply(200, {"id": "y" * 200}), "get_run", "x" * 200)
    assert error.message == (
        f"asked about run '{'x' * 78}…, the API answered about '{'y' * 78}…: the id does not survive the way to the API"
    )


@pytest.mark.parametrize("error", [httpx.ReadTimeout, httpx.ReadError, httpx.RemoteProtocolError])
def test_download_and_link_failures_never_claim_a_run_was_made(error):
    """A download or link check failing after sending is transient, never 'maybe created' (only creates make runs)."""
    failed, _ = download_failure(raising(error))
    assert type(failed) is TransientError and failed.maybe_created is False
    with pytest.raises(TransientError) as caught:
        check(raising(error))
    assert caught.value.maybe_created is False


def test_each_api_request_is_logged_at_debug_without_its_query_or_key(caplog):
    """At DEBUG each API request is one record: method, URL without its query, and the status; never the key."""
    caplog.set_level(logging.DEBUG, logger="batchgen.api")
    call(reply(200, {"id": "run_1"}), "get_run", "run_1")
    create(reply(201, {"id": "r"}))
    logged = [r.getMessage() for r in caplog.records if r.name == "batchgen.api"]
    assert logged == [
        f'HTTP Request: GET {BASE_URL}/runs/run_1 "200"',
        f'HTTP Request: POST {BASE_URL}/runs "201"',
    ]
    assert all(API_KEY not in line for line in logged)


def test_a_poll_whose_body_breaks_off_closes_the_answer():
    """A poll answer cut off mid-body is a TransientError, and its connection's stream is closed, not left open."""

    async def reset() -> None:
        raise httpx.ReadError("connection reset")

    stream = Chunks(b'{"id": ', reset)
    server = Server(lambda request: httpx.Response(200, headers={"Content-Length": "99"}, stream=stream))
    failed = failure(server, "get_run", "r")
    assert type(failed) is TransientError and failed.message == "connection failed: ReadError: connection reset"
    assert stream.closed
