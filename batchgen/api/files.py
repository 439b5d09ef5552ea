"""Part of ``batchgen.api``: output files and reference links, fetched through a client that has no key.

``RunbaseClient.download`` and ``check_link`` are these. The client here talks to whatever host
an output URL names, so it carries no Authorization at all, refuses a URL that holds the key,
and follows redirects by hand, checking each hop's scheme. One exception, which the API's rules
allow (the key goes to the API's own host and nowhere else): an output on the API's own origin
(scheme, host and port) that answers 401 is asked again once with the API's Authorization, as
an API that serves its outputs behind the key needs; a redirect from there goes on without it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urljoin, urlsplit

import anyio
import httpx

from ..errors import LinkRefused, NotAnImage, OutputUnusable, TransientError
from ..images import IMAGE_TYPES, SNIFF_BYTES, TAIL_BYTES, cut_short, looks_like, sniff_image
from ..text import holds_secret
from .answers import Download, Sink, content_length
from .sending import Scrub, Slots, Translate, raise_for_download_status, send

MAX_REDIRECTS = 5
# A download may take as long as the API deadline plus this many seconds per byte received:
# a host that trickles bytes is given up instead of holding a saver for hours.
MIN_DOWNLOAD_RATE = 32 * 1024  # bytes per second


class FileClient:
    """Downloads and link checks through ``client`` (key-less), at most ``slots`` at once."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        transport: httpx.AsyncBaseTransport | None,
        scrub: Scrub,
        *,
        slots: int,
        request_deadline: float,
        max_download_bytes: int,
        extensions: dict[str, Any],
        authorize: Callable[[str], dict[str, str] | None] = lambda url: None,
    ):
        self._files, self._files_transport, self._scrub = client, transport, scrub
        self._authorize = authorize  # the API's Authorization for a URL on its own origin, else None
        self._file_slots = Slots(slots)
        self._request_deadline = request_deadline
        self.max_download_bytes = max_download_bytes
        self._extensions = extensions

    async def download(self, url: str, sink: Sink) -> Download:
        """Stream the image at ``url`` into ``sink``: http(s) only on every hop, PNG/JPEG/WebP
        only (by the bytes), a size cap, the declared length, and an overall deadline that
        grows with the bytes received. Nothing reaches ``sink`` before the first bytes are
        known to be an image."""
        started = anyio.current_time()
        with anyio.CancelScope(deadline=started + self._request_deadline) as scope:
            auth: dict[str, str] | None = None  # the key: only on the API's own origin, only once it asked
            for _ in range(MAX_REDIRECTS + 1):
                self._check_download_url(url)
                async with self._stream(url, auth) as response:
                    if response.is_redirect:
                        location = response.headers.get("location", "")
                        if not location:
                            raise LinkRefused(f"redirect without a location from {self._scrub.url(url)}")
                        url, auth = urljoin(url, location), None
                        continue
                    if response.status_code == 401 and auth is None and (auth := self._authorize(url)) is not None:
                        continue  # the API serves this output behind its key: once more, with it
                    raise_for_download_status(self._scrub, response, url)
                    return await self._receive(response, url, sink, scope, started)
            raise OutputUnusable(f"more than {MAX_REDIRECTS} redirects for {self._scrub.url(url)}")
        raise TransientError(f"download too slow: gave up after {anyio.current_time() - started:.0f} s")

    async def check_link(self, url: str) -> str | None:
        """Whether a reference image URL answers, asked like a download (no key, every hop checked):
        None when it does, else why it is dead (a definite answer: 4xx, a refused redirect).
        ``TransientError`` when it cannot be told (network, 5xx, 429): the API may still reach it."""
        try:
            with anyio.fail_after(self._request_deadline):
                return await self._check_link(url)
        except TimeoutError as exc:
            raise TransientError(f"no answer in time from {self._scrub.url(url)}") from exc

    async def _check_link(self, url: str) -> str | None:
        for _ in range(MAX_REDIRECTS + 1):
            try:
                self._check_download_url(url)
            except OutputUnusable as exc:
                return exc.message
            with Translate(self._scrub, lambda: False):
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
                raise TransientError(f"HTTP {response.status_code} from {self._scrub.url(url)}")
            return f"HTTP {response.status_code} from {self._scrub.url(url)}"
        return f"more than {MAX_REDIRECTS} redirects from {self._scrub.url(url)}"

    @asynccontextmanager
    async def _stream(self, url: str, auth: dict[str, str] | None = None) -> AsyncIterator[httpx.Response]:
        with Translate(self._scrub, lambda: False):
            async with self._file_slots:
                # The key-less client's headers: nothing of the API's reaches a file host (``auth`` only
                # for the API's own origin, see the module docstring).
                headers = self._files.headers if auth is None else {**self._files.headers, **auth}
                request = httpx.Request("GET", url, headers=headers, extensions=self._extensions)
                response = await send(self._files, self._files_transport, request, stream=True)
                try:
                    yield response
                finally:
                    await response.aclose()

    async def _receive(
        self, response: httpx.Response, url: str, sink: Sink, scope: anyio.CancelScope, started: float
    ) -> Download:
        declared = content_length(response)
        cap = self.max_download_bytes
        if declared is not None and declared > cap:
            raise OutputUnusable(f"output is {declared} bytes, over the {cap}-byte cap: {self._scrub.url(url)}")
        declared_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if declared_type not in IMAGE_TYPES:  # the usual answer is plain: only other text needs scrubbing
            declared_type = self._scrub.text(declared_type, 80)
        head = tail = b""
        content_type: str | None = None
        size = 0
        with Translate(self._scrub, lambda: False):
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > cap:
                    raise OutputUnusable(f"output exceeds the {cap}-byte cap: {self._scrub.url(url)}")
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
                f"download truncated: got {response.num_bytes_downloaded} of {declared} bytes "
                f"from {self._scrub.url(url)}"
            )
        if content_type is None:  # fewer than SNIFF_BYTES in all
            content_type = self._sniff(head, declared_type, url)
            sink.write(head)
            tail = head
        if (cut := cut_short(content_type, head, tail, size)) is not None:
            raise NotAnImage(f"not an image: {cut}, {size} bytes, from {self._scrub.url(url)}")
        return Download(content_type, size, IMAGE_TYPES[content_type], declared_type)

    def _sniff(self, head: bytes, declared_type: str, url: str) -> str:
        content_type = sniff_image(head)
        if content_type is None:
            said = f", declared {declared_type}" if declared_type else ""
            raise NotAnImage(f"not an image: {looks_like(head)}{said}, from {self._scrub.url(url)}")
        return content_type

    def _check_download_url(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
            raise OutputUnusable(f"refusing to download from a non-http(s) URL: {self._scrub.url(url)}")
        if holds_secret(url, self._scrub.secrets):  # asking for it would hand the key to that host
            raise OutputUnusable(f"refusing to download from a URL that holds the API key: {self._scrub.url(url)}")
