"""How long does ``batchgen status`` take on a ledger of a million jobs?

Builds a ledger shaped like a large batch after a few sessions (the schema made by
``batchgen.ledger.Ledger``; rows inserted in bulk here, as the runner would have
left them): 94% of jobs succeeded with one file each, 4% failed with errors drawn
from ~40 distinct messages of every kind, 1.5% pending, 0.5% with a run in flight,
some jobs with a second attempt, a few creates whose answer never came, 30 sessions.
Then runs the real CLI (``python -m batchgen status`` and ``status --json``) in a
subprocess ``--repeat`` times each and reports every wall time, the median, and the
time of ``Ledger.status_figures()`` alone in this process.

    python bench/status_bench.py                       # 1,000,000 jobs, 5 repeats
    python bench/status_bench.py --jobs 100000 --repeat 3
    python bench/status_bench.py --save                # also bench/results/status-1m_<commit>.json

The ledger is built once under --dir (default: a temporary folder, removed) and
reused when it is there with the same size. Python's own start (about 0.1-0.2 s
of each CLI figure) is measured too (``python -c pass``) and reported apart.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from batchgen.ledger import Ledger  # noqa: E402

sys.path.insert(0, str(REPO / "bench"))
import results_file  # noqa: E402

KINDS = ["rejected", "run_failed", "download", "server_error", "rate_limit", "unknown", "missing"]


def build(path: Path, jobs: int, seed: int = 1) -> float:
    """Create a ledger of ``jobs`` jobs at ``path``; returns seconds taken."""
    started = time.monotonic()
    for side in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        side.unlink(missing_ok=True)
    Ledger(path).close()  # the schema, migrated to the current version
    rng = random.Random(seed)
    errors = [(f"HTTP 400: prompt rejected by content policy (rule {i})", "rejected") for i in range(15)]
    errors += [(f"run r-{i:04x} ended 'failed': generation error {i}", "run_failed") for i in range(10)]
    errors += [(f"download kept failing: HTTP 50{i % 4} downloading https://files.example/{i}", "download")
               for i in range(5)]  # fmt: skip
    errors += [("create kept failing: HTTP 503: upstream unavailable", "server_error"),
               ("create kept failing: HTTP 429: rate limited", "rate_limit"),
               ("the create was sent but its answer lost; the run may exist: no answer in time", "unknown"),
               ("its file is missing and no run is recorded to fetch it from", "missing")]  # fmt: skip
    weights = [1 / (i + 1) for i in range(len(errors))]  # a few errors are common, most are rare
    now = time.time()
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = OFF")
    db.execute("BEGIN")
    meta = {"generation": "1", "manifest": "catalogue.csv", "output_dir": str(path.parent / "out"), "fingerprint": ""}
    db.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", meta.items())
    job_rows, attempt_rows, output_rows = [], [], []
    attempt_id = 0

    def flush() -> None:
        db.executemany(
            "INSERT INTO jobs (job_id, seq, generation, spec_json, spec_hash, metadata_json, state, attempts, error, "
            "error_kind, updated_at) VALUES (?, ?, 1, ?, ?, '{}', ?, ?, ?, ?, ?)",
            job_rows,
        )
        db.executemany(
            "INSERT INTO attempts (attempt_id, job_id, spec_hash, run_id, status, error, error_kind, started_at, "
            "created_at, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            attempt_rows,
        )
        db.executemany(
            "INSERT INTO outputs (job_id, n, attempt_id, path, bytes, sha256, content_type, saved_at) "
            "VALUES (?, 0, ?, ?, 1000000, ?, 'image/png', ?)",
            output_rows,
        )
        job_rows.clear()
        attempt_rows.clear()
        output_rows.clear()

    for seq in range(jobs):
        job_id = f"sku-{seq:07d}"
        spec_hash = f"v1:{seq:064x}"
        spec = json.dumps({"model": "openai/gpt-image-1.5", "input": {"prompt": f"product photo {seq}"}})
        draw = rng.random()
        t = now - rng.random() * 86400
        if draw < 0.94:
            state, error, kind, tries = "succeeded", None, None, 1 + (rng.random() < 0.03)
        elif draw < 0.98:
            error, kind = rng.choices(errors, weights)[0]
            state, tries = "failed", 1 if kind == "rejected" else 3
        elif draw < 0.995:
            state, error, kind, tries = "pending", None, None, 0
        else:
            state, error, kind, tries = "running", None, None, 1
        for k in range(tries):
            attempt_id += 1
            last = k == tries - 1
            if state == "succeeded" and last:
                status = "succeeded"
            elif state == "running" and last:
                status = "running"
            elif state == "failed":
                status = {"rejected": "rejected", "unknown": "unknown"}.get(str(kind), "failed")
            else:
                status = "unknown" if rng.random() < 0.05 else "failed"
            run_id = None if status in ("rejected", "unknown") else f"run-{attempt_id:x}"
            attempt_rows.append((attempt_id, job_id, spec_hash, run_id, status, error, kind, t, t, t + 30))
        if state == "succeeded":
            output_rows.append((job_id, attempt_id, f"{job_id}.png", f"{seq:064x}", t))
        job_rows.append((job_id, seq, spec, spec_hash, state, tries, error, kind, t))
        if len(job_rows) >= 20000:
            flush()
    flush()
    for session in range(1, 31):
        stats = {"succeeded": 30000, "failed": 1200, "created": 31000, "reused": 400, "rate_limited": 350,
                 "retries": 900, "unknown_creates": 3, "failed_runs": 800, "downloads": 30000}  # fmt: skip
        db.execute(
            "INSERT INTO sessions (session_id, manifest, started_at, finished_at, outcome, exit_code, stats_json) "
            "VALUES (?, 'catalogue.csv', ?, ?, 'done', 1, ?)",
            (session, now - (31 - session) * 3600, now - (31 - session) * 3600 + 1800, json.dumps(stats)),
        )
    db.execute("COMMIT")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    return time.monotonic() - started


def cli_seconds(args: list[str], repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        done = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO)
        times.append(time.perf_counter() - started)
        if done.returncode != 0:
            raise SystemExit(f"{args} failed ({done.returncode}): {done.stderr}")
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--dir", type=Path, help="where to build (and keep) the ledger (default: a temporary folder)")
    parser.add_argument("--save", action="store_true", help="write bench/results/status-<size>_<commit>.json")
    args = parser.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as temp:
        folder = args.dir or Path(temp)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"status-{args.jobs}.sqlite"
        built = None
        if not path.is_file() or _jobs_in(path) != args.jobs:
            built = build(path, args.jobs)
            print(f"built {args.jobs:,} jobs in {built:.1f} s: {path} ({path.stat().st_size / 1e6:.0f} MB)")
        with Ledger(path, readonly=True) as ledger:
            started = time.perf_counter()
            figures = ledger.status_figures()
            in_process = time.perf_counter() - started
        python_start = cli_seconds(["-c", "pass"], args.repeat)
        text = cli_seconds(["-m", "batchgen", "status", "--ledger", str(path)], args.repeat)
        as_json = cli_seconds(["-m", "batchgen", "status", "--ledger", str(path), "--json"], args.repeat)
        shown = subprocess.run(
            [sys.executable, "-m", "batchgen", "status", "--ledger", str(path)], capture_output=True, text=True
        ).stdout
    size = f"{args.jobs // 1_000_000}m" if args.jobs % 1_000_000 == 0 else str(args.jobs)
    rows = [
        {"what": what, "jobs": args.jobs, "median_s": round(statistics.median(times), 3), "runs": len(times),
         "samples_s": [round(t, 3) for t in times]}
        for what, times in (("status", text), ("status --json", as_json), ("python -c pass", python_start))
    ]  # fmt: skip
    result = results_file.envelope(
        f"status-{size}",
        rows,
        load_before,
        ledger_build_seconds=built,
        status_figures_in_process_seconds=round(in_process, 3),
        median_text=rows[0]["median_s"],
        median_json=rows[1]["median_s"],
        status_text_seconds=rows[0]["samples_s"],
        jobs_by_state=figures["jobs"],
        status_output=shown,
    )
    print(shown)
    print(json.dumps({k: v for k, v in result.items() if k != "status_output"}, indent=2))
    if args.save:
        print(f"saved {results_file.write(result)}")


def _jobs_in(path: Path) -> int:
    try:
        with sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True) as db:
            return int(db.execute("SELECT count(*) FROM jobs").fetchone()[0])
    except sqlite3.Error:
        return -1


if __name__ == "__main__":
    main()
