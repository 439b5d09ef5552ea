"""Prove batchgen's three promises and print the figures.

    python bench/reliability.py [--kills 20] [--jobs 200] [--seed 1]

1. No work is lost: SIGKILL the real CLI at random moments while it runs against
   the simulator over real sockets, then run it until it finishes; stop it with
   SIGINT and SIGTERM; run a batch with every server fault switched on.
2. Nothing is paid twice: the server's count of runs per job against the
   ledger's attempts. The only extra runs allowed are creates whose answer never
   came (the process was killed, or the connection dropped, in that window).
3. Nobody gets in or out: every bad manifest in tests/bad_manifests exits 2 with
   no traceback and no request; the API key is searched for in every file,
   ledger and message produced.

Exits 1 if any promise is broken.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import yaml

from batchgen import ExitCode, run_batch
from batchgen.simulator import SimConfig, Simulator, SimulatorServer

REPO = Path(__file__).resolve().parent.parent
KEY = "sk-reliability-7f3a9c0e5b1d"
FAULTS = {
    "http_500": 0.03,
    "http_502_html": 0.03,
    "http_503": 0.03,
    "reset": 0.03,
    "reset_after_create": 0.03,
    "slow": 0.01,
    "truncated": 0.03,
    "malformed_json": 0.03,
    "expire_first_fetch": 0.03,
    "redirect": 0.03,
    "redirect_bad_scheme": 0.01,
}


class Report:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, bool]] = []
        self.texts: list[str] = []  # everything batchgen printed, searched for the key
        self.folders: list[Path] = []

    def add(self, what: str, figure: object, ok: bool = True) -> None:
        self.rows.append((what, str(figure), ok))
        print(f"  {what}: {figure}{'' if ok else '  <-- BROKEN'}", file=sys.stderr, flush=True)


def cli(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("RUNBASE_")} | env
    return subprocess.Popen(
        [sys.executable, "-m", "batchgen", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=full,
    )


def write_manifest(folder: Path, jobs: int) -> Path:
    path = folder / "catalogue.yaml"
    items = [{"id": f"item-{i:04d}", "prompt": f"catalogue photo of item {i}"} for i in range(jobs)]
    path.write_text(yaml.safe_dump({"jobs": items}), encoding="utf-8")
    return path


def check_folder(report: Report, label: str, out: Path, sim: Simulator, jobs: int) -> None:
    """Files against the server's records; runs per job against the ledger's attempts."""
    stats = sim.stats()
    served: dict[str, set[str]] = {}
    runs_per_prompt = Counter(run["prompt"] for run in stats["runs"])
    for run in stats["runs"]:
        served.setdefault(run["prompt"], set()).update(f["sha256"] for f in run["files"])
    db = sqlite3.connect(out / "batchgen.sqlite")
    rows = db.execute(
        """SELECT j.job_id, j.state, j.error, json_extract(j.spec_json, '$.input.prompt'),
                  (SELECT count(*) FROM attempts a WHERE a.job_id = j.job_id),
                  (SELECT count(*) FROM attempts a WHERE a.job_id = j.job_id AND a.status = 'unknown')
           FROM jobs j"""
    ).fetchall()
    outputs = db.execute("SELECT o.path, o.sha256, j.spec_json FROM outputs o JOIN jobs j USING (job_id)").fetchall()
    db.close()
    lost = sum(1 for _, state, error, *_ in rows if not (state == "succeeded" or (state == "failed" and error)))
    lost += jobs - len(rows)
    bad_files = 0
    for path, sha, spec_json in outputs:
        data = (out / path).read_bytes()
        prompt = json.loads(spec_json)["input"]["prompt"]
        if hashlib.sha256(data).hexdigest() != sha or sha not in served.get(prompt, set()):
            bad_files += 1
    twice = sum(max(0, runs_per_prompt[prompt] - attempts) for _, _, _, prompt, attempts, _ in rows)
    window = sum(unknown for *_, unknown in rows)
    extra = sum(runs_per_prompt.values()) - sum(1 for r in rows if r[1] == "succeeded")
    leftovers = len(list(out.glob("*.part")))
    report.add(f"{label}: jobs lost", lost, lost == 0)
    report.add(f"{label}: files not matching what the server sent (truncated, wrong)", bad_files, bad_files == 0)
    report.add(f"{label}: runs created twice outside the create window", twice, twice == 0)
    report.add(f"{label}: creates in the create window (recorded as unknown)", window)
    report.add(f"{label}: extra runs paid (failed runs retried + unknown)", extra)
    report.add(f"{label}: temporary files left", leftovers, leftovers == 0)


def kill_chaos(report: Report, kills_wanted: int, rng: random.Random) -> None:
    """Rounds of: SIGKILL the CLI at random moments, then let it finish; check each round."""
    kills = rounds = 0
    while kills < kills_wanted:
        rounds += 1
        folder = Path(tempfile.mkdtemp(prefix="batchgen-chaos-"))
        report.folders.append(folder)
        jobs, out = 60, folder / "out"
        manifest = write_manifest(folder, jobs)
        sim = Simulator(SimConfig(latency=0.3, latency_sigma=0.5, seed=rng.randrange(1000)))
        with SimulatorServer(sim) as server:
            env = {"RUNBASE_BASE_URL": server.base_url, "RUNBASE_API_KEY": KEY}
            for _ in range(kills_wanted + 10):
                process = cli(
                    "run", str(manifest), "--output", str(out), "--concurrency", "6", "--no-progress", env=env
                )
                if kills < kills_wanted:
                    time.sleep(rng.uniform(0.02, 1.0))  # from manifest loading to mid-download
                    if process.poll() is None:
                        process.kill()
                        kills += 1
                stdout, stderr = process.communicate(timeout=120)
                report.texts += [stdout, stderr]
                if process.returncode == 0:
                    break
            finished = process.returncode == 0
            report.add(f"SIGKILL round {rounds}: resumed to the end (exit 0)", "yes" if finished else "no", finished)
            check_folder(report, f"SIGKILL round {rounds}", out, sim, jobs)
    report.add("SIGKILLs survived", kills)


def signal_stops(report: Report, rng: random.Random) -> None:
    folder = Path(tempfile.mkdtemp(prefix="batchgen-signals-"))
    report.folders.append(folder)
    jobs = 30
    manifest = write_manifest(folder, jobs)
    out = folder / "out"
    sim = Simulator(SimConfig(latency=0.5, latency_sigma=0.3, seed=rng.randrange(1000)))
    stops, slowest = 0, 0.0
    with SimulatorServer(sim) as server:
        env = {"RUNBASE_BASE_URL": server.base_url, "RUNBASE_API_KEY": KEY}
        args = ("run", str(manifest), "--output", str(out), "--concurrency", "4", "--no-progress")
        for signum in (signal.SIGINT, signal.SIGTERM) * 3:
            process = cli(*args, env=env)
            time.sleep(rng.uniform(0.3, 1.0))
            sent = time.monotonic()
            process.send_signal(signum)
            stdout, stderr = process.communicate(timeout=30)
            report.texts += [stdout, stderr]
            slowest = max(slowest, time.monotonic() - sent)
            stops += process.returncode in (ExitCode.INTERRUPTED, ExitCode.OK)
        process = cli(*args, env=env)
        stdout, stderr = process.communicate(timeout=120)
        report.texts += [stdout, stderr]
    report.add("SIGINT/SIGTERM stops with exit 130 (or 0 if already done)", f"{stops}/6", stops == 6)
    report.add("slowest exit after a signal (s)", f"{slowest:.2f}", slowest < 5)
    check_folder(report, "after signals", out, sim, jobs)


def fault_soak(report: Report, jobs: int, seed: int) -> None:
    folder = Path(tempfile.mkdtemp(prefix="batchgen-faults-"))
    report.folders.append(folder)
    manifest = write_manifest(folder, jobs)
    out = folder / "out"
    config = SimConfig(latency=0.05, latency_sigma=0.5, failure_rate=0.03, stuck_rate=0.02, faults=FAULTS, seed=seed)
    config.slow_seconds = 3.0
    sim = Simulator(config)
    result = run_batch(
        manifest,
        output_dir=out,
        transport=sim.transport(),
        api_key=KEY,
        base_url="http://api.runbase.test/api/v1",
        progress="none",
        concurrency=16,
        timeout=1.0,
        run_timeout=3.0,
        backoff_base=0.05,
    )
    report.texts.append(result.message)
    injected = sim.stats()["faults"]
    report.add("faults injected, by kind", ", ".join(f"{k} {v}" for k, v in sorted(injected.items())))
    report.add("faulty batch: exit code", result.exit_code, result.exit_code in (0, 1))
    report.add(
        "faulty batch: retries counted in the summary",
        f"{result.stats.retries} retries, {result.stats.failed_runs} failed runs, "
        f"{result.stats.url_refreshes} URL refreshes",
    )
    check_folder(report, "faulty batch", out, sim, jobs)


def bad_inputs(report: Report) -> None:
    corpus = sorted((REPO / "tests" / "bad_manifests").glob("*"))
    corpus = [p for p in corpus if p.name != "README.md"]
    sim = Simulator(SimConfig())
    failures = []
    with SimulatorServer(sim) as server, tempfile.TemporaryDirectory() as folder:
        env = {"RUNBASE_BASE_URL": server.base_url, "RUNBASE_API_KEY": KEY}
        for path in corpus:
            process = cli("run", str(path), "--output", folder, "--no-progress", env=env)
            stdout, stderr = process.communicate(timeout=60)
            report.texts += [stdout, stderr]
            if process.returncode != 2 or "Traceback" in stdout + stderr or path.name not in stderr:
                failures.append(path.name)
        requests = httpx.get(server.base_url.replace("/api/v1", "/_sim/stats")).json()["create_requests"]
    report.add(
        "bad manifests tried (exit 2, names the file, no traceback)",
        f"{len(corpus) - len(failures)}/{len(corpus)}",
        not failures,
    )
    report.add("requests sent for bad manifests", requests, requests == 0)


def secrets(report: Report) -> None:
    leaks = sum(KEY in text for text in report.texts)
    for folder in report.folders:
        for path in folder.rglob("*"):
            if path.is_file() and KEY.encode() in path.read_bytes():
                leaks += 1
    report.add("secrets leaked (messages, files, ledgers)", leaks, leaks == 0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    report = Report()
    started = time.monotonic()
    print("kill -9 chaos...", file=sys.stderr)
    kill_chaos(report, args.kills, rng)
    print("SIGINT / SIGTERM...", file=sys.stderr)
    signal_stops(report, rng)
    print(f"{args.jobs}-job batch with every fault on...", file=sys.stderr)
    fault_soak(report, args.jobs, args.seed)
    print("bad manifests...", file=sys.stderr)
    bad_inputs(report)
    secrets(report)
    broken = [row for row in report.rows if not row[2]]
    print("\n| promise checked | figure |\n|---|---|")
    for what, figure, ok in report.rows:
        print(f"| {what} | {figure}{'' if ok else ' **BROKEN**'} |")
    print(f"\n{len(report.rows) - len(broken)}/{len(report.rows)} checks held in {time.monotonic() - started:.0f} s")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
