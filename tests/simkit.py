"""Helpers shared by the simulator's tests: a hand-moved clock and clients for its two origins."""

from __future__ import annotations

import struct
import zlib
from typing import Any

import httpx

from batchgen.models import DEFAULT_MODEL
from batchgen.simulator import SimConfig, Simulator

BASE = "http://api.runbase.test/api/v1"
API_KEY = "test-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class FakeClock:
    """A wall clock the test moves by hand, so lifecycles and rate limits need no sleeping."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make(clock: FakeClock | None = None, **config: Any) -> tuple[Simulator, FakeClock]:
    clock = clock or FakeClock()
    return Simulator(SimConfig(**config), clock=clock), clock


def api_client(sim: Simulator, headers: dict[str, str] | None = None) -> httpx.AsyncClient:
    headers = AUTH if headers is None else headers
    return httpx.AsyncClient(transport=sim.transport(), base_url=BASE, headers=headers)


def files_client(sim: Simulator, **kwargs: Any) -> httpx.AsyncClient:
    """A client without the API key, as a correct client downloads outputs."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=sim), **kwargs)


async def create(
    client: httpx.AsyncClient, prompt: str = "a ceramic lamp", headers: dict[str, str] | None = None, **fields: Any
) -> httpx.Response:
    body = {"model": DEFAULT_MODEL, "input": {"prompt": prompt, **fields}}
    return await client.post("/runs", json=body, headers=headers)


async def finished(client: httpx.AsyncClient, clock: FakeClock, run_id: str) -> dict[str, Any]:
    clock.advance(10)
    response = await client.get(f"/runs/{run_id}")
    assert response.status_code == 200
    return response.json()


def png_size(data: bytes) -> tuple[int, int]:
    """Check that `data` is a well-formed RGB PNG and return its (width, height)."""
    assert data[:8] == PNG_SIGNATURE
    pos, chunks = 8, {}
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert zlib.crc32(kind + body) == crc
        chunks[kind] = body
        pos += 12 + length
    width, height = struct.unpack(">II", chunks[b"IHDR"][:8])
    assert len(zlib.decompress(chunks[b"IDAT"])) == height * (1 + 3 * width)
    assert b"IEND" in chunks
    return width, height
