"""The CPU floor of the HTTP stack batchgen uses: httpx.AsyncClient on anyio/asyncio.

Each batchgen job costs at least three requests (create, one poll, one download). This
measures the client-side CPU of one request, against the simulator in its own process,
for several connection-pool sizes: httpcore walks every pooled connection on each
request start and end (``_assign_requests_to_connections``), so an oversized pool costs
CPU per request, whatever the traffic.

    python bench/http_floor.py [--requests 6000] [--workers 128] [--pools 16,64,128,256]
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import API_KEY, Simulator  # noqa: E402


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def measure(base_url: str, run_id: str, requests: int, workers: int, pool: int) -> tuple[float, float]:
    limits = httpx.Limits(max_connections=pool, max_keepalive_connections=pool)
    async with httpx.AsyncClient(
        base_url=base_url + "/", headers={"Authorization": f"Bearer {API_KEY}"}, limits=limits
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


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=6000)
    parser.add_argument("--workers", type=int, default=128)
    parser.add_argument("--pools", default="16,64,128,256")
    args = parser.parse_args()
    import tempfile

    with tempfile.TemporaryDirectory() as tmp, Simulator(["--latency", "0"], Path(tmp) / "sim.log") as sim:
        created = httpx.post(
            sim.base_url + "/runs",
            json={"model": "openai/gpt-image-1.5", "input": {"prompt": "floor"}},
            headers={"Authorization": f"Bearer {API_KEY}"},
        ).json()
        print(f"{args.requests} GETs per pool size, {args.workers} concurrent, client CPU only")
        for pool in (int(p) for p in args.pools.split(",")):
            sim_cpu = sim.cpu()
            per_request, wall = asyncio.run(measure(sim.base_url, created["id"], args.requests, args.workers, pool))
            print(
                f"  pool {pool:4}: {1000 * per_request:.3f} ms CPU/request, {args.requests / wall:6.0f} req/s, "
                f"simulator {1000 * (sim.cpu() - sim_cpu) / args.requests:.3f} ms CPU/request",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
