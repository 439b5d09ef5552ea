# ruff: noqa: E501  (report-building f-strings read better unbroken)
"""How close does batchgen get to the best any client could do?

For N jobs, an account rate limit R (creates/s), generation time L and C runs in
flight, no client can beat about

    T* = max(N / R, N * L / C) + L

This script starts the Runbase simulator in its own process over loopback
(``python -m batchgen simulate --port 0``), runs the real ``batchgen run`` CLI
(and the hand-written baseline in ``bench/baseline.py``) against it as a
subprocess, and reports wall time T, T/T*, creates, 429s, polls per run, the
latency added by polling, CPU per job and peak RSS, one row per scenario.

    python bench/run.py                      # every scenario, once
    python bench/run.py --repeat 3           # medians of 3
    python bench/run.py --scenarios 1,2,5    # a subset
    python bench/run.py --quick              # tiny sizes: the CI smoke version
    python bench/run.py --profile            # also cProfile batchgen on scenario 5

Scenarios 6 (a 1,000,000-row manifest: validate, then run interrupted after
10,000 and after 100,000 finished jobs) and 7 (resume of a finished 100,000-job
ledger) are reported in their own tables. See bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import math
import os
import platform
import pstats
import random
import re
import select
import shlex
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PY = sys.executable
API_KEY = "sk-bench-0123456789"
CLK_TCK = os.sysconf("SC_CLK_TCK")
# Where the measured batchgen is imported from (a snapshot, see take_snapshot) and where
# subprocesses run, so that the repository's own batchgen/ (edited meanwhile) is not on sys.path.
SOURCE: dict[str, Path | None] = {"src": None, "cwd": None}
PAGE = os.sysconf("SC_PAGE_SIZE")


# --------------------------------------------------------------------------- scenarios


@dataclass
class Scenario:
    number: int
    name: str
    n: int
    latency: float  # median generation time (s)
    concurrency: int
    rate: float | None = None  # the account's create limit (None: unlimited)
    give_rate: bool = False  # pass --rate to the client (the limit is known)
    retry_after: bool = True
    sigma: float = 0.0  # lognormal spread
    note: str = ""

    @property
    def mean_latency(self) -> float:
        return self.latency * math.exp(self.sigma**2 / 2)

    def t_star(self) -> float:
        """max(N/R, N·L/C) + L, with L the mean generation time."""
        create_bound = self.n / self.rate if self.rate else 0.0
        return max(create_bound, self.n * self.mean_latency / self.concurrency) + self.mean_latency

    def sim_args(self) -> list[str]:
        args = ["--latency", repr(self.latency), "--latency-sigma", repr(self.sigma)]
        if self.rate:
            args += ["--create-rate", repr(self.rate)]
        if not self.retry_after:
            args.append("--no-retry-after")
        return args


def throughput_scenarios(quick: bool, time_scale: float) -> dict[int, Scenario]:
    if quick:  # sizes for the smoke test: every code path, a second or so per run
        return {
            1: Scenario(1, "known limit", 20, 0.2, 8, rate=40, give_rate=True),
            2: Scenario(2, "discovered, Retry-After", 20, 0.2, 8, rate=40),
            3: Scenario(3, "discovered, no Retry-After", 20, 0.2, 8, rate=40, retry_after=False),
            4: Scenario(4, "slow lognormal", 16, 0.2, 8, sigma=0.5),
            5: Scenario(5, "raw overhead", 40, 0.0, 16),
        }
    slow = 20.0 * time_scale
    return {
        1: Scenario(1, "known limit", 1000, 1.0, 64, rate=50, give_rate=True),
        2: Scenario(2, "discovered, Retry-After", 1000, 1.0, 64, rate=50),
        3: Scenario(3, "discovered, no Retry-After", 1000, 1.0, 64, rate=50, retry_after=False),
        4: Scenario(
            4,
            "slow lognormal",
            300,
            slow,
            128,
            sigma=0.5,
            note=f"median {slow:g} s (20 s scaled by {time_scale:g})" if time_scale != 1 else "",
        ),  # fmt: skip
        5: Scenario(5, "raw overhead", 5000, 0.0, 128),
    }


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


# --------------------------------------------------------------------------- manifests

_SUBJECTS = ("ceramic lamp", "linen shirt", "oak chair", "glass vase", "wool throw", "steel kettle",
             "leather bag", "cotton towel", "brass clock", "walnut desk", "silk scarf", "clay mug")  # fmt: skip
_SETTINGS = ("on a light oak surface", "in soft morning light", "against a sand backdrop",
             "in a sunlit studio", "on white marble", "beside a window")  # fmt: skip


def write_manifest(path: Path, n: int, *, metadata: bool = False) -> Path:
    """A CSV of ``n`` jobs with explicit ids (the kind a catalogue export gives)."""
    if path.exists():
        return path
    rng = random.Random(n)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["id", "prompt", "aspect_ratio", "quality"] + (["sku", "category"] if metadata else []))
        for i in range(n):
            subject, setting = rng.choice(_SUBJECTS), rng.choice(_SETTINGS)
            row = [
                f"job-{i:07d}",
                f"A product photo of a {subject} {setting}, catalogue item {i}",
                ("1:1", "3:2", "2:3")[i % 3],
                ("medium", "high")[i % 2],
            ]
            if metadata:
                row += [f"SKU-{i:07d}", subject.split()[-1]]
            writer.writerow(row)
    tmp.rename(path)
    return path


# --------------------------------------------------------------------------- processes


def proc_cpu(pid: int) -> float:
    """user+sys CPU seconds of a live process (all its threads), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


