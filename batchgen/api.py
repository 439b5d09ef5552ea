"""The Runbase client: create a run, get a run, download an output.

This is the only module that sees HTTP. Every answer and every httpx exception
becomes either a parsed value (``RunInfo``) or an error from ``batchgen.errors``,
so the scheduler reasons about *what happened* (rate limited, out of credits,
maybe created) rather than status codes.

The API key lives in the headers of one client bound to the API's origin, which
follows no redirects. Output files are fetched by a second client that has no
key at all, so the key cannot reach an output host, whatever URL or redirect
the API hands us.
"""

from __future__ import annotations

import email.utils
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote, urljoin, urlsplit

import anyio
import httpx

from .errors import (
    ApiError,
    BadRequest,
    DownloadRefused,
    Forbidden,
    OutOfCredits,
    RateLimited,
    RunNotFound,
    TransientError,
    Unauthorized,
)
from .models import JobSpec, RunInfo

DEFAULT_BASE_URL = "https://runbase.net/api/v1"
MAX_REDIRECTS = 5
MAX_ERROR_TEXT = 300
MAX_RETRY_AFTER = 3600.0

# Exceptions raised before the request left this machine: a create that failed
# this way certainly made no run.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


@dataclass(frozen=True)
class Timeouts:
    connect: float = 10.0
    read: float = 30.0
    write: float = 30.0
    pool: float = 60.0

    @classmethod
    def from_seconds(cls, seconds: float) -> Timeouts:
        """One number for everything, as ``--timeout`` gives it."""
        return cls(connect=min(10.0, seconds), read=seconds, write=seconds, pool=max(60.0, seconds))

    def as_httpx(self) -> httpx.Timeout:
        return httpx.Timeout(connect=self.connect, read=self.read, write=self.write, pool=self.pool)


@dataclass(frozen=True)
class Download:
    content_type: str
    size: int


class Sink(Protocol):
    def write(self, chunk: bytes) -> Any: ...


