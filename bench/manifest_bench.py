"""How long `batchgen validate` takes on a large CSV or JSONL manifest, and how much memory it holds.

    python bench/manifest_bench.py                  # 1,000,000 and 5,000,000 rows, 3 runs each
    python bench/manifest_bench.py --rows 200000 --repeat 1   # a quick look while developing
    python bench/manifest_bench.py --rows 200000 --format csv jsonl   # both formats, back to back

Each size gets a CSV written like bench/run.py's scenario 6 (explicit ids, prompts,
aspect ratio, quality and two metadata columns), cached in --work; ``--format jsonl``
writes the same jobs as JSONL (the two metadata columns under ``metadata``). Each command
runs in its own process, reaped with os.wait4 for its CPU time and peak RSS:

- ``validate``: ``python -m batchgen validate FILE`` (what the targets of issue 10 are about);
- ``stream``:   ``batchgen.manifest.iter_jobs`` consumed job by job (what ``run`` reads).

The raw figures, the commit measured and the load average around each run go to
``bench/results/manifest_<commit>.json``. Figures taken while the load average
is above the core count are marked ``busy``: they need a quiet machine to mean much.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

from run import write_manifest  # noqa: E402  (the same rows as scenario 6)

STREAM = (
    "import sys\n"
    "from batchgen.manifest import iter_jobs\n"
    "count = 0\n"
    "for job in iter_jobs(sys.argv[1]):\n"
    "    count += 1\n"
    "print(count)\n"
)


EMPTY_CACHE = Path(tempfile.mkdtemp(prefix="batchgen-bench-cache-"))


def measure(command: list[str]) -> dict[str, float | int | bool]:
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    # An empty reuse index of its own: what the user's cache holds must not change what is measured.
    env = {**os.environ, "BATCHGEN_CACHE_DIR": str(EMPTY_CACHE)}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO, env=env)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    assert process.stdout is not None and process.stderr is not None
    output, errors = process.stdout.read().decode(), process.stderr.read().decode()
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"{command} exited {code}:\n{errors[-2000:]}")
    load = max(load_before, os.getloadavg()[0])
    return {
        "wall_s": round(wall, 3),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 3),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "load_avg": round(load, 2),
        "busy": load > (os.cpu_count() or 1),
        "stdout": output.strip()[-200:],
    }


def jsonl_manifest(path: Path, rows: int) -> Path:
    """The CSV manifest's jobs as JSONL, one object per line with the same fields and metadata."""
    if path.exists():
        return path
    source = write_manifest(path.with_suffix(".csv"), rows, metadata=True)
    tmp = path.with_suffix(".tmp")
    with open(source, encoding="utf-8", newline="") as file, open(tmp, "w", encoding="utf-8") as out:
        for row in csv.DictReader(file):
            job = {key: row.pop(key) for key in ("id", "prompt", "aspect_ratio", "quality")}
            out.write(json.dumps({**job, "metadata": row}, ensure_ascii=False) + "\n")
    tmp.rename(path)
    return path


def commit() -> str:
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO).stdout
    dirty = subprocess.run(["git", "status", "--porcelain", "batchgen"], capture_output=True, text=True, cwd=REPO)
    return head.strip() + ("-dirty" if dirty.stdout.strip() else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 5_000_000])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--format", nargs="+", choices=("csv", "jsonl"), default=["csv"], help="manifest formats")
    parser.add_argument("--work", type=Path, default=Path("/tmp/batchgen-manifest-bench"))
    parser.add_argument("--no-stream", action="store_true", help="measure validate only")
    parser.add_argument("--out", type=Path, default=None, help="default bench/results/manifest_<commit>.json")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    measured = commit()
    results = []
    for rows, kind in [(rows, kind) for rows in args.rows for kind in args.format]:
        if kind == "csv":
            manifest = write_manifest(args.work / f"big-{rows}.csv", rows, metadata=True)
        else:
            manifest = jsonl_manifest(args.work / f"big-{rows}.jsonl", rows)
        commands = {"validate": [sys.executable, "-m", "batchgen", "validate", str(manifest)]}
        if not args.no_stream:
            commands["stream"] = [sys.executable, "-c", STREAM, str(manifest)]
        for name, command in commands.items():
            runs = [measure(command) for _ in range(args.repeat)]
            summary = {
                "rows": rows,
                "format": kind,
                "command": name,
                "file_mb": round(manifest.stat().st_size / 2**20, 1),
                "median_wall_s": statistics.median(run["wall_s"] for run in runs),
                "median_cpu_s": statistics.median(run["cpu_s"] for run in runs),
                "max_peak_rss_mb": max(run["peak_rss_mb"] for run in runs),
                "any_busy": any(run["busy"] for run in runs),
                "runs": runs,
            }
            results.append(summary)
            print(
                f"{rows:>9,} rows {kind:<5} {name:<8} wall {summary['median_wall_s']:6.2f} s"
                f"  cpu {summary['median_cpu_s']:6.2f} s"
                f"  peak RSS {summary['max_peak_rss_mb']:6.1f} MB{'  (busy machine)' if summary['any_busy'] else ''}",
                flush=True,
            )
    out = args.out or REPO / "bench" / "results" / f"manifest_{measured}.json"
    record = {
        "commit": measured,
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),  # newest first in bench/docs.py
        "command": " ".join(["python", "bench/manifest_bench.py", *sys.argv[1:]]),
        "results": results,
    }
    out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"raw results: {out.relative_to(REPO) if out.is_relative_to(REPO) else out}")


if __name__ == "__main__":
    main()
