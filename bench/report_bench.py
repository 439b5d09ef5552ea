"""How fast is `batchgen report` with 10,000 jobs, and how fast does its page show in a browser?

Fills a ledger with N jobs through the Ledger's own write methods (the calls the runner
makes: sync, begin attempt, run created, succeeded or ended), with a real small PNG per
succeeded job in three aspect ratios: 90% succeeded, 6% failed, 3% pending, 1% succeeded
with the file deleted afterwards. Then measures:

* generation: the real `batchgen report` CLI in a subprocess (wall time, peak RSS), and in
  process the time to collect (ledger + disk), render and write, and the page's size;
* the page in Debian's chromium, headless (Playwright): time from navigation start to the
  first grid render (the page's own `batchgen-first-render` mark), cards in the DOM,
  and how long a search and a state filter over all N jobs take inside the page.

    python bench/report_bench.py                    # 10,000 jobs, medians of 3
    python bench/report_bench.py --jobs 1000 --repeat 1
    python bench/report_bench.py --json bench/results/report-10k_<commit>.json

Needs chromium (`apt-get install -y chromium`) and the test extra (`pip install -e '.[test]'`).
Timings want a quiet machine: 2 cores shared with other work give noisy figures.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from batchgen.ledger import Ledger  # noqa: E402
from batchgen.models import JobSpec, SavedOutput, image_input  # noqa: E402
from batchgen.report import build_report_data, render_html, write_html  # noqa: E402

CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
RATIOS = {"1:1": (64, 64), "3:2": (96, 64), "2:3": (64, 96)}


def png(width: int, height: int, shade: int) -> bytes:
    raw = b"".join(b"\x00" + bytes((shade, 128, 255 - shade)) * width for _ in range(height))
    chunks = [(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)), (b"IDAT", zlib.compress(raw))]
    body = b"".join(struct.pack(">I", len(d)) + k + d + struct.pack(">I", zlib.crc32(k + d)) for k, d in chunks)
    return b"\x89PNG\r\n\x1a\n" + body + struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))


def make_batch(folder: Path, n: int) -> dict[str, int]:
    """A ledger of ``n`` jobs in ``folder``, written through Ledger's methods; returns the states made."""
    import hashlib

    output = folder / "output"
    output.mkdir(parents=True)
    words = "ceramic lamp linen shirt oak chair glass vase wool throw stoneware mug brass candle".split()
    jobs = []
    for i in range(n):
        ratio = list(RATIOS)[i % 3]
        prompt = f"A {words[i % len(words)]} {words[(i * 7) % len(words)]} product photo number {i}, soft light, " * 2
        metadata = {"sku": f"SKU-{i:06d}", "category": words[i % len(words)], "row": i}
        jobs.append(JobSpec(job_id=f"job-{i:05d}", input=image_input(prompt, ratio, "high"), metadata=metadata))
    states = {"succeeded": 0, "failed": 0, "pending": 0, "missing": 0}
    images = {r: png(w, h, i * 40) for i, (r, (w, h)) in enumerate(RATIOS.items())}
    with Ledger(output / "batchgen.sqlite") as ledger:
        ledger.sync_manifest("manifests/catalogue.yaml", jobs, output_dir=str(output.resolve()))
        session = ledger.session_started("manifests/catalogue.yaml")
        for i, job in enumerate(jobs):
            kind = i % 100
            if kind < 3:
                states["pending"] += 1
                continue
            attempt = ledger.begin_attempt(job)
            if kind < 9:
                ledger.attempt_ended(
                    attempt, job.job_id, "rejected", "HTTP 400: input.prompt was refused by the content policy",
                    job_failed=True,
                )  # fmt: skip
                states["failed"] += 1
                continue
            ledger.run_created(attempt, f"run_{i:08x}")
            data = images[job.input["aspect_ratio"]]
            name = f"{job.job_id}.png"
            (output / name).write_bytes(data)
            saved = SavedOutput(0, name, len(data), hashlib.sha256(data).hexdigest(), "image/png")
            ledger.job_succeeded(attempt, job.job_id, [saved])
            if kind == 99:
                (output / name).unlink()
                states["missing"] += 1
            else:
                states["succeeded"] += 1
        ledger.session_finished(session, "done")
    return states


