"""Scenarios 6 and 7 of bench/run.py: a large manifest validated, then run and interrupted with
SIGINT after a given number of finished jobs (memory as it grows); and the resume of a finished
ledger, which should see at once that there is nothing left to do."""

from __future__ import annotations

import signal
import sqlite3
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import (
    PY,
    Simulator,
    base_env,
    batchgen_cmd,
    client_env,
    proc_rss_mb,
    run_cwd,
    run_measured,
    tail,
    wait_rusage,
    write_manifest,
)


@dataclass
class ScaleSizes:
    rows: int
    stops: tuple[int, int]
    resume_jobs: int
    concurrency: int


def scale_sizes(quick: bool) -> ScaleSizes:
    if quick:
        return ScaleSizes(rows=2_000, stops=(20, 100), resume_jobs=100, concurrency=16)
    return ScaleSizes(rows=1_000_000, stops=(10_000, 100_000), resume_jobs=100_000, concurrency=64)


# --------------------------------------------------------------------------- scenario 6


def ledger_done(ledger: Path) -> int | None:
    """Finished jobs (succeeded or failed) in a ledger another process is writing, or None."""
    if not ledger.exists():
        return None
    try:
        db = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True, timeout=1.0)
        try:
            row = db.execute(
                "SELECT count(*) FROM jobs WHERE generation = "
                "(SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'generation') "
                "AND state IN ('succeeded', 'failed')"
            ).fetchone()
            return int(row[0])
        finally:
            db.close()
    except sqlite3.Error:
        return None


def run_until(manifest: Path, out: Path, concurrency: int, stop_after: int, work: Path, tag: str) -> dict:
    """``batchgen run`` against an instant simulator, SIGINT once ``stop_after`` jobs are finished."""
    ledger = out / "batchgen.sqlite"
    with Simulator(["--latency", "0"], work / f"{tag}.sim.log") as sim:
        with open(work / f"{tag}.log", "w") as err:
            started = time.perf_counter()
            proc = subprocess.Popen(
                batchgen_cmd(manifest, out, concurrency), stdout=err, stderr=subprocess.STDOUT,
                env=client_env(sim.base_url), cwd=run_cwd(),
            )  # fmt: skip
            first_done_at = rss_at_first = None
            rss_samples: list[tuple[float, float]] = []
            done = 0
            interval = 0.05 if stop_after < 5000 else 0.5
            while proc.poll() is None:
                time.sleep(interval)
                now = time.perf_counter() - started
                rss_samples.append((now, proc_rss_mb(proc.pid)))
                count = ledger_done(ledger)
                if count:
                    done = count
                    if first_done_at is None:
                        first_done_at, rss_at_first = now, rss_samples[-1][1]
                    if done >= stop_after:
                        break
            signalled_at = time.perf_counter() - started
            rss_at_stop = proc_rss_mb(proc.pid)
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
            code, wall, cpu, peak = wait_rusage(proc, started)
        sim_cpu = sim.cpu()
    finished = ledger_done(ledger) or 0
    return {
        "stop_after": stop_after,
        "finished_at_signal": done,
        "finished_total": finished,
        "returncode": code,
        "wall_s": wall,
        "signal_at_s": signalled_at,
        "exit_after_signal_s": wall - signalled_at,
        "first_finished_at_s": first_done_at,  # ≈ time to read, validate and record the manifest
        "jobs_per_s_after_first": (done / (signalled_at - first_done_at)) if first_done_at else None,
        "cpu_s": cpu,
        "cpu_ms_per_finished_job_incl_sync": 1000 * cpu / finished if finished else None,
        "peak_rss_mb": peak,
        "rss_at_first_finished_mb": rss_at_first,
        "rss_at_signal_mb": rss_at_stop,
        "rss_max_sampled_after_first_mb": max(
            (r for t, r in rss_samples if first_done_at is not None and t >= first_done_at), default=None
        ),
        "sim_cpu_s": sim_cpu,
        "log_tail": tail(work / f"{tag}.log", 3),
    }


def scenario_6(sizes: ScaleSizes, work: Path) -> dict[str, Any]:
    manifest = write_manifest(work / f"big-{sizes.rows}.csv", sizes.rows, metadata=True)
    size_mb = manifest.stat().st_size / 2**20
    validate = run_measured([PY, "-m", "batchgen", "validate", str(manifest)], base_env(), work / "s6-validate.log")
    if validate.returncode != 0:
        raise RuntimeError(f"validate failed:\n{validate.stderr_tail}")
    results = {
        "rows": sizes.rows,
        "manifest_mb": size_mb,
        "concurrency": sizes.concurrency,
        "validate": {"wall_s": validate.wall, "cpu_s": validate.cpu, "peak_rss_mb": validate.maxrss_mb},
        "runs": [],
    }
    for stop in sizes.stops:
        out = work / f"s6-out-{stop}"
        results["runs"].append(run_until(manifest, out, sizes.concurrency, stop, work, f"s6-run-{stop}"))
    small, big = results["runs"]
    results["rss_growth"] = big["peak_rss_mb"] / small["peak_rss_mb"] - 1
    return results


# --------------------------------------------------------------------------- scenario 7


def scenario_7(sizes: ScaleSizes, work: Path, repeat: int) -> dict[str, Any]:
    """Time for ``batchgen run`` to see that a finished ledger has nothing left to do."""
    manifest = write_manifest(work / f"resume-{sizes.resume_jobs}.csv", sizes.resume_jobs, metadata=True)
    out = work / "s7-out"
    with Simulator(["--latency", "0"], work / "s7-sim.log") as sim:
        env = client_env(sim.base_url)
        fill = run_measured(batchgen_cmd(manifest, out, sizes.concurrency), env, work / "s7-fill.log")
        if fill.returncode != 0:
            raise RuntimeError(f"filling the ledger failed:\n{fill.stderr_tail}")
        creates_before = sim.stats(timeout=600)["creates"] if sizes.resume_jobs <= 20_000 else None
        resumes = [
            run_measured(batchgen_cmd(manifest, out, sizes.concurrency), env, work / f"s7-resume-{i}.log")
            for i in range(max(1, repeat))
        ]
        creates_after = sim.stats(timeout=600)["creates"] if creates_before is not None else None
    startup = [
        run_measured([PY, "-m", "batchgen", "--version"], base_env(), work / f"s7-startup-{i}.log").wall
        for i in range(1 if repeat == 1 else 3)
    ]
    bad = [r for r in resumes if r.returncode != 0 or "nothing to do" not in r.stderr_tail]
    return {
        "jobs": sizes.resume_jobs,
        "concurrency": sizes.concurrency,
        "fill": {
            "wall_s": fill.wall,
            "cpu_s": fill.cpu,
            "peak_rss_mb": fill.maxrss_mb,
            "cpu_ms_per_job": 1000 * fill.cpu / sizes.resume_jobs,
        },  # fmt: skip
        "resume_wall_s": statistics.median(r.wall for r in resumes),
        "resume_samples_s": [r.wall for r in resumes],
        "resume_cpu_s": statistics.median(r.cpu for r in resumes),
        "resume_peak_rss_mb": max(r.maxrss_mb for r in resumes),
        "python_startup_s": statistics.median(startup),
        "said_nothing_to_do": not bad,
        "creates_during_resume": (creates_after - creates_before) if creates_before is not None else None,
        "log_tail": resumes[-1].stderr_tail,
    }
