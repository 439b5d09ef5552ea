"""The hand-written baseline: what a competent user would write without batchgen.

A ``ThreadPoolExecutor(C)``; each thread has its own blocking ``httpx.Client`` for
the API (with the key) and one for output files (without it). Each job:

* create the run; on 429 sleep ``Retry-After`` (or 1 s) and try again;
* poll every ``--poll-interval`` seconds (1 s) until it is finished;
* download each output URL to ``OUTPUT/<id>.png`` (through a temporary file).

With ``--rate R`` creates are spaced 1/R apart by a shared pacer, as a user who
knows the account's limit would do. No ledger, no resume, no retries beyond 429:
that is the point of the comparison. Prints one JSON line of counters at the end.

    RUNBASE_BASE_URL=... RUNBASE_API_KEY=... python bench/baseline.py jobs.csv --output out --concurrency 64
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

MODEL = "openai/gpt-image-1.5"


class Pacer:
    """Creates at most ``rate`` per second, shared by all threads."""

    def __init__(self, rate: float | None):
        self.interval = 1.0 / rate if rate else 0.0
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next)
            self._next = slot + self.interval
        if slot > now:
            time.sleep(slot - now)


class Counters:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.values = {"succeeded": 0, "failed": 0, "creates": 0, "rate_limited": 0, "polls": 0}

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.values[name] += n


def read_jobs(path: str) -> list[dict[str, str]]:
    with open(path, encoding="utf-8-sig", newline="") as file:
        return [row for row in csv.DictReader(file) if row.get("prompt")]


def api_input(job: dict[str, str]) -> dict[str, object]:
    body: dict[str, object] = {"prompt": job["prompt"].strip()}
    for name in ("aspect_ratio", "quality"):
        if job.get(name):
            body[name] = job[name]
    if job.get("image_urls"):
        body["image_urls"] = [u for u in job["image_urls"].replace(",", "|").split("|") if u.strip()]
    return body


def retry_after(response: httpx.Response) -> float:
    try:
        return max(0.0, float(response.headers.get("retry-after", "")))
    except ValueError:
        return 1.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("manifest")
    parser.add_argument("--output", default="output")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rate", type=float, help="creates per second at most (if the limit is known)")
    parser.add_argument("--poll-interval", type=float, default=1.0)
    args = parser.parse_args(argv)

    base_url = os.environ.get("RUNBASE_BASE_URL", "https://runbase.net/api/v1").rstrip("/")
    key = os.environ["RUNBASE_API_KEY"]
    os.makedirs(args.output, exist_ok=True)
    jobs = read_jobs(args.manifest)
    pacer = Pacer(args.rate)
    counters = Counters()
    local = threading.local()
    all_clients: list[httpx.Client] = []
    clients_lock = threading.Lock()

    def clients() -> tuple[httpx.Client, httpx.Client]:
        if not hasattr(local, "api"):
            local.api = httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=30.0)
            local.files = httpx.Client(timeout=30.0, follow_redirects=True)
            with clients_lock:
                all_clients.extend((local.api, local.files))
        return local.api, local.files

    def do(job: dict[str, str]) -> None:
        api, files = clients()
        body = {"model": MODEL, "input": api_input(job)}
        while True:
            pacer.wait()
            response = api.post("/runs", json=body)
            if response.status_code == 429:
                counters.add("rate_limited")
                time.sleep(retry_after(response))
                continue
            response.raise_for_status()
            counters.add("creates")
            run_id = response.json()["id"]
            break
        while True:
            time.sleep(args.poll_interval)
            response = api.get(f"/runs/{run_id}")
            if response.status_code == 429:
                counters.add("rate_limited")
                time.sleep(retry_after(response))
                continue
            response.raise_for_status()
            counters.add("polls")
            run = response.json()
            if run["status"] == "succeeded":
                break
            if run["status"] in ("failed", "error", "canceled", "cancelled"):
                raise RuntimeError(f"run {run_id} {run['status']}")
        urls = run["output"]["urls"]
        for n, url in enumerate(urls):
            name = job.get("id") or run_id
            final = os.path.join(args.output, f"{name}.png" if len(urls) == 1 else f"{name}-{n + 1}.png")
            with files.stream("GET", url) as download:
                download.raise_for_status()
                with open(final + ".part", "wb") as file:
                    for chunk in download.iter_bytes():
                        file.write(chunk)
            os.replace(final + ".part", final)

    def guarded(job: dict[str, str]) -> None:
        try:
            do(job)
            counters.add("succeeded")
        except Exception as exc:  # noqa: BLE001 - counted, the batch goes on
            counters.add("failed")
            print(f"baseline: {job.get('id')}: {type(exc).__name__}: {exc}", file=sys.stderr)

    with ThreadPoolExecutor(args.concurrency) as pool:
        for _ in pool.map(guarded, jobs):
            pass
    for client in all_clients:
        client.close()
    print(json.dumps(counters.values))
    return 0 if counters.values["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