def generation(folder: Path, repeat: int) -> dict[str, Any]:
    output = folder / "output"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    walls, rss = [], []
    for _ in range(repeat):
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        start = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-m", "batchgen", "report", "--output", str(output)],
            capture_output=True, text=True, env=env, check=False,
        )  # fmt: skip
        walls.append(time.perf_counter() - start)
        if result.returncode != 0:
            raise SystemExit(f"batchgen report failed: {result.stderr}")
        rss.append(max(before, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
    collect, render, write = [], [], []
    page = output / "report.html"
    for _ in range(repeat):
        start = time.perf_counter()
        with Ledger(output / "batchgen.sqlite", readonly=True) as ledger:
            data = build_report_data(ledger, output)
        collect.append(time.perf_counter() - start)
        start = time.perf_counter()
        render_html(data, page)
        render.append(time.perf_counter() - start)
        start = time.perf_counter()
        write_html(data, page)
        write.append(time.perf_counter() - start)
    return {
        "cli_wall_s": _stats(walls),
        "cli_peak_rss_mb": round(max(rss) / 1024, 1),
        "collect_s": _stats(collect),
        "render_s": _stats(render),
        "render_and_write_s": _stats(write),
        "page_bytes": page.stat().st_size,
        "cli_stdout": result.stdout.strip(),
    }


def browser(folder: Path, repeat: int, jobs: int) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium")
    if executable is None:
        return {"skipped": "chromium is not installed (apt-get install -y chromium)"}
    url = (folder / "output" / "report.html").resolve().as_uri()
    first, loaded, cards, search, filtered = [], [], [], [], []
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        version = chromium.version
        for _ in range(repeat):
            page = chromium.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url)
            page.wait_for_selector("body[data-ready=true]", timeout=60_000)
            first.append(page.evaluate("performance.getEntriesByName('batchgen-first-render')[0].startTime"))
            page.wait_for_load_state("load")
            loaded.append(page.evaluate("performance.getEntriesByType('navigation')[0].loadEventEnd"))
            cards.append(page.locator(".card").count())
            search.append(
                page.evaluate(
                    """() => { const box = document.getElementById('search'); const t0 = performance.now();
                    box.value = 'SKU-004321'; box.dispatchEvent(new KeyboardEvent('keydown', {key: 'Enter'}));
                    return performance.now() - t0; }"""
                )
            )
            assert page.inner_text("#shown") == f"1 of {jobs:,} shown" or jobs <= 4321, page.inner_text("#shown")
            filtered.append(
                page.evaluate(
                    """() => { const box = document.getElementById('search'); box.value = '';
                    box.dispatchEvent(new KeyboardEvent('keydown', {key: 'Enter'})); const t0 = performance.now();
                    document.querySelector('#filters button[data-state=failed]').click();
                    return performance.now() - t0; }"""
                )
            )
            page.close()
        chromium.close()
    return {
        "chromium": version,
        "first_render_ms": _stats(first),
        "load_event_ms": _stats(loaded),
        "cards_in_dom": max(cards),
        "search_ms": _stats(search),
        "filter_failed_ms": _stats(filtered),
    }


def _stats(values: list[float]) -> dict[str, Any]:
    return {"median": round(statistics.median(values), 4), "runs": [round(v, 4) for v in values]}


def _git(*args: str) -> str:
    result = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False)
    return result.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--keep", type=Path, help="build the batch in this folder and keep it")
    args = parser.parse_args()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="batchgen-report-bench-"))
    try:
        start = time.perf_counter()
        states = make_batch(folder, args.jobs)
        made = time.perf_counter() - start
        figures = {
            "machine": {
                "cores": os.cpu_count(),
                "python": platform.python_version(),
                "platform": platform.platform(),
                "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
                "command": " ".join(["python", "bench/report_bench.py", *sys.argv[1:]]),
                "git_head": _git("rev-parse", "--short", "HEAD"),
                "git_dirty": _git("status", "--porcelain", "--", "batchgen", "bench"),
            },
            "jobs": args.jobs,
            "states": states,
            "batch_made_s": round(made, 2),
            "generation": generation(folder, args.repeat),
            "browser": browser(folder, args.repeat, args.jobs),
        }
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)
    text = json.dumps(figures, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
