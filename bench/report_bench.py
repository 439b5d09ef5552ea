"""How fast is `batchgen report` with 10,000 jobs, and how fast does its page show in a browser?

Makes a real batch of N jobs (the runner against the in-process simulator, images in three
aspect ratios): 6% refused, 3% left pending when the credits run out, 1% of the saved
files deleted afterwards. Then measures:

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
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from batchgen.ledger import Ledger  # noqa: E402
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


def make_batch(folder: Path, n: int) -> dict[str, int]:
    """A real batch of ``n`` jobs in ``folder``: the runner against the in-process simulator.

    6% of the prompts are refused (400), the credits run out before the last 3% (they stay
    pending), and 1% of the saved files are deleted afterwards. Returns the states made.
    """
    import yaml

    from batchgen import run_batch
    from batchgen.simulator import SimConfig, Simulator

    words = "ceramic lamp linen shirt oak chair glass vase wool throw stoneware mug brass candle".split()
    jobs, refused = [], 0
    for i in range(n):
        prompt = f"A {words[i % len(words)]} {words[(i * 7) % len(words)]} product photo number {i}, soft light"
        if i % 100 in range(3, 9):
            prompt += ", refused"
            refused += 1
        jobs.append(
            {
                "id": f"job-{i:05d}",
                "prompt": prompt,
                "aspect_ratio": ("1:1", "3:2", "2:3")[i % 3],
                "metadata": {"sku": f"SKU-{i:06d}", "category": words[i % len(words)]},
            }
        )
    manifest = folder / "catalogue.yaml"
    manifest.write_text(yaml.safe_dump({"jobs": jobs}, sort_keys=False), encoding="utf-8")
    pending = n * 3 // 100
    sim = Simulator(SimConfig(latency=0.0, refuse_prompts_containing="refused", credits=n - refused - pending))
    result = run_batch(
        manifest, output_dir=folder / "output", transport=sim.transport(), api_key="sk-bench",
        base_url="http://api.runbase.test/api/v1", progress="none", concurrency=32,
    )  # fmt: skip
    deleted = 0
    for i, path in enumerate(sorted((folder / "output").glob("*.png"))):
        if i % 100 == 99:
            path.unlink()
            deleted += 1
    return {**result.counts, "files_deleted": deleted, "exit_code": result.exit_code}


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
    # A reuse index of its own: every run of the benchmark makes its images anew.
    os.environ["BATCHGEN_CACHE_DIR"] = str(folder / "cache")
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
                "git_dirty": _git("status", "--porcelain", "--", "batchgen", "bench", ":!bench/results"),
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
