"""A million jobs on one core: the first create, resume, status and export at catalogue scale.

    python bench/scale.py                       # 1,000,000 rows, medians of 3, results in bench/results/
    python bench/scale.py --rows 5000000 --only start --repeat 1
    python bench/scale.py --quick               # 20,000 rows, once: the CI smoke version (nothing saved)
    python bench/scale.py --rows 200000 --only start --format jsonl --no-save   # a JSONL manifest's start

Each figure is the real CLI in a subprocess, timed from its start, its CPU and peak RSS read
with wait4:

* start: ``batchgen run`` of a fresh N-row CSV against the simulator in its own process
  (``batchgen simulate --latency 0``): seconds until the simulator sees the first create, and
  the run's peak RSS while it reads the whole manifest into its ledger (it is stopped with
  SIGINT once the manifest is read, or after --start-seconds);
* resume: ``batchgen run`` again on a finished N-job ledger (every file in place, each one stat-ed;
  the batch before ended cleanly, so the folder is not searched for partial downloads);
* status, status --json, export (JSONL and CSV, to /dev/null) of that ledger.

The finished ledger is made through batchgen's own Ledger (a million runs against the
simulator would take most of an hour without measuring anything more), with one empty file
per job so that the file check has a million files to check.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import results_file  # noqa: E402

PY = sys.executable


def write_manifest(path: Path, rows: int) -> None:
    """``rows`` jobs with ids, prompts and qualities: a CSV, or the same jobs as JSONL when ``path`` ends .jsonl."""
    jsonl = path.suffix == ".jsonl"
    with open(path, "w", encoding="utf-8") as file:
        if not jsonl:
            file.write("id,prompt,quality\n")
        for i in range(rows):
            job_id, prompt, quality = f"item-{i:07d}", f"studio photo of catalogue item {i} on white", "medium"
            if i % 3:
                quality = "high"
            if jsonl:
                file.write(json.dumps({"id": job_id, "prompt": prompt, "quality": quality}) + "\n")
            else:
                file.write(f"{job_id},{prompt},{quality}\n")


def measure(
    args: list[str],
    env: dict[str, str],
    *,
    stop: Any = None,
    stdout: Any = subprocess.DEVNULL,
    profile_to: Path | None = None,
) -> dict[str, Any]:
    """Run the CLI; wall seconds, CPU seconds and peak RSS (MB) from wait4. ``stop(proc, started)``
    may end it early (it returns the figure it measured, kept under 'figure'). With ``profile_to``
    it runs under cProfile, which writes its statistics there."""
    started = time.monotonic()
    prefix = [PY, "-m", "cProfile", "-o", str(profile_to)] if profile_to else [PY]
    command = [*prefix, "-m", "batchgen", *args]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    figure = stop(proc, started) if stop is not None else None
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - started
    stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    code = os.waitstatus_to_exitcode(status)
    return {
        "wall_s": round(wall, 3),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 3),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "exit": code,
        "figure": figure,
        "stderr_tail": stderr[-400:],
    }


def profile(args: list[str], env: dict[str, str], prof: Path, top: int = 10) -> dict[str, Any]:
    """The CLI once under cProfile: where its own time goes, by module or package and by function."""
    import pstats

    from profiles import group_of, short_name  # the grouping of scenario 5's profile (bench/run.py --profile)

    done = measure(args, env, profile_to=prof)
    assert done["exit"] == 0, done
    stats = pstats.Stats(str(prof))
    groups: dict[str, float] = {}
    functions = []
    for (filename, line, func), (_cc, _nc, tt, _ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        group = group_of(filename, func)
        groups[group] = groups.get(group, 0.0) + tt
        functions.append((tt, f"{short_name(filename)}:{line}({func})"))
    total = sum(groups.values()) or 1.0
    return {
        "command": "batchgen " + " ".join(args[:1]),
        "wall_s": done["wall_s"],
        "profiled_s": round(total, 3),
        "groups": [[g, round(t, 3), round(t / total, 4)] for g, t in sorted(groups.items(), key=lambda x: -x[1])[:top]],
        "functions": [[f, round(t, 3)] for t, f in sorted(functions, reverse=True)[:top]],
    }


def simulator(env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [PY, "-m", "batchgen", "simulate", "--port", "0", "--latency", "0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    base_url = line.split(" at ", 1)[1].split()[0]
    # Keep reading what it prints: a full pipe would stop the simulator in its next write.
    threading.Thread(target=proc.stdout.read, daemon=True).start()
    return proc, base_url


def creates(origin: str) -> int:
    with urllib.request.urlopen(f"{origin}/_sim/stats?logs=0", timeout=10) as answer:
        return int(json.load(answer)["create_requests"])


def start(work: Path, rows: int, env: dict[str, str], limit: float, kind: str = "csv") -> dict[str, Any]:
    """Seconds to the first create of a fresh batch, and its peak RSS while the manifest is read."""
    manifest, out = work / f"start.{kind}", work / "start-out"
    if not manifest.exists():
        write_manifest(manifest, rows)
    shutil.rmtree(out, ignore_errors=True)
    sim, base_url = simulator(env)
    origin = base_url.removesuffix("/api/v1")
    try:

        def until_read(proc: subprocess.Popen[bytes], started: float) -> float | None:
            first = None
            while proc.poll() is None and time.monotonic() - started < limit:
                if first is None and creates(origin) > 0:
                    first = time.monotonic() - started
                if first is not None and _manifest_read(out / "batchgen.sqlite", rows):
                    break
                time.sleep(0.02)
            proc.send_signal(signal.SIGINT)
            return first

        run_env = {**env, "RUNBASE_BASE_URL": base_url, "RUNBASE_API_KEY": "bench"}
        args = ["run", str(manifest), "--output", str(out), "--no-progress", "--concurrency", "64"]
        result = measure(args, run_env, stop=until_read)
    finally:
        sim.send_signal(signal.SIGINT)
        try:
            sim.wait(timeout=30)
        except subprocess.TimeoutExpired:  # its exit is not what is measured
            sim.kill()
            sim.wait()
    result["first_create_s"] = result.pop("figure")
    return result


def _manifest_read(ledger: Path, rows: int) -> bool:
    """Whether the run has read every row into its ledger. The connection is closed each time: connections
    left open kept this script growing to 165 MB at 200,000 rows, and a child's peak RSS starts at its
    parent's (Linux), which made every start after the first look that large."""
    import sqlite3
    from contextlib import closing

    try:
        with closing(sqlite3.connect(f"file:{ledger}?mode=ro", uri=True, timeout=1)) as db:
            generation = db.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
            if generation is None:
                return False
            seen = db.execute("SELECT count(*) FROM jobs WHERE generation = ?", (int(generation[0]),)).fetchone()[0]
            return int(seen) >= rows
    except sqlite3.Error:
        return False


