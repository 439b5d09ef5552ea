"""What the API's answers and addresses mean, apart from any request: Retry-After, run ids as
one path segment, output URLs in a run, a declared length, the base URL, the timeouts and what
a finished download is. ``batchgen.api`` uses these; they see no HTTP of their own.
"""

from __future__ import annotations

import datetime
import email.utils
import ipaddress
import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote, urljoin, urlsplit

import httpx

from ..errors import ApiError, RunIdRefused
from ..models import RunInfo
from ..text import server_text

MAX_RETRY_AFTER = 3600.0
MAX_RUN_ID_LENGTH = 2048  # ids are opaque: a signed token of several hundred characters is one


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
    """A complete image received into the sink.

    ``content_type`` and ``extension`` come from the bytes; ``declared_type`` is what the
    host's Content-Type said (scrubbed), kept to be noted when it disagrees.
    """

    content_type: str
    size: int
    extension: str
    declared_type: str = ""

    @property
    def type_mismatch(self) -> str | None:
        """A note when the host declared another type than the bytes are, else None."""
        if not self.declared_type or self.declared_type == self.content_type:
            return None
        if self.declared_type == "image/jpg" and self.content_type == "image/jpeg":
            return None
        return f"declared {self.declared_type}, the bytes are {self.content_type}"


class Sink(Protocol):
    def write(self, chunk: bytes) -> Any: ...


def check_run_id(run_id: str) -> str:
    """``run_id`` if it can be sent as one literal path segment, else raise ``RunIdRefused``.

    Empty ids, ids with control or other unprintable characters (they would reach
    messages and the ledger) and absurd lengths are refused; every other id is sent.
    """
    if not run_id or len(run_id) > MAX_RUN_ID_LENGTH or not run_id.isprintable():
        raise RunIdRefused(f"refusing run id {server_text(repr(run_id), limit=80)}: it cannot be one URL path segment")
    return run_id


def run_path(run_id: str) -> str:
    """The path of a run relative to the base URL: ``runs/`` and the id as one segment, every
    byte but letters, digits and ``_.-~`` percent-encoded (``/``, ``?``, ``#`` and ``%`` too).

    ``.`` and ``..`` are sent as ``%2E`` and ``%2E%2E``: neither httpx nor (with
    ``batchgen.transport``) aiohttp removes those as dot segments. A server or proxy that
    decodes and normalises them would answer about another path; ``get_run`` notices that
    the answer is about another run.
    """
    check_run_id(run_id)
    segment = "%2E" * len(run_id) if run_id in (".", "..") else quote(run_id, safe="")
    return "runs/" + segment


def check_base_url(base_url: str) -> None:
    """Refuse a base URL that is not http(s) with a host, a valid port and no user or password."""
    try:
        parts = urlsplit(base_url)
        _ = parts.port  # a port that is not a number from 0 to 65535 raises here, not deep in a transport
        httpx.URL(base_url)
    except (ValueError, httpx.InvalidURL) as exc:
        raise ApiError(f"the API base URL is not a valid URL ({exc}): {base_url!r}") from None
    if parts.scheme not in ("http", "https") or not parts.netloc or any(c.isspace() for c in parts.netloc):
        raise ApiError(f"the API base URL must be an http(s) URL, not {base_url!r}")
    if "@" in parts.netloc:  # shown without it: what is before the @ may be a password
        where = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"
        raise ApiError(
            f"the API base URL must not hold a user name or password (the part before '@'): give it as {where}; "
            "the key goes in RUNBASE_API_KEY"
        )


# Names of hosts that do not leave the site: a container's service name has no dot; these suffixes
# are reserved for local and private use (RFC 6761, RFC 6762, RFC 8375, ICANN's .internal).
PRIVATE_SUFFIXES = (".localhost", ".local", ".localdomain", ".internal", ".test", ".lan", ".home.arpa")
ALLOW_HTTP = "BATCHGEN_ALLOW_HTTP"  # set to 1: plain http:// to any host, the user's own decision


