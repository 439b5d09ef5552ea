"""The one place that chooses what carries batchgen's HTTP requests.

Everything above this module speaks httpx (``httpx.AsyncClient``, ``httpx.Response``);
underneath, the bytes travel through one of:

* ``httpx.ASGITransport`` for the in-process simulator (the runner passes it in);
* aiohttp, through ``httpx_aiohttp.AiohttpTransport``, for the network. On this
  project's machine it costs a fraction of the CPU per request of httpx's own
  transport (``bench/http_floor.py``, figures in ``bench/results/``);
* httpx's own transport when the environment names a proxy (``HTTPS_PROXY`` and
  friends, with ``NO_PROXY``), which httpx honours in full, or when asked for by
  name (``network="httpx"``, for comparisons and tests).

``AiohttpNetworkTransport`` keeps the package's request and response plumbing and
changes three things that batchgen's guarantees depend on:

* the URL goes to aiohttp exactly as httpx encoded it (``yarl.URL(..., encoded=True)``),
  so both transports put the same bytes on the wire: yarl would otherwise decode
  percent-encoded unreserved characters and remove ``%2E`` segments (``batchgen.api``
  also refuses run ids that only such a segment could carry);
* every aiohttp exception becomes the httpx exception that says *how far the request
  got*: ``ConnectError``/``ConnectTimeout`` only when nothing can have been sent (no
  connection, or none from the pool in time), ``ReadTimeout``, ``RemoteProtocolError``
  or ``ReadError`` once it may have been. The package's own table turns a server that
  closes a kept-alive connection after the request was written
  (``ServerDisconnectedError``) and read timeouts into ``ConnectTimeout``, which would
  make a create that reached the server look unsent;
* no cookie jar, no proxy or ``.netrc`` lookups from the environment per request,
  no decompression by aiohttp (httpx decodes), and redirects are never followed.
"""

from __future__ import annotations

import functools
import ssl
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Literal

import aiohttp
import httpx
import yarl
from httpx_aiohttp import AiohttpTransport

Network = Literal["aiohttp", "httpx"]
DEFAULT_NETWORK: Network = "aiohttp"
CHUNK_SIZE = 64 * 1024


def network_transport(limits: httpx.Limits, network: Network = DEFAULT_NETWORK) -> httpx.AsyncBaseTransport | None:
    """The transport for one client talking to the network; ``None`` means httpx's own.

    Each client gets its own transport, so the key-less file client shares no
    connection (and no state at all) with the API client.
    """
    if network == "httpx" or _environment_proxies():
        return None  # httpx builds its default transport and applies the environment's proxies
    if network != "aiohttp":
        raise ValueError(f"unknown network transport {network!r}; known: aiohttp, httpx")
    return AiohttpNetworkTransport(limits=limits)


def _environment_proxies() -> bool:
    proxies = urllib.request.getproxies()
    return any(proxies.get(scheme) for scheme in ("http", "https", "all"))


@functools.cache
def _default_ssl_context() -> ssl.SSLContext:
    """httpx's verifying context (certifi's CA bundle), built once: loading it costs milliseconds."""
    return httpx.create_ssl_context(verify=True)


class AiohttpNetworkTransport(AiohttpTransport):
    """httpx on top of aiohttp, with the URL kept as encoded and exceptions mapped by stage."""

    def __init__(self, *, limits: httpx.Limits, verify: ssl.SSLContext | bool = True):
        super().__init__(verify=_default_ssl_context() if verify is True else verify, limits=limits, trust_env=False)
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self.limits.max_connections or 0,
                limit_per_host=0,
                keepalive_timeout=self.limits.keepalive_expiry or 0.0,
                ssl=self.ssl_context,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=False,
                trust_env=False,
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            )
            self.client = self._session  # so the package's aclose() closes it
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        session = self._get_session()
        timeout = request.extensions.get("timeout", {})
        content = request.content  # batchgen never streams a request body
        with map_aiohttp_exceptions():
            response = await session.request(
                request.method,
                yarl.URL(str(request.url), encoded=True),
                headers=list(request.headers.multi_items()),
                data=content or None,
                allow_redirects=False,
                compress=False,
                timeout=_client_timeout(timeout.get("pool"), timeout.get("connect"), timeout.get("read")),
            )
        extensions = {"http_version": b"HTTP/1.1"}
        if response.reason:
            extensions["reason_phrase"] = response.reason.encode("latin-1", "replace")
        stream: httpx.AsyncByteStream
        length = response.content_length
        if length is not None and length <= CHUNK_SIZE:
            # A body that would come as one chunk anyway (every API answer): read in one call, not
            # through a stream of chunks, each of which costs a generator step and an exception map.
            with map_aiohttp_exceptions():
                stream = httpx.ByteStream(await response.read())
        else:
            stream = _ResponseStream(response)
        return httpx.Response(
            status_code=response.status,
            headers=response.raw_headers,  # bytes as received: httpx decodes them (ASCII, UTF-8, else Latin-1)
            stream=stream,
            request=request,
            extensions=extensions,
        )


@functools.lru_cache(maxsize=16)
def _client_timeout(pool: float | None, connect: float | None, read: float | None) -> aiohttp.ClientTimeout:
    """httpx's timeouts as aiohttp's, built once per set of values rather than per request."""
    return aiohttp.ClientTimeout(
        total=None,
        connect=pool,  # aiohttp's "connect" includes waiting for the pool
        sock_connect=connect,
        sock_read=read,
    )


class _ResponseStream(httpx.AsyncByteStream):
    def __init__(self, response: aiohttp.ClientResponse):
        self._response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with map_aiohttp_exceptions():
            async for chunk in self._response.content.iter_chunked(CHUNK_SIZE):
                yield chunk

    async def aclose(self) -> None:
        # release() hands a fully read connection back to the pool and closes one read only in part.
        self._response.release()


@contextmanager
def map_aiohttp_exceptions() -> Iterator[None]:
    """aiohttp's exceptions → httpx's, choosing by how far the request got (see the module docstring)."""
    try:
        yield
    except aiohttp.ConnectionTimeoutError as exc:  # no connection (from the pool) in time: not sent
        raise httpx.ConnectTimeout(_text(exc)) from exc
    except (aiohttp.ServerTimeoutError, TimeoutError) as exc:  # sock_read: sent, no answer
        raise httpx.ReadTimeout(_text(exc)) from exc
    except aiohttp.ClientConnectorError as exc:  # DNS, refused, TLS handshake: not sent
        raise httpx.ConnectError(_text(exc)) from exc
    except aiohttp.ServerFingerprintMismatch as exc:
        raise httpx.ConnectError(_text(exc)) from exc
    except aiohttp.ClientPayloadError as exc:  # the body stopped short: say so, without aiohttp's internal "400"
        why = exc.__cause__ if exc.__cause__ is not None else (exc.args[1] if len(exc.args) > 1 else None)
        detail = getattr(why, "message", "")
        raise httpx.RemoteProtocolError(f"the body ended early: {detail}" if detail else _text(exc)) from exc
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientResponseError) as exc:
        raise httpx.RemoteProtocolError(_text(exc)) from exc
    except (aiohttp.NonHttpUrlClientError, aiohttp.InvalidURL) as exc:
        raise httpx.UnsupportedProtocol(_text(exc)) from exc
    except (aiohttp.ClientError, OSError) as exc:  # resets and other failures once connected: may have been sent
        raise httpx.ReadError(_text(exc)) from exc


def _text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