def finished_ledger(work: Path, rows: int, env: dict[str, str], kind: str = "csv") -> tuple[Path, Path]:
    """A ledger of ``rows`` succeeded jobs, one (empty) file each, synced as `run` would sync it.

    Made in a child process: Linux carries a process's peak RSS across exec into the commands
    this script starts, so this one must stay small."""
    manifest, out = work / f"done.{kind}", work / "done-out"
    if not (out / "batchgen.sqlite").exists():
        write_manifest(manifest, rows)
        subprocess.run([PY, __file__, "--make-ledger", str(manifest), str(out)], env=env, check=True)
    # One real run records the manifest's fingerprint, as after any finished batch.
    done = measure(["run", str(manifest), "--output", str(out), "--simulate", "--no-progress"], env)
    assert done["exit"] == 0, done
    return manifest, out


def make_ledger(manifest: Path, out: Path) -> None:
    sys.path.insert(0, str(HERE.parent))
    from batchgen.ledger import Ledger
    from batchgen.manifest import iter_jobs
    from batchgen.models import SavedOutput

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    with Ledger(out / "batchgen.sqlite") as ledger:
        ledger.sync_manifest(str(manifest), iter_jobs(manifest), output_dir=str(out.resolve()))
        for i, job in enumerate(iter_jobs(manifest)):
            attempt = ledger.begin_attempt(job)
            ledger.run_created(attempt, f"run_{i:07d}", job)
            name = f"{job.job_id}.png"
            ledger.job_succeeded(attempt, job.job_id, [SavedOutput(0, name, 0, "e3b0c442", "image/png")])
            (out / name).touch()
            if i % 20_000 == 0:
                ledger.flush()
        ledger.flush()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", choices=("start", "ledger"), help="measure one half only")
    parser.add_argument("--format", choices=("csv", "jsonl"), default="csv", help="the manifests' format")
    parser.add_argument("--start-seconds", type=float, default=120.0, help="stop the start run after this long")
    parser.add_argument("--work", type=Path, help="where the manifests and ledgers are made (default: a temp folder)")
    parser.add_argument("--quick", action="store_true", help="20,000 rows once, nothing saved (CI smoke)")
    parser.add_argument("--no-save", action="store_true")
    parser.add_argument("--profile", action="store_true", help="also profile validate, resume and export once each")
    parser.add_argument("--make-ledger", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.make_ledger:
        make_ledger(*args.make_ledger)
        return 0
    if args.quick:
        args.rows, args.repeat, args.no_save = 20_000, 1, True
    work = args.work or Path(tempfile.mkdtemp(prefix="batchgen-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "BATCHGEN_CACHE_DIR": str(work / "cache")}
    env = {k: v for k, v in env.items() if not k.startswith("RUNBASE_")}
    load = os.getloadavg()
    rows: list[dict[str, Any]] = []
    samples: dict[str, list[dict[str, Any]]] = {}

    def record(what: str, runs: list[dict[str, Any]], **extra: Any) -> None:
        samples[what] = runs
        row = {
            "what": what,
            "jobs": args.rows,
            "wall_s": statistics.median(r["wall_s"] for r in runs),
            "cpu_s": statistics.median(r["cpu_s"] for r in runs),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
            "runs": len(runs),
            **extra,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)

    if args.only in (None, "start"):
        runs = [start(work, args.rows, env, args.start_seconds, args.format) for _ in range(args.repeat)]
        firsts = [r["first_create_s"] for r in runs if r["first_create_s"] is not None]
        record("start: first create", runs, first_create_s=statistics.median(firsts) if firsts else None)
    if args.only in (None, "ledger"):
        manifest, out = finished_ledger(work, args.rows, env, args.format)
        commands = {
            "resume a finished batch": ["run", str(manifest), "--output", str(out), "--simulate", "--no-progress"],
            "status": ["status", "--output", str(out)],
            "status --json": ["status", "--output", str(out), "--json"],
            "export jsonl": ["export", "--output", str(out)],
            "export csv": ["export", "--output", str(out), "--format", "csv"],
        }
        for what, command in commands.items():
            runs = [measure(command, env) for _ in range(args.repeat)]
            assert all(r["exit"] == 0 for r in runs), runs
            record(what, runs)
        if args.profile:
            profiled = {"validate": ["validate", str(manifest)]}
            profiled |= {what: commands[what] for what in ("resume a finished batch", "export jsonl", "export csv")}
            profiles = {what: profile(command, env, work / f"{what.split()[0]}-{what.split()[-1]}.prof")
                        for what, command in profiled.items()}  # fmt: skip
            for what, found in profiles.items():
                print(json.dumps({"profile": what, "profiled_s": found["profiled_s"], "top": found["groups"][:5]}))
    if not args.no_save:
        extra = {"profiles": profiles} if args.profile and args.only != "start" else {}
        name = f"scale-{args.rows}" + ("-jsonl" if args.format == "jsonl" else "")
        result = results_file.envelope(name, rows, load, samples=samples, **extra)
        print(f"saved {results_file.write(result)}")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
