"""HTTP plumbing of the simulator: ASGI types, the request it reads, the responses it sends.

Paths are routed from the raw bytes of the request target, never from a decoded path: a run
id travels as one percent-quoted path segment and is decoded exactly once here, so that ids
such as ``..`` or ``a/b`` (sent as ``%2E%2E``, ``a%2Fb``) reach the run they name, while an
unquoted ``..`` is normalised away as a proxy in front of a real service would.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote

import httpx

Message = MutableMapping[str, Any]
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

JSON = "application/json"
TEXT = "text/plain; charset=utf-8"


class SimulatedDisconnect(httpx.RemoteProtocolError):
    """Raised inside the app to abort a response. Through ASGITransport the client sees this
    (an httpx transport error); under uvicorn the connection is closed mid-response."""


@dataclass
class Request:
    """What the app needs of one HTTP request; ``segments`` are the raw path's, decoded once."""

    method: str
    segments: tuple[str, ...]
    query: str
    headers: dict[str, str]
    body: bytes
    scheme: str
    receive: Receive
    arrived: float  # on the simulator's clock, seconds since it started

    @property
    def path(self) -> str:
        """The path as sent, each segment quoted again (what a redirect should point at)."""
        return "/" + "/".join(quote(segment, safe="") for segment in self.segments)

    def bearer(self) -> str | None:
        """The bearer token, or None when the Authorization header is missing or not Bearer."""
        scheme, _, token = self.headers.get("authorization", "").partition(" ")
        token = token.strip()
        return token if scheme.lower() == "bearer" and token else None


async def read_request(scope: Scope, receive: Receive, arrived: float) -> Request:
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
    if "host" not in headers and scope.get("server"):
        headers["host"] = "{}:{}".format(*scope["server"])
    raw = scope.get("raw_path") or quote(scope["path"]).encode()
    raw_path = raw.decode("latin-1").partition("?")[0]
    query = scope.get("query_string", b"").decode("latin-1")
    body = await _read_body(receive)
    return Request(
        scope["method"], split_path(raw_path), query, headers, body, scope.get("scheme", "http"), receive, arrived
    )


def split_path(raw_path: str) -> tuple[str, ...]:
    """The raw path's segments with dot segments removed (RFC 3986 5.2.4), each decoded once.

    ``/runs/%2E%2E`` keeps its segment ``..`` (it was quoted), ``/runs/..`` loses it (it was not).
    """
    out: list[str] = []
    parts = raw_path.split("/")[1:] if raw_path.startswith("/") else raw_path.split("/")
    for part in parts:
        if part == "..":
            if out:
                out.pop()
        elif part != ".":
            out.append(part)
    return tuple(unquote(part) for part in out if part != "")


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break  # the client went away
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


@dataclass
class Response:
    """One answer. ``chunks`` stream a body without holding it (then ``length`` may be None:
    no Content-Length, the body ends when the connection says so)."""

    status: int
    body: bytes = b""
    content_type: str | None = JSON
    headers: Headers = field(default_factory=list)
    chunks: Iterable[bytes] | None = None
    length: int | None = -1  # -1: len(body)

    @classmethod
    def json(cls, status: int, payload: Any, headers: Headers | None = None) -> Response:
        return cls(status, json.dumps(payload, separators=(",", ":")).encode(), headers=headers or [])

    @classmethod
    def error(cls, status: int, message: str, headers: Headers | None = None) -> Response:
        return cls.json(status, {"error": {"message": message}}, headers)

    async def send(self, send: Send, mode: str = "full") -> None:
        """Send it whole, or abort after the headers ("reset"), or stop halfway ("truncated")."""
        headers = list(self.headers)
        length = len(self.body) if self.length == -1 else self.length
        if length is not None:
            headers.append((b"content-length", str(length).encode()))
        if self.content_type:
            headers.append((b"content-type", self.content_type.encode()))
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        if mode == "reset":
            raise SimulatedDisconnect("simulated connection reset")
        if self.chunks is not None:
            for chunk in self.chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        if mode == "truncated":
            await send({"type": "http.response.body", "body": self.body[: len(self.body) // 2], "more_body": True})
            try:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            except Exception as exc:  # a real server refuses to end a short body: drop the connection
                raise SimulatedDisconnect("simulated truncated body") from exc
            return
        await send({"type": "http.response.body", "body": self.body})