class Simulator:
    """``python -m batchgen simulate --port 0 ...`` in its own process."""

    def __init__(self, args: list[str], log: Path):
        cmd = [PY, "-m", "batchgen", "simulate", "--port", "0", *args]
        self.log = open(log, "w")
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            cwd=run_cwd(),
            env=base_env(),
            start_new_session=True,
        )
        self.base_url = self._read_url()
        self.origin = self.base_url.removesuffix("/api/v1")

    def _read_url(self) -> str:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 20.0)
        line = self.proc.stdout.readline() if ready else ""
        match = re.search(r"(http://\S+/api/v1)", line)
        if not match:
            self.stop()
            raise RuntimeError(f"the simulator did not print its URL (got {line!r}); see {self.log.name}")
        return match[1]

    def stats(self, timeout: float = 120.0) -> dict[str, Any]:
        with urllib.request.urlopen(self.origin + "/_sim/stats", timeout=timeout) as response:
            return json.loads(response.read())

    def cpu(self) -> float:
        return proc_cpu(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()
        self.log.close()

    def __enter__(self) -> Simulator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class Finished:
    returncode: int
    wall: float
    cpu: float  # user + sys seconds
    maxrss_mb: float
    stderr_tail: str


def wait_rusage(proc: subprocess.Popen, started: float) -> tuple[int, float, float, float]:
    """Reap ``proc`` with os.wait4: (returncode, wall, cpu seconds, peak RSS MB)."""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def run_measured(cmd: list[str], env: dict[str, str], log: Path, cwd: Path | None = None) -> Finished:
    cwd = cwd or run_cwd()
    with open(log, "w") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=err, stderr=subprocess.STDOUT, env=env, cwd=cwd)
        code, wall, cpu, rss = wait_rusage(proc, started)
    return Finished(code, wall, cpu, rss, _tail(log))


def _tail(path: Path, lines: int = 6) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def base_env() -> dict[str, str]:
    env = dict(os.environ)
    if SOURCE["src"] is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SOURCE["src"]), env.get("PYTHONPATH")]))
    return env


def run_cwd() -> Path:
    return SOURCE["cwd"] or REPO


def client_env(base_url: str) -> dict[str, str]:
    env = base_env()
    env.update(RUNBASE_BASE_URL=base_url, RUNBASE_API_KEY=API_KEY, PYTHONUNBUFFERED="1")
    return env


def batchgen_prefix(client: str = "batchgen") -> list[str]:
    """``batchgen``, or ``batchgen[p1,p2]``: the CLI with bench/patched.py's experimental patches."""
    match = re.fullmatch(r"batchgen(?:\[([\w,]*)\])?", client)
    if not match:
        raise ValueError(f"unknown client {client!r}")
    if match[1]:
        return [PY, str(HERE / "patched.py"), match[1]]
    return [PY, "-m", "batchgen"]


def batchgen_cmd(
    manifest: Path, output: Path, concurrency: int, rate: float | None = None, client: str = "batchgen"
) -> list[str]:
    cmd = [*batchgen_prefix(client), "run", str(manifest), "--output", str(output), "--no-progress",
           "--concurrency", str(concurrency)]  # fmt: skip
    if rate:
        cmd += ["--rate", repr(rate)]
    return cmd


def baseline_cmd(
    manifest: Path, output: Path, concurrency: int, rate: float | None = None, poll_interval: float = 1.0
) -> list[str]:
    cmd = [PY, str(HERE / "baseline.py"), str(manifest), "--output", str(output),
           "--concurrency", str(concurrency), "--poll-interval", repr(poll_interval)]  # fmt: skip
    if rate:
        cmd += ["--rate", repr(rate)]
    return cmd


# --------------------------------------------------------------------------- scenarios 1-5


@dataclass
class Row:
    scenario: int
    client: str
    n: int
    rate: float | None
    latency: str
    concurrency: int
    t: float
    t_star: float
    ratio: float | None
    t_replay: float | None  # the best FIFO schedule of the run durations actually drawn
    creates: int
    create_requests: int
    rate_limited_creates: int
    rate_limited_gets: int
    gets: int
    polls_per_run: float
    added_latency_s: float
    added_latency_share: float | None  # of the mean generation time
    cpu_ms_per_job: float
    peak_rss_mb: float
    sim_cpu_s: float
    succeeded_files: int
    returncode: int
    runs: int = 1
    samples: dict[str, list[float]] = field(default_factory=dict)

    @property
    def share_429(self) -> float:
        return self.rate_limited_creates / self.create_requests if self.create_requests else 0.0


