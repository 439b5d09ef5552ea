"""The Runbase client: create a run, get a run, download an output.

This is the only module that sees HTTP. Every answer and every transport exception
becomes either a parsed value (``RunInfo``, ``Download``) or an error from
``batchgen.errors``, so the scheduler reasons about *what happened* (rate limited,
out of credits, maybe created, an output that is not an image) rather than status codes.

The API key lives in the headers of one client bound to the API's origin, which
follows no redirects. Output files are fetched by a second client that has no
key at all, so the key cannot reach an output host, whatever URL or redirect
the API hands us. Which transport carries the bytes is ``batchgen.transport``'s choice.

Every text that came from a server (error bodies, run errors, status words, URLs,
content types) leaves this module scrubbed of the key and of Authorization values,
on one line, shortened and printable (``batchgen.text.server_text``). What the answers'
headers and fields mean apart from any request (Retry-After, run ids, output URLs) is
``batchgen.answers``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit

import anyio
import httpx

from .answers import (
    ALLOW_HTTP,
    MAX_RETRY_AFTER,
    MAX_RUN_ID_LENGTH,
    MAX_STATUS_LENGTH,
    Download,
    Sink,
    Timeouts,
    check_base_url,
    check_key_stays_private,
    check_run_id,
    content_length,
    error_texts,
    parse_retry_after,
    run_info,
    run_path,
)
from .errors import (
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
from .images import IMAGE_TYPES, SNIFF_BYTES, TAIL_BYTES, cut_short, looks_like, sniff_image
from .models import DEFAULT_BASE_URL, JobSpec, RunInfo
from .text import holds_secret, server_text

if TYPE_CHECKING:
    from .transport import Network

__all__ = [  # what other modules take from here; the rest of the answers' vocabulary is batchgen.answers
    "ALLOW_HTTP",
    "DEFAULT_BASE_URL",
    "MAX_REDIRECTS",
    "MAX_RETRY_AFTER",
    "MAX_RUN_ID_LENGTH",
    "MAX_STATUS_LENGTH",
    "MIN_DOWNLOAD_RATE",
    "Download",
    "RunbaseClient",
    "Sink",
    "Timeouts",
    "check_base_url",
    "check_key_stays_private",
    "check_run_id",
    "parse_retry_after",
    "run_path",
]

logger = logging.getLogger(__name__)

MAX_REDIRECTS = 5
# A download may take as long as the API deadline plus this many seconds per byte received:
# a host that trickles bytes is given up instead of holding a saver for hours.
MIN_DOWNLOAD_RATE = 32 * 1024  # bytes per second

# Exceptions raised before the request left this machine: a create that failed
# this way certainly made no run.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


class RunbaseClient:
    """One pooled connection set to the API, one key-less one to output hosts.

    ``transport`` serves both clients (the in-process simulator's ``ASGITransport``);
    without it each client gets its own network transport (``batchgen.transport``).
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        network: Network = "aiohttp",
        timeouts: Timeouts | None = None,
        max_connections: int = 32,
        max_download_bytes: int = 100 * 1024 * 1024,
    ):
        check_base_url(base_url)
        timeouts = timeouts or Timeouts()
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self.base_url = base_url.rstrip("/")
        self.max_download_bytes = max_download_bytes
        self._secrets = (api_key,)
        self._request_deadline = timeouts.connect + 2 * timeouts.read
        # Requests wait here rather than in httpcore's pool, whose every hand-out scans
        # all queued requests against all connections: with 128 waiting, most of our CPU.
        self._api_slots = anyio.CapacityLimiter(max_connections)
        self._file_slots = anyio.CapacityLimiter(max_connections)
        if transport is None:
            # Imported here: aiohttp loads the system's CA certificates on import, a cost the
            # in-process simulator (and every command that sends nothing) need not pay.
            from .transport import network_transport

            api_transport, files_transport = network_transport(limits, network), network_transport(limits, network)
        else:
            api_transport = files_transport = transport
        # Create, poll and download go straight to these transports (``_send``); None: httpx's own
        # transport, with the environment's proxies, which only the client itself applies.
        self._api_transport, self._files_transport = api_transport, files_transport
        self._api = httpx.AsyncClient(
            base_url=self.base_url + "/",
            headers={"Authorization": f"Bearer {api_key}", "User-Agent": "batchgen"},
            timeout=timeouts.as_httpx(),
            limits=limits,
            follow_redirects=False,
            transport=api_transport,
        )
        # No key here, ever: this client talks to whatever host an output URL names.
        self._files = httpx.AsyncClient(
            headers={"User-Agent": "batchgen"},
            timeout=timeouts.as_httpx(),
            limits=limits,
            follow_redirects=False,  # followed by hand, so each hop's scheme is checked
            transport=files_transport,
        )
        # Built once: what httpx's client would merge into every request (headers, timeouts).
        self._api_url = self.base_url + "/"
        self._runs_url = httpx.URL(self._api_url + "runs")  # parsed once: httpx parses a string URL per request
        self._extensions = {"timeout": timeouts.as_httpx().as_dict()}

    def __repr__(self) -> str:
        return f"RunbaseClient(base_url={self.base_url!r})"

    async def __aenter__(self) -> RunbaseClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._api.aclose()
        await self._files.aclose()

    def _text(self, text: str, limit: int | None = None) -> str:
        """Server text as it may be stored and shown: scrubbed, one line, short, printable."""
        return server_text(text, self._secrets) if limit is None else server_text(text, self._secrets, limit)

    async def create_run(self, job: JobSpec, *, before_send: Callable[[], Awaitable[None]] | None = None) -> RunInfo:
        """POST /runs. A TransientError with ``maybe_created`` means the run may exist.

        ``before_send`` is awaited once a connection slot is ours, just before the
        request leaves: the caller records the attempt there, so an attempt is
        'on the wire' only while its request can actually be. A failure before it ran
        (the deadline while waiting for a slot, say) is never ``maybe_created``.
        """
        body = job.request_body()
        sent = False

        def may_have_left() -> bool:
            return sent

        with self._translate(may_have_left), self._deadline(may_have_left):
            async with self._api_slots:
                if before_send is not None:
                    await before_send()
                sent = True
                request = httpx.Request(
                    "POST", self._runs_url, headers=self._api.headers, json=body, extensions=self._extensions
                )
                response = await self._send(self._api, self._api_transport, request)
        self._raise_for_status(response, creating=True)
        # Assumption (runbase-api.md): 200, 201 or 202 with at least {"id": "..."}.
        data = self._json_object(response, creating=True)
        run_id = data.get("id")
        if isinstance(run_id, int) and not isinstance(run_id, bool):
            run_id = str(run_id)
        if not isinstance(run_id, str) or not run_id:
            raise TransientError(
                f"the API accepted the run but its answer has no run id: {self._text(response.text)}",
                status=response.status_code,
                maybe_created=True,
            )
        try:
            check_run_id(run_id)
            if holds_secret(run_id, self._secrets):  # it would be written to the ledger and shown
                raise RunIdRefused("refusing a run id that holds the API key")
        except RunIdRefused as exc:
            # The run exists and cannot be polled without rewriting its id: a possible double charge.
            raise UnusableRun(
                f"the API accepted the run but answered with an unusable id: {exc.message}",
                status=response.status_code,
            ) from exc
        return run_info(run_id, data, self._text)

    async def get_run(self, run_id: str, *, before_send: Callable[[], Awaitable[None]] | None = None) -> RunInfo:
        """GET /runs/{id}, the id as one percent-encoded path segment (``RunIdRefused`` if it cannot be).
        ``before_send`` is awaited once a connection slot is ours, just before the request leaves."""
        path = run_path(run_id)
        with self._translate(lambda: False), self._deadline(lambda: False):
            async with self._api_slots:
                if before_send is not None:
                    await before_send()
                request = httpx.Request(
                    "GET", self._api_url + path, headers=self._api.headers, extensions=self._extensions
                )
                response = await self._send(self._api, self._api_transport, request)
        self._raise_for_status(response, creating=False)
        data = self._json_object(response, creating=False)
        answered = data.get("id")
        if isinstance(answered, int) and not isinstance(answered, bool):
            answered = str(answered)
        if isinstance(answered, str) and answered and answered != run_id:
            # The id did not reach the API intact (a proxy decoded and normalised the path):
            # this answer is about another run, and asking again would get the same one.
            raise RunIdRefused(
                f"asked about run {self._text(repr(run_id), 80)}, the API answered about "
                f"{self._text(repr(answered), 80)}: the id does not survive the way to the API"
            )
        return run_info(run_id, data, self._text)

    async def download(self, url: str, sink: Sink) -> Download:
        """Stream the image at ``url`` into ``sink``: http(s) only on every hop, PNG/JPEG/WebP
        only (by the bytes), a size cap, the declared length, and an overall deadline that
        grows with the bytes received. Nothing reaches ``sink`` before the first bytes are
        known to be an image."""
        started = anyio.current_time()
        with anyio.CancelScope(deadline=started + self._request_deadline) as scope:
            for _ in range(MAX_REDIRECTS + 1):
                self._check_download_url(url)
                async with self._stream(url) as response:
                    if response.is_redirect:
                        location = response.headers.get("location", "")
                        if not location:
                            raise LinkRefused(f"redirect without a location from {self._url(url)}")
                        url = urljoin(url, location)
                        continue
                    self._raise_for_download_status(response, url)
                    return await self._receive(response, url, sink, scope, started)
            raise OutputUnusable(f"more than {MAX_REDIRECTS} redirects for {self._url(url)}")
        raise TransientError(f"download too slow: gave up after {anyio.current_time() - started:.0f} s")

    async def check_link(self, url: str) -> str | None:
        """Whether a reference image URL answers, asked like a download (no key, every hop checked):
        None when it does, else why it is dead (a definite answer: 4xx, a refused redirect).
        ``TransientError`` when it cannot be told (network, 5xx, 429): the API may still reach it."""
        try:
            with anyio.fail_after(self._request_deadline):
                return await self._check_link(url)
        except TimeoutError as exc:
            raise TransientError(f"no answer in time from {self._url(url)}") from exc

    async def _check_link(self, url: str) -> str | None:
        for _ in range(MAX_REDIRECTS + 1):
            try:
                self._check_download_url(url)
            except OutputUnusable as exc:
                return exc.message
            with self._translate(lambda: False):
                async with self._file_slots:
                    response = await self._files.head(url)
                    if response.status_code in (405, 501):  # no HEAD here: ask for one byte
                        response = await self._files.get(url, headers={"Range": "bytes=0-0"})
            if response.is_redirect and response.headers.get("location"):
                url = urljoin(url, response.headers["location"])
                continue
            if response.status_code < 400:
                return None
            if response.status_code in (408, 429) or response.status_code >= 500:
                raise TransientError(f"HTTP {response.status_code} from {self._url(url)}")
            return f"HTTP {response.status_code} from {self._url(url)}"
        return f"more than {MAX_REDIRECTS} redirects from {self._url(url)}"

    @contextmanager
    def _deadline(self, may_have_left: Callable[[], bool]) -> Iterator[None]:
        """An overall limit per API request: httpx's timeouts are per read, and a server
        that trickles bytes would never trip them."""
        try:
            with anyio.fail_after(self._request_deadline):
                yield
        except TimeoutError as exc:
            raise TransientError(
                f"no complete answer within {self._request_deadline:.0f} s", maybe_created=may_have_left()
            ) from exc

    @contextmanager
    def _translate(self, may_have_left: Callable[[], bool]) -> Iterator[None]:
        """Transport exceptions → ours; the one place that knows which ones mean 'maybe sent'.

        httpx's own and (through ``batchgen.transport``) aiohttp's arrive as httpx exceptions."""
        try:
            yield
        except _NOT_SENT as exc:
            raise TransientError(f"could not connect: {self._describe(exc)}") from exc
        except httpx.TimeoutException as exc:
            raise TransientError(f"no answer in time: {self._describe(exc)}", maybe_created=may_have_left()) from exc
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
            raise OutputUnusable(f"unusable URL: {self._describe(exc)}") from exc
        except httpx.TransportError as exc:  # read/write errors, resets, protocol errors
            raise TransientError(f"connection failed: {self._describe(exc)}", maybe_created=may_have_left()) from exc
        except httpx.DecodingError as exc:  # the server answered: a create it answered may have made a run
            raise TransientError(f"undecodable response: {self._describe(exc)}", maybe_created=may_have_left()) from exc

    def _describe(self, exc: Exception) -> str:
        return self._text(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)

    @asynccontextmanager
    async def _stream(self, url: str) -> AsyncIterator[httpx.Response]:
        with self._translate(lambda: False):
            async with self._file_slots:
                # The key-less client's headers: nothing of the API's reaches a file host.
                request = httpx.Request("GET", url, headers=self._files.headers, extensions=self._extensions)
                response = await self._send(self._files, self._files_transport, request, stream=True)
                try:
                    yield response
                finally:
                    await response.aclose()

    @staticmethod
    async def _send(
        client: httpx.AsyncClient,
        transport: httpx.AsyncBaseTransport | None,
        request: httpx.Request,
        *,
        stream: bool = False,
    ) -> httpx.Response:
        """``client.send(request)`` without the client's per-request work batchgen has no use for
        (cookies, auth flows, redirect handling, event hooks): the request goes to the client's
        transport, which follows no redirect either. The body is read unless ``stream``."""
        if transport is None:
            return await client.send(request, stream=stream)
        response = await transport.handle_async_request(request)
        response.request = request
        if logger.isEnabledFor(logging.DEBUG):  # as httpx's client logs each request; the query left out
            url = request.url
            logger.debug('HTTP Request: %s %s://%s%s "%d"', request.method, url.scheme, url.netloc.decode(), url.path,
                         response.status_code)  # fmt: skip
        if not stream:
            try:
                await response.aread()
            except BaseException:
                await response.aclose()
                raise
        return response

    async def _receive(
        self, response: httpx.Response, url: str, sink: Sink, scope: anyio.CancelScope, started: float
    ) -> Download:
        declared = content_length(response)
        cap = self.max_download_bytes
        if declared is not None and declared > cap:
            raise OutputUnusable(f"output is {declared} bytes, over the {cap}-byte cap: {self._url(url)}")
        declared_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if declared_type not in IMAGE_TYPES:  # the usual answer is plain: only other text needs scrubbing
            declared_type = self._text(declared_type, 80)
        head = tail = b""
        content_type: str | None = None
        size = 0
        with self._translate(lambda: False):
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > cap:
                    raise OutputUnusable(f"output exceeds the {cap}-byte cap: {self._url(url)}")
                scope.deadline = started + self._request_deadline + size / MIN_DOWNLOAD_RATE
                if content_type is None:
                    head += chunk
                    if len(head) < SNIFF_BYTES:
                        continue
                    content_type = self._sniff(head, declared_type, url)
                    chunk, head = head, head[:SNIFF_BYTES]
                sink.write(chunk)
                tail = (tail + chunk[-TAIL_BYTES:])[-TAIL_BYTES:]
        if declared is not None and response.num_bytes_downloaded != declared:
            raise TransientError(
                f"download truncated: got {response.num_bytes_downloaded} of {declared} bytes from {self._url(url)}"
            )
        if content_type is None:  # fewer than SNIFF_BYTES in all
            content_type = self._sniff(head, declared_type, url)
            sink.write(head)
            tail = head
        if (cut := cut_short(content_type, head, tail, size)) is not None:
            raise NotAnImage(f"not an image: {cut}, {size} bytes, from {self._url(url)}")
        return Download(content_type, size, IMAGE_TYPES[content_type], declared_type)

    def _sniff(self, head: bytes, declared_type: str, url: str) -> str:
        content_type = sniff_image(head)
        if content_type is None:
            said = f", declared {declared_type}" if declared_type else ""
            raise NotAnImage(f"not an image: {looks_like(head)}{said}, from {self._url(url)}")
        return content_type

    def _raise_for_status(self, response: httpx.Response, *, creating: bool) -> None:
        status = response.status_code
        if 200 <= status < 300:
            return
        message = f"HTTP {status}: {self._error_text(response)}"
        if status == 401:
            raise Unauthorized(message, status=status)
        if status == 402:
            raise OutOfCredits(message, status=status)
        if status == 403:
            raise Forbidden(message, status=status)
        if status == 429:
            raise RateLimited(message, retry_after=parse_retry_after(response.headers.get("retry-after")))
        if 300 <= status < 400:
            raise self._redirected(response)
        if creating and status in (404, 405):  # no create here: the address is wrong, not the job
            raise Misaddressed(
                f"{message}; {self._url(str(response.request.url))} does not take creates: the base URL is wrong. "
                f"Set --base-url or RUNBASE_BASE_URL to the API's address (by default {DEFAULT_BASE_URL})",
                status=status,
            )
        if status == 404 and not creating:
            raise RunNotFound(message, status=status)
        if status >= 500 or status in (408, 425) or not creating:
            # A gateway timeout may hide a run the upstream did make.
            maybe = creating and status in (504, 524)
            raise TransientError(message, status=status, maybe_created=maybe)
        raise BadRequest(message, status=status)  # 400 and any other 4xx on create: about this job

    def _redirected(self, response: httpx.Response) -> Redirected:
        """A 3xx from the API, named with where it pointed (resolved, without its query)."""
        asked = self._url(str(response.request.url))
        raw = response.headers.get("location", "").strip()
        try:
            location = self._url(str(response.request.url.join(raw))) if raw else None
        except (httpx.InvalidURL, ValueError):
            location = self._text(raw, 200)
        where = f"to {location}" if location else "without a location"
        return Redirected(
            f"HTTP {response.status_code}: the API at {asked} redirects {where}; batchgen never follows an API "
            "redirect, since the request carries your key. If the API has moved, set --base-url or "
            "RUNBASE_BASE_URL to its address",
            status=response.status_code,
            location=location,
        )

    def _raise_for_download_status(self, response: httpx.Response, url: str) -> None:
        status = response.status_code
        if 200 <= status < 300:
            return
        if status == 429 or status >= 500 or status == 408:
            raise TransientError(f"HTTP {status} downloading {self._url(url)}", status=status)
        raise LinkRefused(f"HTTP {status} downloading {self._url(url)}", status=status)

    def _json_object(self, response: httpx.Response, *, creating: bool) -> dict[str, Any]:
        try:
            data = json.loads(response.content)
        except (ValueError, UnicodeDecodeError, RecursionError):
            data = None
        if not isinstance(data, dict):
            raise TransientError(
                f"HTTP {response.status_code} with a body that is not a JSON object: {self._text(response.text)}",
                status=response.status_code,
                maybe_created=creating,
            )
        return data

    def _error_text(self, response: httpx.Response) -> str:
        """The most useful short text in an error body, whatever the body is, scrubbed."""
        return next(filter(None, map(self._text, error_texts(response))), "no details")

    def _check_download_url(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
            raise OutputUnusable(f"refusing to download from a non-http(s) URL: {self._url(url)}")
        if holds_secret(url, self._secrets):  # asking for it would hand the key to that host
            raise OutputUnusable(f"refusing to download from a URL that holds the API key: {self._url(url)}")

    def _url(self, url: str) -> str:
        """A URL as messages show it: without its query (signed URLs carry their credentials
        there), scrubbed, printable; a ``data:`` URL by its media type only."""
        parts = urlsplit(url)
        if parts.scheme.lower() == "data":
            return "data:" + self._text(parts.path.split(",")[0], 40) + ",…"
        shown = f"{parts.scheme}://{parts.netloc}{parts.path}" if parts.netloc else url.split("?")[0]
        return self._text(shown, 200)
