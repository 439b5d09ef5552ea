"""batchgen's own client-side CPU per job: ``RunbaseClient`` creates, polls and downloads through a stub
transport that answers at once, so no network, server or HTTP library below httpx's API is measured.

What is left is what batchgen's client adds per job (requests built, slots, deadlines, exception
mapping, answers parsed, the image checked): the part of scenario 5's CPU that batchgen's code decides.
Sources are compared back to back, alternating processes; each process reports the least of its
rounds (the figure least disturbed by other work on a shared machine), and the medians of those are shown.

    python bench/client_cycle.py [--jobs 1000] [--rounds 5] [--repeat 5] SOURCE [SOURCE ...]

A SOURCE is ``worktree`` (batchgen/ as it is now) or a git revision. Nothing is stored.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import SOURCE, take_snapshot  # noqa: E402

BASE_URL = "http://127.0.0.1:8123/api/v1"
KEY = "sk-bench-0123456789abcdef"


def one_process(jobs: int, rounds: int, workers: int) -> float:
    """The least CPU per job (microseconds) over ``rounds`` rounds of ``jobs`` jobs, in this process."""
    import anyio
    import httpx

    from batchgen.api import RunbaseClient
    from batchgen.images import SNIFF_BYTES
    from batchgen.models import JobSpec, image_input

    png = bytes.fromhex("89504e470d0a1a0a0000000d49484452") + bytes(1000 + SNIFF_BYTES)
    png += bytes.fromhex("0000000049454e44ae426082")
    file_url = BASE_URL.rsplit("/api/", 1)[0] + "/files/run_000123/0.png"
    answers = {
        "POST": json.dumps({"id": "run_000123", "status": "starting"}).encode(),
        "GET": json.dumps({"id": "run_000123", "status": "succeeded", "output": {"urls": [file_url]}}).encode(),
    }

    class Stub(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            if request.url.path.startswith("/files/"):
                kind, body = "image/png", png
            else:
                kind, body = "application/json", answers[request.method]
            headers = {"content-type": kind, "content-length": str(len(body))}
            return httpx.Response(200, headers=headers, stream=httpx.ByteStream(body), request=request)

    class Sink:
        def write(self, chunk: bytes) -> None:
            pass

    async def main() -> float:
        async with RunbaseClient(BASE_URL, KEY, transport=Stub(), max_connections=32) as client:
            spec = JobSpec(job_id="lamp", input=image_input("a ceramic lamp on a table"))

            async def job() -> None:
                info = await client.get_run((await client.create_run(spec)).run_id)
                for url in info.urls:
                    await client.download(url, Sink())

            per_round = []
            each = max(1, jobs // workers)

            async def worker() -> None:
                for _ in range(each):
                    await job()

            for number in range(rounds + 1):  # the first round warms up
                started = time.process_time()
                async with anyio.create_task_group() as tg:
                    for _ in range(workers):
                        tg.start_soon(worker)
                if number:
                    per_round.append((time.process_time() - started) / (each * workers) * 1e6)
            return min(per_round)

    return anyio.run(main)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sources", nargs="*", default=["worktree"])
    parser.add_argument("--jobs", type=int, default=1000, help="jobs per round (a multiple of --workers)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per process (the least is kept)")
    parser.add_argument("--repeat", type=int, default=5, help="processes per source, alternated")
    parser.add_argument("--workers", type=int, default=32)
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a measuring process
    args = parser.parse_args()
    if args.one:
        print(f"{one_process(args.jobs, args.rounds, args.workers):.1f}")
        return 0
    figures: dict[str, list[float]] = {source: [] for source in args.sources}
    with tempfile.TemporaryDirectory(prefix="batchgen-client-cycle-") as tmp:
        places = {}
        for i, source in enumerate(args.sources):  # harness's snapshot: batchgen/ as it is, or at a revision
            take_snapshot(source, Path(tmp) / str(i))
            places[source] = SOURCE["src"]
        for _ in range(args.repeat):
            for source, place in places.items():
                command = [sys.executable, __file__, "--one", "--jobs", str(args.jobs), "--rounds", str(args.rounds),
                           "--workers", str(args.workers)]  # fmt: skip
                env = {**os.environ, "PYTHONPATH": str(place)}
                done = subprocess.run(command, cwd=place, env=env, capture_output=True, text=True, check=True)
                figures[source].append(float(done.stdout.split()[0]))
    print(f"client cycle (create, poll, download), {args.jobs} jobs a round; load {os.getloadavg()[0]:.2f}")
    for source, values in figures.items():
        shown = ", ".join(f"{v:.0f}" for v in values)
        print(f"  {source:>12}: median {statistics.median(values):6.1f} us a job  (each process's least: {shown})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
