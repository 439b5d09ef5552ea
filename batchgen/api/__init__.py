"""The Runbase client: create a run, get a run, download an output.

This package is the only part of batchgen that sees HTTP: the client here, ``batchgen.api.sending`` (a
request sent straight to its transport; answers and transport exceptions mapped to batchgen's
errors) and ``batchgen.api.files`` (downloads and link checks through the key-less client).
Every answer and every transport exception
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
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import httpx

from ..errors import RunIdRefused, TransientError, UnusableRun
from ..models import DEFAULT_BASE_URL, JobSpec, RunInfo
from ..text import holds_secret
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
    parse_retry_after,
    run_info,
    run_path,
)
from .files import MAX_REDIRECTS, MIN_DOWNLOAD_RATE, FileClient
from .sending import Deadline, Scrub, Slots, Translate, json_object, raise_for_status, send

if TYPE_CHECKING:
    from ..transport import Network

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
        self._scrub = Scrub((api_key,))
        self._text = self._scrub.text  # server text as it may be stored and shown
        self._request_deadline = timeouts.connect + 2 * timeouts.read
        # Requests wait here rather than in httpcore's pool, whose every hand-out scans
        # all queued requests against all connections: with 128 waiting, most of our CPU.
        self._api_slots = Slots(max_connections)
        if transport is None:
            # Imported here: aiohttp loads the system's CA certificates on import, a cost the
            # in-process simulator (and every command that sends nothing) need not pay.
            from ..transport import network_transport

            api_transport, files_transport = network_transport(limits, network), network_transport(limits, network)
        else:
            api_transport = files_transport = transport
        # Create, poll and download go straight to these transports (``sending.send``); None: httpx's own
        # transport, with the environment's proxies, which only the client itself applies.
        self._api_transport = api_transport
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
        # A run's URL is the base's parts with the run's path (percent-encoded by run_path): built per poll without
        # parsing the whole URL again (~40 us of each poll's ~70 us request). Not when the base URL has a query or
        # a fragment, nor with an httpx that keeps a URL's parts otherwise: then the URL is parsed as a string.
        root = getattr(httpx.URL(self._api_url), "_uri_reference", None)
        plain = root is not None and hasattr(root, "_replace") and root.query is None and root.fragment is None
        self._api_root = root if plain else None
        # The create's headers: the API client's and the JSON body's type (httpx adds Content-Length and Host).
        self._json_headers = httpx.Headers({**self._api.headers, "Content-Type": "application/json"})
        self._extensions = {"timeout": timeouts.as_httpx().as_dict()}
        self._file_client = FileClient(
            self._files,
            files_transport,
            self._scrub,
            slots=max_connections,
            request_deadline=self._request_deadline,
            max_download_bytes=max_download_bytes,
            extensions=self._extensions,
            authorize=self._authorization_for,
        )
        self._origin = _origin(self._api_url)

    def _authorization_for(self, url: str) -> dict[str, str] | None:
        """The API's Authorization header for ``url`` when it is on the API's own origin (scheme, host and
        port, as the API's own requests go), else None: no other host ever gets the key."""
        if _origin(url) != self._origin:
            return None
        return {"Authorization": self._api.headers["authorization"]}

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
        'on the wire' only while its request can actually be. A failure before it ran
        (the deadline while waiting for a slot, say) is never ``maybe_created``.
        """
        # The JSON httpx would send for json=body, encoded here: its encoder is the slower path per request.
        content = json.dumps(job.request_body(), ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
        sent = False

        def may_have_left() -> bool:
            return sent

        with Translate(self._scrub, may_have_left), Deadline(self._request_deadline, may_have_left):
            async with self._api_slots:
                if before_send is not None:
                    await before_send()
                sent = True
                request = httpx.Request(
                    "POST", self._runs_url, headers=self._json_headers, content=content, extensions=self._extensions
                )
                response = await send(self._api, self._api_transport, request)
        data = self._seen_other(response)
        if data is None:
            raise_for_status(self._scrub, response, creating=True)
            # Assumption (runbase-api.md): 200, 201 or 202 with at least {"id": "..."}.
            data = json_object(self._scrub, response, creating=True)
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
            if holds_secret(run_id, self._scrub.secrets):  # it would be written to the ledger and shown
                raise RunIdRefused("refusing a run id that holds the API key")
        except RunIdRefused as exc:
            # The run exists and cannot be polled without rewriting its id: a possible double charge.
            raise UnusableRun(
                f"the API accepted the run but answered with an unusable id: {exc.message}",
                status=response.status_code,
            ) from exc
        return run_info(run_id, data, self._text, str(response.url))

    async def get_run(self, run_id: str, *, before_send: Callable[[], Awaitable[None]] | None = None) -> RunInfo:
        """GET /runs/{id}, the id as one percent-encoded path segment (``RunIdRefused`` if it cannot be).
        ``before_send`` is awaited once a connection slot is ours, just before the request leaves."""
        url = self._run_url(run_path(run_id))
        with Translate(self._scrub, lambda: False), Deadline(self._request_deadline, lambda: False):
            async with self._api_slots:
                if before_send is not None:
                    await before_send()
                request = httpx.Request("GET", url, headers=self._api.headers, extensions=self._extensions)
                response = await send(self._api, self._api_transport, request)
        raise_for_status(self._scrub, response, creating=False)
        data = json_object(self._scrub, response, creating=False)
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
        return run_info(run_id, data, self._text, str(response.url))

    def _seen_other(self, response: httpx.Response) -> dict[str, Any] | None:
        """A create answered 303 See Other (or 301/302, which many servers send for it) with one of our own
        run URLs (``{base}/runs/ID``): the run was made and lives there (the POST/redirect/GET pattern). Its id,
        as an answer's body would give it; None for any other answer, which the usual rules then read (no
        redirect is ever followed). 307 and 308 ask for the POST to be sent again elsewhere: not a run made."""
        if response.status_code not in (301, 302, 303):
            return None
        try:
            target = response.request.url.join(response.headers.get("location", "").strip())
        except (httpx.InvalidURL, ValueError):
            return None
        runs = self._runs_url
        prefix = runs.raw_path + b"/"
        if (target.scheme, target.netloc) != (runs.scheme, runs.netloc) or not target.raw_path.startswith(prefix):
            return None
        segment = target.raw_path[len(prefix) :].partition(b"?")[0]
        if not segment or b"/" in segment:
            return None
        return {"id": unquote(segment.decode("ascii", "replace")), "status": "queued"}

    def _run_url(self, path: str) -> httpx.URL | str:
        """The URL of ``path`` (a run's, from ``run_path``) below the base URL."""
        if self._api_root is None:
            return self._api_url + path
        url = httpx.URL.__new__(httpx.URL)
        url._uri_reference = self._api_root._replace(path=self._api_root.path + path)
        return url

    async def download(self, url: str, sink: Sink) -> Download:
        """Stream the image at ``url`` into ``sink`` through the key-less client (``FileClient.download``)."""
        return await self._file_client.download(url, sink)

    async def check_link(self, url: str) -> str | None:
        """Whether a reference image URL answers, asked like a download (``FileClient.check_link``)."""
        return await self._file_client.check_link(url)


def _origin(url: str) -> tuple[str, str, int | None] | None:
    """(scheme, host, port) of a URL, the port made explicit; None for one that cannot be read."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError):
        return None
    port = parsed.port or {"http": 80, "https": 443}.get(parsed.scheme)
    return (parsed.scheme, parsed.host.lower(), port) if parsed.host else None
