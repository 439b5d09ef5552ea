"""The CPU floor of the HTTP stack under batchgen: httpx.AsyncClient over each transport.

Each batchgen job costs at least three requests (create, one poll, one download). This
measures the client-side CPU of one request and the requests per second, with the same
``httpx.AsyncClient`` code over:

* ``httpx``: httpx's own transport (httpcore), to the simulator in its own process;
* ``aiohttp``: batchgen's choice for the network, ``batchgen.transport.network_transport``
  (httpx_aiohttp's transport with batchgen's URL and exception handling);
* ``aiohttp-stock``: ``httpx_aiohttp.AiohttpTransport`` as the package ships it;
* ``asgi``: ``httpx.ASGITransport`` to a simulator in this process (its CPU is then the
  simulator's as well as the client's: it is shown for the in-process runs, not the network);
* ``aiohttp-raw``: ``aiohttp.ClientSession.get`` and ``read()`` with no httpx at all: the floor
  of the library that carries the bytes, what no code above it can go below;
* ``batchgen``: ``RunbaseClient.get_run`` as the runner polls (aiohttp transport, the request
  built once and sent straight to it, the overall deadline, the connection slots, the JSON
  parsed into a ``RunInfo``): what one poll costs batchgen in all.

The machine may be shared: every transport is measured ``--repeats`` times, interleaved,
and the medians are reported next to every raw figure. ``--json PATH`` stores the raw
output with the commit measured.

    python bench/http_floor.py [--requests 6000] [--workers 128] [--pool 16] [--repeats 5] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from httpx_aiohttp import AiohttpTransport

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import API_KEY, Simulator  # noqa: E402

import batchgen.simulator as in_process  # noqa: E402
from batchgen.transport import network_transport  # noqa: E402

TRANSPORTS = ("httpx", "aiohttp", "aiohttp-stock", "asgi", "aiohttp-raw", "batchgen")
ASGI_BASE_URL = "http://api.runbase.test/api/v1"


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def make_transport(name: str, limits: httpx.Limits) -> httpx.AsyncBaseTransport | None:
    if name == "httpx":
        return None
    if name == "aiohttp":
        transport = network_transport(limits, "aiohttp")
        assert transport is not None, "a proxy is set in the environment: unset it to measure aiohttp"
        return transport
    if name == "aiohttp-stock":
        return AiohttpTransport(limits=limits)
    raise ValueError(name)


async def measure(name: str, base_url: str, run_id: str, requests: int, workers: int, pool: int) -> tuple[float, float]:
    if name in ("aiohttp-raw", "batchgen"):
        return await measure_without_httpx_client(name, base_url, run_id, requests, workers, pool)
    limits = httpx.Limits(max_connections=pool, max_keepalive_connections=pool)
    if name == "asgi":
        transport: httpx.AsyncBaseTransport | None = in_process.Simulator(in_process.SimConfig(latency=0.0)).transport()
        # The in-process simulator has its own runs: make one there.
        async with httpx.AsyncClient(transport=transport, headers={"Authorization": f"Bearer {API_KEY}"}) as c:
            body = {"model": "openai/gpt-image-1.5", "input": {"prompt": "floor"}}
            run_id = (await c.post(base_url + "/runs", json=body)).json()["id"]
    else:
        transport = make_transport(name, limits)
    async with httpx.AsyncClient(
        base_url=base_url + "/",
        headers={"Authorization": f"Bearer {API_KEY}"},
        limits=limits,
        transport=transport,
        timeout=60.0,  # 128 requests queue for 16 connections: httpx's 5 s pool timeout is too short on a busy machine
    ) as client:
        # Warm the pool: open the connections it will keep.
        await asyncio.gather(*(client.get(f"runs/{run_id}") for _ in range(min(pool, workers) * 2)))
        remaining = requests

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                response = await client.get(f"runs/{run_id}")
                response.raise_for_status()

        started_cpu, started = cpu(), time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(workers)))
        return (cpu() - started_cpu) / requests, time.perf_counter() - started


async def measure_without_httpx_client(
    name: str, base_url: str, run_id: str, requests: int, workers: int, pool: int
) -> tuple[float, float]:
    """The same workload through bare aiohttp, or through batchgen's own client."""
    import aiohttp

    from batchgen.api import RunbaseClient

    url = f"{base_url}/runs/{run_id}"
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=pool), headers={"Authorization": f"Bearer {API_KEY}"}
    )
    client = RunbaseClient(base_url, API_KEY, max_connections=pool)

    async def once() -> None:
        if name == "batchgen":
            await client.get_run(run_id)
            return
        async with session.get(url) as response:
            await response.read()
            response.raise_for_status()

    try:
        await asyncio.gather(*(once() for _ in range(min(pool, workers) * 2)))  # warm the pool
        remaining = requests

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                await once()

        started_cpu, started = cpu(), time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(workers)))
        return (cpu() - started_cpu) / requests, time.perf_counter() - started
    finally:
        await session.close()
        await client.aclose()


def commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        status = ["git", "status", "--porcelain", "--untracked-files=no", "--", "batchgen", "bench"]
        dirty = subprocess.run(status, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=6000)
    parser.add_argument("--workers", type=int, default=128)
    parser.add_argument("--pool", type=int, default=16, help="connections per client (the runner uses up to 16)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--transports", default=",".join(TRANSPORTS))
    parser.add_argument("--json", type=Path, help="store the raw figures here")
    args = parser.parse_args()
    names = [n for n in args.transports.split(",") if n]
    unknown = set(names) - set(TRANSPORTS)
    if unknown:
        parser.error(f"unknown transport(s) {sorted(unknown)}; known: {', '.join(TRANSPORTS)}")

    load_before = _load()
    raw: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory() as tmp, Simulator(["--latency", "0"], Path(tmp) / "sim.log") as sim:
        created = httpx.post(
            sim.base_url + "/runs",
            json={"model": "openai/gpt-image-1.5", "input": {"prompt": "floor"}},
            headers={"Authorization": f"Bearer {API_KEY}"},
        ).json()
        print(
            f"{args.requests} GETs per measurement, {args.workers} concurrent, pool {args.pool}, "
            f"{args.repeats} rounds (transports interleaved); client CPU only except asgi",
            flush=True,
        )
        for round_ in range(1, args.repeats + 1):
            for name in names:
                sim_cpu = sim.cpu()
                base_url = ASGI_BASE_URL if name == "asgi" else sim.base_url
                per_request, wall = asyncio.run(
                    measure(name, base_url, created["id"], args.requests, args.workers, args.pool)
                )
                sample = {
                    "cpu_ms_per_request": 1000 * per_request,
                    "requests_per_s": args.requests / wall,
                    "simulator_cpu_ms_per_request": (
                        0.0 if name == "asgi" else 1000 * (sim.cpu() - sim_cpu) / args.requests
                    ),
                }
                raw[name].append(sample)
                print(
                    f"  round {round_} {name:>13}: {sample['cpu_ms_per_request']:.3f} ms CPU/request, "
                    f"{sample['requests_per_s']:6.0f} req/s, simulator "
                    f"{sample['simulator_cpu_ms_per_request']:.3f} ms CPU/request",
                    flush=True,
                )
    medians = {
        name: {key: statistics.median(s[key] for s in samples) for key in samples[0]} for name, samples in raw.items()
    }
    print("medians:")
    for name, m in medians.items():
        print(
            f"  {name:>13}: {m['cpu_ms_per_request']:.3f} ms CPU/request, {m['requests_per_s']:6.0f} req/s, "
            f"simulator {m['simulator_cpu_ms_per_request']:.3f} ms CPU/request"
        )
    if args.json:
        record: dict[str, Any] = {
            "command": "python bench/http_floor.py " + " ".join(sys.argv[1:]),
            "commit": commit(),
            "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": {
                "python": platform.python_version(),
                "cpus": _cpus(),
                "load_before": load_before,
                "load_after": _load(),
            },
            "parameters": {k: v for k, v in vars(args).items() if k != "json"},
            "medians": medians,
            "raw": raw,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=2) + "\n")
        print(f"stored in {args.json}")
    return 0


def _cpus() -> int:
    return os.cpu_count() or 0


def _load() -> list[float]:
    return list(os.getloadavg())


if __name__ == "__main__":
    sys.exit(main())