class RunbaseClient:
    """One pooled connection set to the API, one key-less one to output hosts."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        timeouts: Timeouts | None = None,
        max_connections: int = 32,
        max_download_bytes: int = 100 * 1024 * 1024,
    ):
        check_base_url(base_url)
        timeouts = timeouts or Timeouts()
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self.base_url = base_url.rstrip("/")
        self.max_download_bytes = max_download_bytes
        self._request_deadline = timeouts.connect + 2 * timeouts.read
        # Requests wait here rather than in httpcore's pool, whose every hand-out scans
        # all queued requests against all connections: with 128 waiting, most of our CPU.
        self._api_slots = anyio.CapacityLimiter(max_connections)
        self._file_slots = anyio.CapacityLimiter(max_connections)
        self._api = httpx.AsyncClient(
            base_url=self.base_url + "/",
            headers={"Authorization": f"Bearer {api_key}", "User-Agent": "batchgen"},
            timeout=timeouts.as_httpx(),
            limits=limits,
            follow_redirects=False,
            transport=transport,
        )
        # No key here, ever: this client talks to whatever host an output URL names.
        self._files = httpx.AsyncClient(
            headers={"User-Agent": "batchgen"},
            timeout=timeouts.as_httpx(),
            limits=limits,
            follow_redirects=False,  # followed by hand, so each hop's scheme is checked
            transport=transport,
        )

    def __repr__(self) -> str:
        return f"RunbaseClient(base_url={self.base_url!r})"

    async def __aenter__(self) -> RunbaseClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._api.aclose()
        await self._files.aclose()

    async def create_run(self, job: JobSpec, *, before_send: Callable[[], Awaitable[None]] | None = None) -> RunInfo:
        """POST /runs. A TransientError with ``maybe_created`` means the run may exist.

        ``before_send`` is awaited once a connection slot is ours, just before the
        request leaves: the caller records the attempt there, so an attempt is
        'on the wire' only while its request can actually be.
        """
        body = job.request_body()
        with _translate_transport_errors(creating=True), self._deadline(creating=True):
            async with self._api_slots:
                if before_send is not None:
                    await before_send()
                response = await self._api.post("runs", json=body)
        _raise_for_status(response, creating=True)
        # Assumption (runbase-api.md): 200, 201 or 202 with at least {"id": "..."}.
        data = _json_object(response, creating=True)
        run_id = data.get("id")
        if isinstance(run_id, int) and not isinstance(run_id, bool):
            run_id = str(run_id)
        if not isinstance(run_id, str) or not run_id:
            raise TransientError(
                f"the API accepted the run but its answer has no run id: {_shorten(response.text)}",
                status=response.status_code,
                maybe_created=True,
            )
        return _run_info(run_id, data)

    async def get_run(self, run_id: str) -> RunInfo:
        """GET /runs/{id}."""
        with _translate_transport_errors(creating=False), self._deadline(creating=False):
            async with self._api_slots:
                response = await self._api.get("runs/" + quote(run_id, safe=""))
        _raise_for_status(response, creating=False)
        return _run_info(run_id, _json_object(response, creating=False))

    async def download(self, url: str, sink: Sink) -> Download:
        """Stream ``url`` into ``sink``; checks scheme on every hop, size cap, declared length."""
        for _ in range(MAX_REDIRECTS + 1):
            _check_download_url(url)
            async with self._stream(url) as response:
                if response.is_redirect:
                    location = response.headers.get("location", "")
                    if not location:
                        raise DownloadRefused(f"redirect without a location from {_redact(url)}")
                    url = urljoin(url, location)
                    continue
                _raise_for_download_status(response, url)
                return await self._receive(response, url, sink)
        raise DownloadRefused(f"more than {MAX_REDIRECTS} redirects for {_redact(url)}")

    @contextmanager
    def _deadline(self, *, creating: bool) -> Iterator[None]:
        """An overall limit per API request: httpx's timeouts are per read, and a server
        that trickles bytes would never trip them."""
        try:
            with anyio.fail_after(self._request_deadline):
                yield
        except TimeoutError as exc:
            raise TransientError(
                f"no complete answer within {self._request_deadline:.0f} s", maybe_created=creating
            ) from exc

    @asynccontextmanager
    async def _stream(self, url: str) -> AsyncIterator[httpx.Response]:
        with _translate_transport_errors(creating=False):
            async with self._file_slots, self._files.stream("GET", url) as response:
                yield response

    async def _receive(self, response: httpx.Response, url: str, sink: Sink) -> Download:
        declared = _content_length(response)
        if declared is not None and declared > self.max_download_bytes:
            raise DownloadRefused(
                f"output is {declared} bytes, over the {self.max_download_bytes}-byte cap: {_redact(url)}"
            )
        size = 0
        with _translate_transport_errors(creating=False):
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > self.max_download_bytes:
                    raise DownloadRefused(f"output exceeds the {self.max_download_bytes}-byte cap: {_redact(url)}")
                sink.write(chunk)
        if declared is not None and response.num_bytes_downloaded != declared:
            raise TransientError(
                f"download truncated: got {response.num_bytes_downloaded} of {declared} bytes from {_redact(url)}"
            )
        content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
        return Download(content_type=content_type, size=size)


def check_base_url(base_url: str) -> None:
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ApiError(f"the API base URL must be an http(s) URL, not {base_url!r}")


@contextmanager
def _translate_transport_errors(*, creating: bool) -> Iterator[None]:
    """httpx exceptions → ours; the one place that knows which ones mean 'maybe sent'."""
    try:
        yield
    except _NOT_SENT as exc:
        raise TransientError(f"could not connect to the API: {_describe(exc)}") from exc
    except httpx.TimeoutException as exc:
        raise TransientError(f"no answer in time: {_describe(exc)}", maybe_created=creating) from exc
    except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
        raise DownloadRefused(f"unusable URL: {_describe(exc)}") from exc
    except httpx.TransportError as exc:  # read/write errors, resets, protocol errors
        raise TransientError(f"connection failed: {_describe(exc)}", maybe_created=creating) from exc
    except httpx.DecodingError as exc:
        raise TransientError(f"undecodable response: {_describe(exc)}") from exc


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _raise_for_status(response: httpx.Response, *, creating: bool) -> None:
    status = response.status_code
    if 200 <= status < 300:
        return
    text = _error_text(response)
    message = f"HTTP {status}: {text}"
    if status == 401:
        raise Unauthorized(message, status=status)
    if status == 402:
        raise OutOfCredits(message, status=status)
    if status == 403:
        raise Forbidden(message, status=status)
    if status == 429:
        raise RateLimited(message, retry_after=parse_retry_after(response.headers.get("retry-after")))
    if status == 404 and not creating:
        raise RunNotFound(message, status=status)
    if status >= 500 or status in (408, 425) or not creating:
        # A gateway timeout may hide a run the upstream did make.
        maybe = creating and status in (504, 524)
        raise TransientError(message, status=status, maybe_created=maybe)
    raise BadRequest(message, status=status)  # 400 and any other 4xx on create: about this job


def _raise_for_download_status(response: httpx.Response, url: str) -> None:
    status = response.status_code
    if 200 <= status < 300:
        return
    if status == 429 or status >= 500 or status == 408:
        raise TransientError(f"HTTP {status} downloading {_redact(url)}", status=status)
    raise DownloadRefused(f"HTTP {status} downloading {_redact(url)}", status=status)


def _json_object(response: httpx.Response, *, creating: bool) -> dict[str, Any]:
    try:
        data = json.loads(response.content)
    except (ValueError, UnicodeDecodeError):
        data = None
    if not isinstance(data, dict):
        raise TransientError(
            f"HTTP {response.status_code} with a body that is not a JSON object: {_shorten(response.text)}",
            status=response.status_code,
            maybe_created=creating,
        )
    return data


def _run_info(run_id: str, data: dict[str, Any]) -> RunInfo:
    status = data.get("status")
    status = status.strip().lower() if isinstance(status, str) else "unknown"
    return RunInfo(run_id=run_id, status=status, urls=_output_urls(data), error=_run_error(data))


def _output_urls(data: dict[str, Any]) -> tuple[str, ...]:
    output = data.get("output")
    if isinstance(output, dict):
        urls = output.get("urls")
    elif isinstance(output, list):  # tolerated: output given as the list itself
        urls = output
    else:
        urls = None
    if isinstance(urls, str):
        urls = [urls]
    if not isinstance(urls, list):
        return ()
    return tuple(u for u in urls if isinstance(u, str) and u)


def _run_error(data: dict[str, Any]) -> str | None:
    error = data.get("error")
    if isinstance(error, dict):
        error = error.get("message") or json.dumps(error)[:MAX_ERROR_TEXT]
    if error is None or error == "":
        return None
    return _shorten(str(error))


def _error_text(response: httpx.Response) -> str:
    """The most useful short text in an error body, whatever the body is."""
    try:
        data = json.loads(response.content)
    except (ValueError, UnicodeDecodeError):
        data = None
    if isinstance(data, dict):
        error = data.get("error", data.get("message", data.get("detail")))
        if isinstance(error, dict):
            error = error.get("message", error)
        if error:
            return _shorten(str(error))
    text = response.text if response.content else ""
    if "<" in text and ">" in text:  # an HTML page from a proxy: keep its words only
        text = re.sub(r"<[^>]*>", " ", text)
    text = _shorten(text)
    return text or response.reason_phrase or "no details"


def _shorten(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_ERROR_TEXT else text[: MAX_ERROR_TEXT - 1] + "…"


def _content_length(response: httpx.Response) -> int | None:
    try:
        value = int(response.headers["content-length"])
    except (KeyError, ValueError):
        return None
    return value if value >= 0 else None


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date)."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def _check_download_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise DownloadRefused(f"refusing to download from a non-http(s) URL: {_redact(url)}")


def _redact(url: str) -> str:
    """A URL without its query: signed URLs carry their credentials there."""
    parts = urlsplit(url)
    shown = f"{parts.scheme}://{parts.netloc}{parts.path}" if parts.netloc else url.split("?")[0]
    return _shorten(shown)