def replay_bound(durations: list[float], concurrency: int, rate: float | None) -> float:
    """List scheduling in manifest order: C slots, creates no faster than R, the real durations."""
    import heapq

    slots = [0.0] * concurrency
    end = 0.0
    for i, duration in enumerate(durations):
        free = heapq.heappop(slots)
        start = max(free, i / rate if rate else 0.0)
        heapq.heappush(slots, start + duration)
        end = max(end, start + duration)
    return end


def run_throughput(sc: Scenario, client: str, work: Path, seq: int, baseline_poll: float = 1.0) -> Row:
    manifest = write_manifest(work / f"jobs-{sc.n}.csv", sc.n)
    tag = re.sub(r"\W+", "_", client)
    out = work / f"s{sc.number}-{tag}-{seq}"
    rate = sc.rate if sc.give_rate else None
    with Simulator(sc.sim_args(), work / f"{out.name}.sim.log") as sim:
        if client.startswith("batchgen"):
            cmd = batchgen_cmd(manifest, out, sc.concurrency, rate, client)
        else:
            cmd = baseline_cmd(manifest, out, sc.concurrency, rate, baseline_poll)
        cpu_before = sim.cpu()
        done = run_measured(cmd, client_env(sim.base_url), work / f"{out.name}.log")
        sim_cpu = sim.cpu() - cpu_before
        stats = sim.stats()
    if done.returncode != 0:
        raise RuntimeError(f"{client} failed in scenario {sc.number} (exit {done.returncode}):\n{done.stderr_tail}")
    runs = stats["runs"]
    terminal = [r for r in runs if r["first_terminal_get_at"] is not None and r["ready_at"] is not None]
    added = statistics.fmean(r["first_terminal_get_at"] - r["ready_at"] for r in terminal) if terminal else 0.0
    durations = [r["ready_at"] - r["created_at"] for r in runs if r["ready_at"] is not None]
    mean_l = statistics.fmean(durations) if durations else sc.mean_latency
    t_star = sc.t_star()
    files = sum(1 for p in out.iterdir() if p.suffix == ".png") if out.exists() else 0
    return Row(
        scenario=sc.number,
        client=client,
        n=sc.n,
        rate=sc.rate,
        latency=f"{sc.latency:g}" + (f" ln σ{sc.sigma:g}" if sc.sigma else ""),
        concurrency=sc.concurrency,
        t=done.wall,
        t_star=t_star,
        ratio=done.wall / t_star if t_star > 0 else None,
        t_replay=replay_bound(sorted_by_manifest(runs), sc.concurrency, sc.rate) if sc.sigma else None,
        creates=stats["creates"],
        create_requests=stats["create_requests"],
        rate_limited_creates=stats["rate_limited_creates"],
        rate_limited_gets=stats["rate_limited_gets"],
        gets=stats["gets"],
        polls_per_run=statistics.fmean(r["polls"] for r in runs) if runs else 0.0,
        added_latency_s=added,
        added_latency_share=added / mean_l if mean_l > 0 else None,
        cpu_ms_per_job=1000 * done.cpu / sc.n,
        peak_rss_mb=done.maxrss_mb,
        sim_cpu_s=sim_cpu,
        succeeded_files=files,
        returncode=done.returncode,
    )


def sorted_by_manifest(runs: list[dict[str, Any]]) -> list[float]:
    """Run durations in manifest order (the prompt carries the job number)."""

    def key(run: dict[str, Any]) -> int:
        match = re.search(r"item (\d+)$", run.get("prompt") or "")
        return int(match[1]) if match else 0

    return [r["ready_at"] - r["created_at"] for r in sorted(runs, key=key) if r["ready_at"] is not None]


_MEDIAN_FIELDS = ("t", "ratio", "t_replay", "creates", "create_requests", "rate_limited_creates",
                  "rate_limited_gets", "gets", "polls_per_run", "added_latency_s", "added_latency_share",
                  "cpu_ms_per_job", "peak_rss_mb", "sim_cpu_s")  # fmt: skip


def median_row(rows: list[Row]) -> Row:
    first = rows[0]
    merged = Row(**{**asdict(first), "samples": {}})
    for name in _MEDIAN_FIELDS:
        values = [getattr(r, name) for r in rows]
        if any(v is None for v in values):
            continue
        setattr(merged, name, statistics.median(values))
        merged.samples[name] = values
    merged.runs = len(rows)
    return merged


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
        "log_tail": _tail(work / f"{tag}.log", 3),
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


# --------------------------------------------------------------------------- profile