def check_key_stays_private(base_url: str, *, allow: bool = False) -> None:
    """Refuse plain http:// to a host on the open network: the key would cross it in clear text.

    http:// is fine on this machine and inside a private network: a loopback or private address
    (a container network's 172.x, a LAN's 192.168.x), a name without a dot (a container's
    service, a hosts-file alias) or under a suffix reserved for local use. ``allow`` (the
    BATCHGEN_ALLOW_HTTP setting) is the user's word that another host is theirs."""
    parts = urlsplit(base_url)
    host = (parts.hostname or "").rstrip(".").lower()
    if allow or parts.scheme != "http" or "." not in host or host.endswith(PRIVATE_SUFFIXES):
        return
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        if address.is_loopback or address.is_private or address.is_link_local:
            return
    raise ApiError(
        f"the API base URL {parts.scheme}://{parts.netloc} is plain http to a host on the open network: the API "
        f"key would cross it unencrypted. Use https://{parts.netloc}{parts.path} (plain http:// is taken for this "
        f"machine and private networks only; set {ALLOW_HTTP}=1 if this host is yours and the way to it trusted)"
    )


# Statuses runbase-api.md lists: plain words, kept as they are.
_PLAIN_STATUSES = frozenset(
    ("queued", "starting", "running", "processing", "succeeded", "failed", "error", "canceled", "cancelled")
)
MAX_STATUS_LENGTH = 40


def run_info(run_id: str, data: dict[str, Any], text: Callable[..., str], answered_at: str = "") -> RunInfo:
    """A run's answer as batchgen keeps it: its status as a lower-case word and its error, each made safe
    to store and show by ``text`` (the client's scrubber: ``text(s)`` or ``text(s, limit)``), its output URLs
    (a relative one resolved against ``answered_at``, the URL that gave the answer)."""
    status = data.get("status")
    if isinstance(status, str):
        status = status.strip().lower()
        if status not in _PLAIN_STATUSES:  # the words every answer holds need no scrubbing
            status = text(status, MAX_STATUS_LENGTH)
    else:
        status = "unknown"
    error = data.get("error")
    if isinstance(error, dict):
        error = error.get("message") or json.dumps(error)
    shown = None if error is None or error == "" else text(str(error))
    urls = tuple(absolute_url(url, answered_at) for url in output_urls(data))
    return RunInfo(run_id=run_id, status=status, urls=urls, error=shown)


def output_urls(data: dict[str, Any]) -> tuple[str, ...]:
    """The output URLs of a run's answer: ``output.urls`` (a list, or one string), or ``output`` as the list."""
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


def absolute_url(url: str, base: str) -> str:
    """``url`` resolved against ``base`` when it has no scheme (``/files/x.png``, ``//host/x.png``), as a
    browser would; any other URL as it is (``data:`` and ``file:`` ones are refused later, by their scheme)."""
    try:
        return url if not base or urlsplit(url).scheme else urljoin(base, url)
    except ValueError:  # not a URL at all: the download names it and refuses it
        return url


def content_length(response: httpx.Response) -> int | None:
    """The length a response declares, if it declares a usable one."""
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
        if when.tzinfo is None:  # asctime dates and "-0000" carry no zone: HTTP dates are GMT
            when = when.replace(tzinfo=datetime.UTC)
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def error_texts(response: httpx.Response) -> Iterator[str]:
    """What an error answer says, best first, as the server wrote it (to be scrubbed): the message of a
    JSON error body, else the body's words (an HTML page from a proxy without its tags), else the reason."""
    try:
        data = json.loads(response.content)
    except (ValueError, UnicodeDecodeError, RecursionError):
        data = None
    if isinstance(data, dict):
        error = data.get("error", data.get("message", data.get("detail")))
        if isinstance(error, dict):
            error = error.get("message", error)
        if error:
            yield str(error)
            return
    text = response.text if response.content else ""
    if "<" in text and ">" in text:  # an HTML page from a proxy: keep its words only
        text = re.sub(r"<[^>]*>", " ", text)
    yield text
    yield response.reason_phrase
