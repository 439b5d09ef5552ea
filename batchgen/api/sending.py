"""Part of ``batchgen.api``: a request sent straight to its transport, and what comes back
(answers, transport exceptions, deadlines) turned into batchgen's errors.

``batchgen.api`` (create, poll) and ``batchgen.api.files`` (downloads, link checks) use these;
no other module maps HTTP to batchgen's exceptions. Every server text in a message passes
through ``Scrub``: the key and Authorization values removed, one line, short, printable.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx

from ..errors import (
    BadRequest,
    Forbidden,
    LinkRefused,
    Misaddressed,
    OutOfCredits,
    OutputUnusable,
    RateLimited,
    Redirected,
    RunNotFound,
    TransientError,
    Unauthorized,
)
from ..models import DEFAULT_BASE_URL
from ..text import server_text
from .answers import error_texts, parse_retry_after

logger = logging.getLogger("batchgen.api")  # the client's log, wherever its parts live

# Exceptions raised before the request left this machine: a create that failed
# this way certainly made no run.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
_MAPPED = (httpx.TransportError, httpx.InvalidURL, httpx.DecodingError)  # what Translate turns into ours


class Scrub:
    """Server text as it may be stored and shown: the key (``secrets``) removed, one line, short, printable."""

    def __init__(self, secrets: tuple[str, ...]):
        self.secrets = secrets

    def text(self, text: str, limit: int | None = None) -> str:
        return server_text(text, self.secrets) if limit is None else server_text(text, self.secrets, limit)

    def describe(self, exc: Exception) -> str:
        return self.text(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)

    def url(self, url: str) -> str:
        """A URL as messages show it: without its query (signed URLs carry their credentials
        there), scrubbed, printable; a ``data:`` URL by its media type only."""
        parts = urlsplit(url)
        if parts.scheme.lower() == "data":
            return "data:" + self.text(parts.path.split(",")[0], 40) + ",…"
        shown = f"{parts.scheme}://{parts.netloc}{parts.path}" if parts.netloc else url.split("?")[0]
        return self.text(shown, 200)


class Slots:
    """At most ``limit`` requests at once, the others waiting their turn in order. A free slot is taken
    without a trip through the event loop: anyio's ``CapacityLimiter`` yields on every acquire, free or not,
    two of the three per job (create, poll, download) costing as much again as the slot itself."""

    def __init__(self, limit: int):
        self.limiter = anyio.CapacityLimiter(limit)

    async def __aenter__(self) -> None:
        try:
            self.limiter.acquire_nowait()  # refused while others wait: no one is overtaken
        except anyio.WouldBlock:
            await self.limiter.acquire()

    async def __aexit__(self, *exc_info: object) -> None:
        self.limiter.release()


async def send(
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


class Deadline:
    """An overall limit per API request: httpx's timeouts are per read, and a server
    that trickles bytes would never trip them. ``anyio.fail_after`` as one object rather than
    two generator context managers around a cancel scope (it is entered for every create and poll)."""

    def __init__(self, seconds: float, may_have_left: Callable[[], bool]):
        self._seconds, self._may_have_left = seconds, may_have_left
        self._scope = anyio.CancelScope(deadline=anyio.current_time() + seconds)

    def __enter__(self) -> None:
        self._scope.__enter__()

    def __exit__(self, *exc_info: Any) -> bool:
        swallowed = bool(self._scope.__exit__(*exc_info))
        if self._scope.cancelled_caught and anyio.current_time() >= self._scope.deadline:
            raise TransientError(
                f"no complete answer within {self._seconds:.0f} s", maybe_created=self._may_have_left()
            ) from TimeoutError()
        return swallowed


class Translate:
    """Transport exceptions → ours; the one place that knows which ones mean 'maybe sent'.

    httpx's own and (through ``batchgen.transport``) aiohttp's arrive as httpx exceptions.
    A class, not a generator context manager: it is entered several times for every job."""

    def __init__(self, scrub: Scrub, may_have_left: Callable[[], bool]):
        self._scrub, self._may_have_left = scrub, may_have_left

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if exc is None or not isinstance(exc, _MAPPED):
            return
        scrub, may_have_left = self._scrub, self._may_have_left
        if isinstance(exc, _NOT_SENT):
            raise TransientError(f"could not connect: {scrub.describe(exc)}") from exc
        if isinstance(exc, httpx.TimeoutException):
            raise TransientError(f"no answer in time: {scrub.describe(exc)}", maybe_created=may_have_left()) from exc
        if isinstance(exc, (httpx.UnsupportedProtocol, httpx.InvalidURL)):
            raise OutputUnusable(f"unusable URL: {scrub.describe(exc)}") from exc
        if isinstance(exc, httpx.TransportError):  # read/write errors, resets, protocol errors
            raise TransientError(f"connection failed: {scrub.describe(exc)}", maybe_created=may_have_left()) from exc
        # httpx.DecodingError: the server answered, and a create it answered may have made a run
        raise TransientError(f"undecodable response: {scrub.describe(exc)}", maybe_created=may_have_left()) from exc


def raise_for_status(scrub: Scrub, response: httpx.Response, *, creating: bool) -> None:
    status = response.status_code
    if 200 <= status < 300:
        return
    message = f"HTTP {status}: {error_text(scrub, response)}"
    if status == 401:
        raise Unauthorized(message, status=status)
    if status == 402:
        raise OutOfCredits(message, status=status)
    if status == 403:
        raise Forbidden(message, status=status)
    if status == 429:
        raise RateLimited(message, retry_after=parse_retry_after(response.headers.get("retry-after")))
    if 300 <= status < 400:
        raise redirected(scrub, response)
    if creating and status in (404, 405):  # no create here: the address is wrong, not the job
        raise Misaddressed(
            f"{message}; {scrub.url(str(response.request.url))} does not take creates: the base URL is wrong. "
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


def redirected(scrub: Scrub, response: httpx.Response) -> Redirected:
    """A 3xx from the API, named with where it pointed (resolved, without its query)."""
    asked = scrub.url(str(response.request.url))
    raw = response.headers.get("location", "").strip()
    try:
        location = scrub.url(str(response.request.url.join(raw))) if raw else None
    except (httpx.InvalidURL, ValueError):
        location = scrub.text(raw, 200)
    where = f"to {location}" if location else "without a location"
    return Redirected(
        f"HTTP {response.status_code}: the API at {asked} redirects {where}; batchgen never follows an API "
        "redirect, since the request carries your key. If the API has moved, set --base-url or "
        "RUNBASE_BASE_URL to its address",
        status=response.status_code,
        location=location,
    )


def raise_for_download_status(scrub: Scrub, response: httpx.Response, url: str) -> None:
    status = response.status_code
    if 200 <= status < 300:
        return
    if status == 429 or status >= 500 or status == 408:
        wait = parse_retry_after(response.headers.get("retry-after")) if status in (429, 503) else None
        raise TransientError(f"HTTP {status} downloading {scrub.url(url)}", status=status, retry_after=wait)
    raise LinkRefused(f"HTTP {status} downloading {scrub.url(url)}", status=status)


def json_object(scrub: Scrub, response: httpx.Response, *, creating: bool) -> dict[str, Any]:
    try:
        data = json.loads(response.content)
    except (ValueError, UnicodeDecodeError, RecursionError):
        data = None
    if not isinstance(data, dict):
        raise TransientError(
            f"HTTP {response.status_code} with a body that is not a JSON object: {scrub.text(response.text)}",
            status=response.status_code,
            maybe_created=creating,
        )
    return data


def error_text(scrub: Scrub, response: httpx.Response) -> str:
    """The most useful short text in an error body, whatever the body is, scrubbed."""
    return next(filter(None, map(scrub.text, error_texts(response))), "no details")