def profile_scenario_5(sc: Scenario, work: Path, top: int = 25) -> dict[str, Any]:
    manifest = write_manifest(work / f"jobs-{sc.n}.csv", sc.n)
    out = work / "s5-profile"
    prof = work / "s5-batchgen.prof"
    with Simulator(sc.sim_args(), work / "s5-profile.sim.log") as sim:
        cmd = [PY, "-m", "cProfile", "-o", str(prof), "-m", "batchgen", "run", str(manifest), "--output", str(out),
               "--no-progress", "--concurrency", str(sc.concurrency)]  # fmt: skip
        done = run_measured(cmd, client_env(sim.base_url), work / "s5-profile.log")
        counts = sim.stats()
    stats = pstats.Stats(str(prof))
    entries = []
    for (filename, line, func), (_cc, nc, tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        entries.append({"function": f"{_short(filename)}:{line}({func})", "ncalls": nc, "tottime": tt, "cumtime": ct,
                        "group": _group(filename, func)})  # fmt: skip
    by_cum = sorted(entries, key=lambda e: e["cumtime"], reverse=True)[:top]
    by_tot = sorted(entries, key=lambda e: e["tottime"], reverse=True)[:top]
    requests = counts["create_requests"] + counts["gets"] + counts["downloads"]
    return {"wall_s": done.wall, "cpu_s": done.cpu, "n": sc.n, "by_cumtime": by_cum, "by_tottime": by_tot,
            "requests": requests, "summary": profile_summary(entries, sc.n, requests),
            "prof_file": str(prof)}  # fmt: skip


# Where the profiled time goes, by who spends it (own time, so nothing is counted twice).
_HTTP_LIBRARIES = ("httpx", "httpcore", "h11", "aiohttp", "httpx_aiohttp", "yarl", "multidict", "aiohappyeyeballs",
                   "propcache", "frozenlist", "aiosignal", "idna", "certifi")  # fmt: skip
_KINDS = {
    "HTTP libraries": lambda g: g.split("/")[0] in _HTTP_LIBRARIES or g in ("builtin:send", "builtin:recv"),
    "batchgen (its own Python)": lambda g: g.startswith("batchgen/") and not g.startswith("batchgen/pacing"),
    "batchgen/pacing (the create-rate fit)": lambda g: g.startswith("batchgen/pacing"),  # a module, then a package
    "sqlite (ledger statements)": lambda g: g.startswith("builtin:") and ("execute" in g or "commit" in g),
    "event loop and anyio": lambda g: g.split("/")[0] in ("anyio", "sniffio") or g.startswith("stdlib/asyncio"),
}


def _group(filename: str, func: str) -> str:
    """``batchgen/<module>``, a third-party package's name, ``stdlib/<package or module>``, or ``builtin:<name>``."""
    if "site-packages/" in filename:
        return filename.split("site-packages/", 1)[1].split("/")[0].removesuffix(".py")
    if "/batchgen/" in filename:
        return "batchgen/" + filename.rsplit("/batchgen/", 1)[1]
    if filename.startswith(("~", "<")):
        match = re.search(r"method '(\w+)'|built-in method ([\w.]+)", func)
        return "builtin:" + (next(g for g in match.groups() if g) if match else func)
    parts = Path(filename).parts
    package = parts[-2] if len(parts) > 1 and parts[-2] not in ("lib", "python3.11", "python3.12") else ""
    return "stdlib/" + (package or Path(filename).stem)


def profile_summary(entries: list[dict[str, Any]], jobs: int, requests: int) -> dict[str, Any]:
    """Own time by group and by kind (HTTP libraries, batchgen, pacing, sqlite, event loop, the rest),
    with each kind's share of the profile and its milliseconds per job and per request under the profiler."""
    total = sum(e["tottime"] for e in entries) or 1.0
    groups: dict[str, float] = {}
    for e in entries:
        groups[e["group"]] = groups.get(e["group"], 0.0) + e["tottime"]
    kinds: dict[str, float] = {name: 0.0 for name in [*_KINDS, "other (stdlib, builtins)"]}
    for group, seconds in groups.items():
        kind = next((name for name, match in _KINDS.items() if match(group)), "other (stdlib, builtins)")
        kinds[kind] += seconds

    def row(name: str, seconds: float) -> dict[str, Any]:
        return {"name": name, "seconds": seconds, "share": seconds / total, "ms_per_job": 1000 * seconds / jobs,
                "ms_per_request": 1000 * seconds / requests if requests else None}  # fmt: skip

    return {
        "profiled_s": total,
        "jobs": jobs,
        "requests": requests,
        "requests_per_job": requests / jobs,
        "by_kind": [row(name, seconds) for name, seconds in kinds.items()],
        "by_group": [row(g, t) for g, t in sorted(groups.items(), key=lambda item: -item[1])[:30]],
    }


def _short(filename: str) -> str:
    if "site-packages/" in filename:
        return filename.split("site-packages/", 1)[1]
    if "/batchgen/" in filename:
        return "batchgen/" + filename.rsplit("/batchgen/", 1)[1]
    if filename.startswith(("~", "<")):
        return filename
    return "stdlib/" + os.path.basename(filename)


# --------------------------------------------------------------------------- source snapshot


def take_snapshot(source: str, work: Path) -> dict[str, str]:
    """Copy the batchgen package to measure into ``work/src`` and run everything from there.

    Other people edit batchgen/ while a long benchmark runs; without a snapshot, each
    subprocess would import whatever the files hold at that moment. ``worktree``
    copies the files as they are now; anything else is a git revision (``git archive``,
    which changes nothing in the repository).
    """
    import hashlib
    import shutil

    src = work / "src"
    if src.exists():
        shutil.rmtree(src)
    src.mkdir(parents=True)
    if source == "worktree":
        shutil.copytree(REPO / "batchgen", src / "batchgen", ignore=shutil.ignore_patterns("__pycache__"))
    else:
        archive = subprocess.run(["git", "archive", source, "batchgen"], cwd=REPO, capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(src)], input=archive.stdout, check=True)
    digest = hashlib.sha256()
    for path in sorted((src / "batchgen").rglob("*.py")):
        digest.update(path.relative_to(src).as_posix().encode() + b"\0" + path.read_bytes())
    cwd = work / "cwd"
    cwd.mkdir(exist_ok=True)
    SOURCE["src"], SOURCE["cwd"] = src, cwd
    check = subprocess.run([PY, "-c", "import batchgen; print(batchgen.__file__)"], env=base_env(), cwd=cwd,
                           capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    if not check.startswith(str(src)):
        raise RuntimeError(f"the snapshot is not what gets imported ({check})")
    return {"source": source, "snapshot_sha256": digest.hexdigest()[:12]}


# --------------------------------------------------------------------------- report


def machine() -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {
        "cores": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(shlex.quote(a) for a in ["python", "bench/run.py", *sys.argv[1:]]),
        "git_head": git("rev-parse", "--short", "HEAD"),
        "git_dirty": git("status", "--short", "--", "batchgen"),
    }


def _f(value: Any, fmt: str = ".2f") -> str:
    if value is None:
        return "—"
    if isinstance(value, float) and math.isnan(value):
        return "—"
    return format(value, fmt)


HEADER = ["#", "client", "N", "R/s", "L s", "C", "T s", "T* s", "T/T*", "creates", "429s (share)",
          "polls/run", "added lat (share of L)", "CPU ms/job", "peak RSS MB"]  # fmt: skip


def table_rows(rows: list[Row]) -> list[list[str]]:
    lines = []
    for r in rows:
        share = (
            f"{r.added_latency_share:.1%}"
            if r.added_latency_share is not None
            else f"{1000 * r.added_latency_s:.0f} ms"
        )
        lines.append([
            str(r.scenario), r.client, str(r.n), _f(r.rate, "g"), r.latency, str(r.concurrency),
            _f(r.t, ".1f"), _f(r.t_star, ".1f"), _f(r.ratio, ".3f"), str(int(r.creates)),
            f"{int(r.rate_limited_creates)} ({r.share_429:.1%})" + (f" +{int(r.rate_limited_gets)} on GET" if r.rate_limited_gets else ""),
            _f(r.polls_per_run), share, _f(r.cpu_ms_per_job, ".2f"), _f(r.peak_rss_mb, ".0f"),
        ])  # fmt: skip
    return lines


def print_table(rows: list[Row]) -> None:
    lines = [HEADER, *table_rows(rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(HEADER))]
    for k, line in enumerate(lines):
        print("  ".join(cell.rjust(widths[i]) for i, cell in enumerate(line)))
        if k == 0:
            print("  ".join("-" * w for w in widths))


def markdown_table(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(line) + " |" for line in table_rows(rows)]
    return "\n".join(lines)


@dataclass
class Target:
    what: str
    value: str
    met: bool | None


def evaluate(rows: dict[tuple[int, str], Row], s6: dict | None, s7: dict | None) -> list[Target]:
    targets: list[Target] = []

    def row(n: int) -> Row | None:
        return rows.get((n, "batchgen"))

    if (r := row(1)) and r.ratio is not None:
        targets.append(Target("S1 T/T* ≤ 1.05 (limit given)", f"{r.ratio:.3f}", r.ratio <= 1.05))
    for n in (2, 3):
        if (r := row(n)) and r.ratio is not None:
            targets.append(Target(f"S{n} T/T* ≤ 1.15 (discovered)", f"{r.ratio:.3f}", r.ratio <= 1.15))
            targets.append(Target(f"S{n} < 5% of creates answered 429", f"{r.share_429:.1%}", r.share_429 < 0.05))
    for n in (1, 2, 3, 5):
        if r := row(n):
            targets.append(
                Target(f"S{n} polls/run ≤ 1.5 (fixed latency)", f"{r.polls_per_run:.2f}", r.polls_per_run <= 1.5)
            )
    if r := row(4):
        targets.append(Target("S4 polls/run ≤ 3 (lognormal)", f"{r.polls_per_run:.2f}", r.polls_per_run <= 3))
    for n in (1, 2, 3, 4):
        if (r := row(n)) and r.added_latency_share is not None:
            targets.append(
                Target(
                    f"S{n} mean added latency < 10% of L", f"{r.added_latency_share:.1%}", r.added_latency_share < 0.10
                )
            )
    if r := row(5):
        targets.append(Target("S5 CPU ≤ 1 ms/job", f"{r.cpu_ms_per_job:.2f} ms", r.cpu_ms_per_job <= 1.0))
    if s6:
        v = s6["validate"]
        targets.append(Target(f"S6 validate {s6['rows']:,} rows < 10 s", f"{v['wall_s']:.1f} s", v["wall_s"] < 10))
        targets.append(
            Target(f"S6 validate {s6['rows']:,} rows < 300 MB", f"{v['peak_rss_mb']:.0f} MB", v["peak_rss_mb"] < 300)
        )
        small, big = s6["runs"]
        growth = s6["rss_growth"]
        targets.append(Target(
            f"S6 run peak RSS at {big['stop_after']:,} within 10% of at {small['stop_after']:,}",
            f"{small['peak_rss_mb']:.0f} → {big['peak_rss_mb']:.0f} MB ({growth:+.1%})", abs(growth) <= 0.10,
        ))  # fmt: skip
        targets.append(Target("S6 run peak RSS < 300 MB", f"{big['peak_rss_mb']:.0f} MB", big["peak_rss_mb"] < 300))
    if s7:
        targets.append(Target(f"S7 resume of a finished {s7['jobs']:,}-job ledger < 2 s",
                              f"{s7['resume_wall_s']:.2f} s", s7["resume_wall_s"] < 2))  # fmt: skip
    return targets


def print_targets(targets: list[Target]) -> None:
    for t in targets:
        mark = "MET" if t.met else ("n/a" if t.met is None else "MISSED")
        print(f"  [{mark:6}] {t.what}: {t.value}")


def markdown_report(info: dict, rows: list[Row], s6: dict | None, s7: dict | None, targets: list[Target],
                    scenarios: dict[int, Scenario], profile: dict | None) -> str:  # fmt: skip
    out = [
        "## Machine and command",
        "",
        f"- cores: {info['cores']}; CPU: {info['cpu_model']}; Python {info['python']} ({info['platform']})",
        f"- date: {info['date']}; batchgen at {info['git_head']}"
        + (" with uncommitted changes in " + ", ".join(line.split()[-1] for line in info["git_dirty"].splitlines())
           if info["git_dirty"] and info.get("source") == "worktree" else ""),
        f"- measured: batchgen from {info['source']!r} (snapshot sha256 {info['snapshot_sha256']}, git HEAD {info['git_head']})",
        f"- command: `{info['command']}`",
        "",
    ]  # fmt: skip
    if rows:
        out += ["## Scenarios 1–5", ""]
        for sc in scenarios.values():
            if any(r.scenario == sc.number for r in rows):
                limit = (
                    f"R={sc.rate:g}/s" + (" given with --rate" if sc.give_rate else " discovered")
                    if sc.rate
                    else "no limit"
                )
                extra = "" if sc.retry_after else ", 429 without Retry-After"
                out.append(f"- S{sc.number} {sc.name}: N={sc.n}, {limit}{extra}, L={sc.latency:g} s"
                           + (f" lognormal σ={sc.sigma:g} (mean {sc.mean_latency:.2f} s)" if sc.sigma else "")
                           + f", C={sc.concurrency}" + (f"; {sc.note}" if sc.note else ""))  # fmt: skip
        runs = max(r.runs for r in rows)
        out += [
            "",
            f"Medians of {runs} run(s) per row." if runs > 1 else "One run per row.",
            "",
            markdown_table(rows),
            "",
        ]
        out += ["T* uses the mean generation time as L. Added latency = first GET that saw the run finished − "
                "the moment it finished (simulator clock), mean over runs.", ""]  # fmt: skip
        replay = [r for r in rows if r.t_replay]
        for r in replay:
            out.append(f"- S{r.scenario} {r.client}: best FIFO schedule of the durations actually drawn "
                       f"(C slots, creates ≤ R) = {r.t_replay:.1f} s → T/T_replay = {r.t / r.t_replay:.3f}")  # fmt: skip
        sim = [f"S{r.scenario} {r.client} {r.sim_cpu_s:.1f} s" for r in rows]
        out += ["", "Simulator CPU during each run (one process, pure Python): " + "; ".join(sim), ""]
    if s6:
        v = s6["validate"]
        out += ["## Scenario 6: a 1,000,000-row manifest" if s6["rows"] == 1_000_000 else f"## Scenario 6: a {s6['rows']:,}-row manifest", "",
                f"CSV of {s6['rows']:,} rows ({s6['manifest_mb']:.0f} MB). `batchgen validate`: {v['wall_s']:.1f} s wall, "
                f"{v['cpu_s']:.1f} s CPU, peak RSS {v['peak_rss_mb']:.0f} MB.", "",
                f"`batchgen run` (C={s6['concurrency']}) against an instant simulator, SIGINT after the given number of "
                "finished jobs, fresh output folder each:", "",
                "| stop after | finished | exit | first job done at | jobs/s after | wall | CPU s | RSS at first done | RSS at signal | peak RSS |",
                "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in s6["runs"]:
            out.append(
                f"| {r['stop_after']:,} | {r['finished_total']:,} | {r['returncode']} | {_f(r['first_finished_at_s'], '.1f')} s "
                f"| {_f(r['jobs_per_s_after_first'], '.0f')} | {r['wall_s']:.1f} s | {r['cpu_s']:.1f} "
                f"| {_f(r['rss_at_first_finished_mb'], '.0f')} MB | {_f(r['rss_at_signal_mb'], '.0f')} MB | {r['peak_rss_mb']:.0f} MB |"
            )  # fmt: skip
        out += ["", f"Peak RSS growth from the first to the second: {s6['rss_growth']:+.1%}.", ""]
    if s7:
        out += [f"## Scenario 7: resume of a finished {s7['jobs']:,}-job ledger", "",
                f"Filling the ledger (a full run, C={s7['concurrency']}): {s7['fill']['wall_s']:.0f} s, "
                f"{s7['fill']['cpu_ms_per_job']:.2f} ms CPU/job, peak RSS {s7['fill']['peak_rss_mb']:.0f} MB.", "",
                f"`batchgen run` again: {s7['resume_wall_s']:.2f} s wall (median of {len(s7['resume_samples_s'])}: "
                + ", ".join(f"{x:.2f}" for x in s7["resume_samples_s"]) + f"), {s7['resume_cpu_s']:.2f} s CPU, "
                f"peak RSS {s7['resume_peak_rss_mb']:.0f} MB; of which Python start-up and imports "
                f"(`batchgen --version`) {s7['python_startup_s']:.2f} s. Said 'nothing to do': {s7['said_nothing_to_do']}"
                + (f"; creates sent: {s7['creates_during_resume']}" if s7["creates_during_resume"] is not None else "") + ".", ""]  # fmt: skip
    if targets:
        out += ["## Targets", "", "| target | measured | met? |", "|---|---|---|"]
        out += [f"| {t.what} | {t.value} | {'yes' if t.met else 'no'} |" for t in targets]
        out.append("")
    if profile:
        out += [f"## cProfile of batchgen, scenario 5 (N={profile['n']}; {profile['wall_s']:.1f} s wall, "
                f"{profile['cpu_s']:.1f} s CPU under the profiler)", "", "Top by cumulative time:", "",
                "| function | ncalls | tottime s | cumtime s |", "|---|---|---|---|"]  # fmt: skip
        out += [
            f"| `{e['function']}` | {e['ncalls']} | {e['tottime']:.2f} | {e['cumtime']:.2f} |"
            for e in profile["by_cumtime"]
        ]
        out += ["", "Top by own time:", "", "| function | ncalls | tottime s | cumtime s |", "|---|---|---|---|"]
        out += [
            f"| `{e['function']}` | {e['ncalls']} | {e['tottime']:.2f} | {e['cumtime']:.2f} |"
            for e in profile["by_tottime"]
        ]
        if "summary" in profile:
            summary = profile["summary"]
            out += ["", f"Own time by kind ({summary['requests_per_job']:.2f} requests per job; under the profiler, "
                        "so the milliseconds are inflated alike; the shares are what to read):", "",
                    "| kind | s | share | ms per job | ms per request |", "|---|---|---|---|---|"]  # fmt: skip
            out += [
                f"| {k['name']} | {k['seconds']:.2f} | {k['share']:.1%} | {k['ms_per_job']:.2f} | "
                f"{k['ms_per_request']:.3f} |"
                for k in summary["by_kind"]
            ]
        out.append("")
    return "\n".join(out)


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="batchgen against the best possible: T/T* per scenario")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, a few seconds per scenario (CI smoke)")
    parser.add_argument("--scenarios", default="1,2,3,4,5,6,7", help="comma-separated, e.g. 1,2,5")
    parser.add_argument("--repeat", type=int, default=1, help="runs per scenario and client; medians are shown")
    parser.add_argument(
        "--clients",
        default="batchgen,baseline",
        help="batchgen,baseline (scenarios 1-5); batchgen[patch,...] runs bench/patched.py",
    )
    parser.add_argument("--time-scale", type=float, default=0.2,
                        help="scale of scenario 4's 20 s median generation time (default 0.2: 4 s)")  # fmt: skip
    parser.add_argument(
        "--source",
        default="worktree",
        help="the batchgen to measure: 'worktree' (a copy of batchgen/ as it is now) or a git revision",
    )
    parser.add_argument("--profile", action="store_true", help="also run scenario 5 under cProfile")
    parser.add_argument("--workdir", type=Path, help="where manifests and outputs go (default: a temp dir, removed)")
    parser.add_argument("--json", type=Path, help="write every measurement here")
    parser.add_argument("--markdown", type=Path, help="write the tables as Markdown here")
    parser.add_argument(
        "--grid", action="store_true", help="run issue 9's grid of limit shapes instead (bench/grid.py)"
    )
    parser.add_argument("--points", default="", help="with --grid: only the points whose name contains this")
    parser.add_argument("--figures", type=Path, help="with --grid: where the PNG pictures go (default: the work dir)")
    args = parser.parse_args(argv)
    if args.grid:
        return run_grid(args)

    wanted = sorted({int(s) for s in args.scenarios.split(",") if s.strip()})
    clients = re.findall(r"\w+(?:\[[\w,]*\])?", args.clients)  # commas inside [] belong to the client
    scenarios = throughput_scenarios(args.quick, args.time_scale)
    sizes = scale_sizes(args.quick)
    info = machine()
    tmp = None
    if args.workdir:
        work = args.workdir.resolve()
        work.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="batchgen-bench-")
        work = Path(tmp.name)
    info.update(take_snapshot(args.source, work))
    print(f"batchgen bench — {info['cores']} cores, {info['cpu_model']}, Python {info['python']}; work dir {work}",
          flush=True)  # fmt: skip

    results: dict[tuple[int, str], Row] = {}
    all_samples: list[Row] = []
    s6 = s7 = profile = None
    try:
        for number in wanted:
            if number in scenarios:
                sc = scenarios[number]
                for client in clients:
                    samples = []
                    for k in range(args.repeat):
                        row = run_throughput(sc, client, work, k, 0.1 if args.quick else 1.0)
                        samples.append(row)
                        all_samples.append(row)
                        print(f"  S{number} {client} #{k + 1}: T={row.t:.2f} s T/T*={_f(row.ratio, '.3f')} "
                              f"creates={row.creates} 429={row.rate_limited_creates} polls/run={row.polls_per_run:.2f} "
                              f"CPU={row.cpu_ms_per_job:.2f} ms/job RSS={row.peak_rss_mb:.0f} MB", flush=True)  # fmt: skip
                    results[(number, client)] = median_row(samples)
            elif number == 6:
                s6 = scenario_6(sizes, work)
                print(f"  S6: validate {s6['validate']['wall_s']:.1f} s / {s6['validate']['peak_rss_mb']:.0f} MB; "
                      + "; ".join(f"stop@{r['stop_after']}: peak {r['peak_rss_mb']:.0f} MB, exit {r['returncode']}"
                                  for r in s6["runs"]), flush=True)  # fmt: skip
            elif number == 7:
                s7 = scenario_7(sizes, work, 1 if args.quick else max(3, args.repeat))
                print(f"  S7: resume {s7['resume_wall_s']:.2f} s (fill {s7['fill']['wall_s']:.0f} s)", flush=True)
            else:
                print(f"unknown scenario {number}", file=sys.stderr)
                return 2
        if args.profile and 5 in scenarios:
            profile = profile_scenario_5(scenarios[5], work)
    finally:
        if tmp is not None:
            tmp.cleanup()

    rows = [results[k] for k in sorted(results)]
    print()
    if rows:
        print_table(rows)
        print()
    targets = evaluate(results, s6, s7)
    if targets:
        print("targets (batchgen, medians):")
        print_targets(targets)
    if profile:
        print("\ncProfile, scenario 5, top 15 by cumulative time:")
        for e in profile["by_cumtime"][:15]:
            print(f"  {e['cumtime']:7.2f} s cum {e['tottime']:7.2f} s own {e['ncalls']:>8}  {e['function']}")
        summary = profile["summary"]
        print(f"\nown time under the profiler by kind ({summary['requests_per_job']:.2f} requests per job):")
        for k in summary["by_kind"] + [{"name": "—", "seconds": 0}] + summary["by_group"][:20]:
            if k["name"] == "—":
                print("  by group:")
                continue
            print(f"  {k['seconds']:7.2f} s {100 * k['share']:5.1f} %  {k['ms_per_job']:6.2f} ms/job "
                  f"{k['ms_per_request']:6.3f} ms/request  {k['name']}")  # fmt: skip
    if args.json:
        payload = {
            "machine": info,
            "quick": args.quick,
            "scenarios": {n: asdict(sc) | {"t_star": sc.t_star()} for n, sc in scenarios.items()},
            "rows": [asdict(r) for r in rows],
            "samples": [asdict(r) for r in all_samples],
            "scenario_6": s6,
            "scenario_7": s7,
            "targets": [asdict(t) for t in targets],
            "profile": profile,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2, default=str))
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(markdown_report(info, rows, s6, s7, targets, scenarios, profile))
    return 0


def run_grid(args: argparse.Namespace) -> int:
    """``--grid``: bench/grid.py's points, with this script's simulator, CLI runner and snapshot."""
    sys.path.insert(0, str(HERE))
    import grid

    info = machine()
    with tempfile.TemporaryDirectory(prefix="batchgen-grid-") as tmp:
        work = args.workdir.resolve() if args.workdir else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        info.update(take_snapshot(args.source, work))
        info["commit"] = info.get("git_head") or "worktree"
        print(f"batchgen grid — {info['cores']} cores, {info['cpu_model']}; work dir {work}", flush=True)
        payload = grid.run_grid(args, work, info, sys.modules[__name__])
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2, default=str))
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(payload["markdown"] + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
