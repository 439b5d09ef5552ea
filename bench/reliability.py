"""Check batchgen's promises against the simulator and record the figures.

    python bench/reliability.py [--kills 20] [--jobs 200] [--seed 1] [--json PATH]

Every row is either a *check* (a figure with the value the promise requires; the script
exits 1 if one fails) or *information* (a figure with no verdict). Sections:

1. SIGKILL at random moments after the run's first request, then resume: jobs lost, files
   not what the server sent, runs the ledger never recorded beyond its 'unknown' count.
   Kills are counted as processes that ended by SIGKILL, not as signals sent.
2. SIGINT / SIGTERM mid-batch: exit 130 (or 0 when the batch had already finished).
3. A batch with every retryable server fault on (simulator FAULTS).
4. Off the happy path (simulator OFF_PATH_FAULTS): hostile output bodies and URLs, odd
   run ids, polls answering 404 just after the create, a key echoed in error bodies.
5. A ledger deleted, emptied, or its -wal deleted after a kill: runs paid again.
6. Two ledgers on one output folder.
7. Every bad manifest in tests/bad_manifests: exit 2, no request of any kind.
8. The API key searched for in everything written (one root folder holds every output
   folder, ledger and the reuse index) and printed.

With --json the rows go to a results file (bench/results_file.py) that bench/docs.py
turns into bench/RELIABILITY.md.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import results_file  # noqa: E402
from reliability_kit import (  # noqa: E402
    KEY,
    Report,
    check_folder,
    check_folder_quiet,
    cli,
    cli_done,
    files_holding_key,
    in_process,
    ledger_rows,
    requests_seen,
    run_args,
    write_manifest,
)

from batchgen import ExitCode  # noqa: E402
from batchgen.simulator import FAULTS, OFF_PATH_FAULTS, SimConfig, Simulator, SimulatorServer  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SOAK_FAULTS = {name: 0.01 if name == "slow" else 0.03 for name in FAULTS}
BODY_FAULTS = [f for f in OFF_PATH_FAULTS if f.startswith("body_")]
URL_FAULTS = ["output_data_url", "output_file_url", "no_output_urls"]


# -- 1. SIGKILL ----------------------------------------------------------------------------------


def kill_chaos(report: Report, kills_wanted: int, rng: random.Random) -> None:
    report.section = "SIGKILL at random moments, then resume"
    sent = exits_by_kill = rounds = 0
    while exits_by_kill < kills_wanted and rounds < kills_wanted:
        rounds += 1
        folder = report.folder(f"kill-{rounds}")
        jobs, out = 60, folder / "out"
        manifest = write_manifest(folder, jobs)
        sim = Simulator(SimConfig(latency=0.3, latency_sigma=0.5, seed=rng.randrange(1000)))
        with SimulatorServer(sim) as server:
            for _ in range(kills_wanted + 10):
                before = requests_seen(sim)
                process = cli(report, server.base_url, *run_args(manifest, out, "--concurrency", "6"))
                if exits_by_kill < kills_wanted:
                    deadline = time.monotonic() + 60  # the kill moment is drawn after the first request
                    while requests_seen(sim) == before and process.poll() is None and time.monotonic() < deadline:
                        time.sleep(0.005)
                    time.sleep(rng.uniform(0.0, 1.2))
                    if process.poll() is None:
                        process.send_signal(signal.SIGKILL)
                        sent += 1
                stdout, stderr = process.communicate(timeout=300)
                report.texts += [stdout, stderr]
                exits_by_kill += process.returncode == -signal.SIGKILL
                if process.returncode == 0:
                    break
            finished = process.returncode == 0
            report.check(f"round {rounds}: resumed to the end (exit 0)", "yes" if finished else "no", finished)
            check_folder(report, f"round {rounds}", out, sim, jobs)
    report.info("SIGKILLs sent", sent)
    report.check("runs ended by SIGKILL (exit status -9), then resumed", exits_by_kill, exits_by_kill >= kills_wanted)


# -- 2. SIGINT / SIGTERM ------------------------------------------------------------------------------


def signal_stops(report: Report, rng: random.Random) -> None:
    report.section = "SIGINT and SIGTERM"
    folder = report.folder("signals")
    jobs, out = 30, folder / "out"
    manifest = write_manifest(folder, jobs)
    sim = Simulator(SimConfig(latency=0.5, latency_sigma=0.3, seed=rng.randrange(1000)))
    codes: Counter[int] = Counter()
    slowest = 0.0
    with SimulatorServer(sim) as server:
        for signum in (signal.SIGINT, signal.SIGTERM) * 3:
            before = requests_seen(sim)
            process = cli(report, server.base_url, *run_args(manifest, out, "--concurrency", "4"))
            while requests_seen(sim) == before and process.poll() is None:
                time.sleep(0.005)
            time.sleep(rng.uniform(0.0, 0.7))
            signalled = time.monotonic()
            process.send_signal(signum)
            stdout, stderr = process.communicate(timeout=60)
            report.texts += [stdout, stderr]
            slowest = max(slowest, time.monotonic() - signalled)
            codes[process.returncode] += 1
        finished = cli_done(report, server.base_url, *run_args(manifest, out, "--concurrency", "4"))
    stopped, done = codes[ExitCode.INTERRUPTED], codes[ExitCode.OK]
    report.check(
        "signals answered by exit 130 (or 0: the batch had already finished)",
        f"{stopped} + {done} of 6",
        stopped + done == 6,
    )
    report.info("slowest exit after a signal (s)", f"{slowest:.2f}")
    report.check("the run after the signals exits 0", finished.returncode, finished.returncode == 0)
    check_folder(report, "after signals", out, sim, jobs)


# -- 3. retryable faults ----------------------------------------------------------------------------


def fault_soak(report: Report, jobs: int, seed: int) -> None:
    report.section = "Every retryable server fault"
    config = SimConfig(
        latency=0.05,
        latency_sigma=0.5,
        failure_rate=0.03,
        stuck_rate=0.02,
        faults=SOAK_FAULTS,
        seed=seed,
        slow_seconds=3.0,
    )
    sim = Simulator(config)
    result, out = in_process(report, "faults", sim, jobs, concurrency=16, timeout=1.0, run_timeout=3.0)
    injected = sim.stats(logs=False)["faults"]
    report.info("faults injected, by kind", ", ".join(f"{k} {v}" for k, v in sorted(injected.items())))
    report.check(
        "exit code (0; 1 when runs kept failing; 6 when paid runs were kept for the next run)",
        result.exit_code,
        result.exit_code in (ExitCode.OK, ExitCode.JOBS_FAILED, ExitCode.UNAVAILABLE),
    )
    report.info(
        "retries / failed runs / URL refreshes in the summary",
        f"{result.stats.retries} / {result.stats.failed_runs} / {result.stats.url_refreshes}",
    )
    kept = dict(ledger_rows(out, "SELECT job_id, run_id FROM attempts WHERE status = 'running'"))
    report.info("paid runs kept for the next run (their polls or downloads kept failing)", len(kept))
    if kept:  # the promise for them: the next run collects each without buying another
        sim.update_config({"faults": {}})
        in_process(report, "faults", sim, jobs, again=True, concurrency=16, timeout=1.0, run_timeout=3.0)
        collected = dict(
            ledger_rows(out, "SELECT job_id, run_id FROM attempts WHERE status = 'succeeded' AND run_id IS NOT NULL")
        )
        # A kept run the server finished must be the one the job's image came from; one it never
        # finishes (stuck) or failed is given up on by the next run like any other, and bought again.
        finished = {run["id"] for run in sim.stats(logs=False)["runs"] if run["status"] == "succeeded"}
        missed = sum(1 for job_id, run_id in kept.items() if run_id in finished and collected.get(job_id) != run_id)
        report.check("runs kept and finished: not collected by the next run from the same run", missed, missed == 0)
    check_folder(report, "faulty batch", out, sim, jobs)


# -- 4. off the happy path --------------------------------------------------------------------------


def hostile_outputs(report: Report) -> None:
    report.section = "Hostile output bodies and URLs"
    jobs = 3
    for fault in [*BODY_FAULTS, *URL_FAULTS, "png_octet_stream"]:
        sim = Simulator(SimConfig(latency=0.02, faults={fault: 1.0}, huge_body_bytes=4 << 20, seed=3))
        result, out = in_process(report, f"hostile-{fault}", sim, jobs, max_download_bytes=2 << 20, reuse=False)
        stats = sim.stats(logs=False)
        figures = check_folder_quiet(out, stats)
        if fault == "png_octet_stream":  # a real PNG under the wrong label: it is the image
            ok = figures["bad_files"] == 0 and figures["succeeded"] == jobs and stats["creates"] == jobs
            report.check(
                f"{fault}: jobs saved with the real image / runs paid",
                f"{figures['succeeded']} of {jobs} / {stats['creates']}",
                ok,
            )
            continue
        kept = figures["bad_files"] + figures["stray_files"]
        report.check(f"{fault}: files kept that are not the image", kept, kept == 0)
        reasons = figures["failed_with_reason"]
        ok = reasons == jobs and stats["creates"] == jobs
        report.check(
            f"{fault}: jobs failed with the reason / runs paid (one per job)",
            f"{reasons} of {jobs} / {stats['creates']}",
            ok,
        )


def odd_ids_and_404s(report: Report) -> None:
    report.section = "Odd run ids and 404s just after the create"
    jobs = 12
    sim = Simulator(SimConfig(latency=0.05, faults={"odd_run_id": 1.0}, seed=5))
    result, out = in_process(report, "odd-ids", sim, jobs, reuse=False)
    stats = sim.stats(logs=False)
    figures = check_folder_quiet(out, stats)
    report.check(
        "odd run ids (., .., a/b, ?x, %2e...): jobs succeeded with their image / runs paid",
        f"{figures['succeeded']} of {jobs} / {stats['creates']}",
        figures["succeeded"] == jobs and figures["bad_files"] == 0 and stats["creates"] == jobs,
    )
    sim = Simulator(SimConfig(latency=0.05, faults={"not_found_after_create": 1.0}, not_found_seconds=1.5, seed=6))
    result, out = in_process(report, "not-found", sim, jobs, reuse=False)
    stats = sim.stats(logs=False)
    figures = check_folder_quiet(out, stats)
    report.info("404 answers to polls of just-created runs", stats["faults"].get("not_found_after_create", 0))
    report.check(
        "transient 404s survived: jobs succeeded / runs paid (one per job)",
        f"{figures['succeeded']} of {jobs} / {stats['creates']}",
        figures["succeeded"] == jobs and figures["bad_files"] == 0 and stats["creates"] == jobs,
    )


def echoed_key(report: Report) -> None:
    report.section = "The key echoed back by the server"
    folder = report.folder("echo")
    out = folder / "out"
    items = [{"id": f"echo-{i}", "prompt": f"photo {i}" + (" FORBIDDEN" if i % 3 == 0 else "")} for i in range(9)]
    manifest = folder / "m.yaml"
    manifest.write_text(yaml.safe_dump({"jobs": items}), encoding="utf-8")
    config = SimConfig(
        latency=0.05,
        failure_rate=0.3,
        faults={"echo_headers": 1.0, "control_chars": 0.5, "http_500": 0.2},
        refuse_prompts_containing="FORBIDDEN",
        seed=8,
    )
    sim = Simulator(config)
    texts_before = len(report.texts)
    with SimulatorServer(sim) as server:
        done = cli_done(report, server.base_url, *run_args(manifest, out, "--max-attempts", "2"))
        for args in (["status"], ["status", "--json"], ["export"], ["export", "--format", "csv"]):
            cli_done(report, server.base_url, *args, "--output", str(out))
        wrong = SimConfig(latency=0.05, api_key="another-key", faults={"echo_headers": 1.0})
        with SimulatorServer(Simulator(wrong)) as refusing:
            cli_done(report, refusing.base_url, *run_args(manifest, folder / "refused"))
    echoed = sim.stats(logs=False)["faults"].get("echo_headers", 0)
    report.info("error answers that echoed the request's headers (key included)", echoed)
    report.info("exit code of the batch", done.returncode)
    texts = report.texts[texts_before:]
    leaks = sum(KEY in text for text in texts) + files_holding_key(folder)
    report.check("leaks of the key (stderr, status, status --json, export, ledger, files)", leaks, leaks == 0)
    escapes = sum("\x1b" in text for text in texts)
    report.check("terminal escape codes from the server printed", escapes, escapes == 0)


# -- 5. the ledger lost ---------------------------------------------------------------------------


def ledger_lost(report: Report) -> None:
    report.section = "A ledger lost, emptied or rolled back"
    jobs = 20
    for how in ("deleted", "emptied"):
        sim = Simulator(SimConfig(latency=0.2, latency_sigma=0.3, seed=9))
        folder = report.folder(f"ledger-{how}")
        manifest, out = write_manifest(folder, jobs, prefix=how), folder / "out"
        with SimulatorServer(sim) as server:
            first = cli_done(report, server.base_url, *run_args(manifest, out))
            ledger = out / "batchgen.sqlite"
            creates = sim.stats(logs=False)["creates"]
            for side in (Path(f"{ledger}-wal"), Path(f"{ledger}-shm")):
                side.unlink(missing_ok=True)
            if how == "deleted":
                ledger.unlink()
            else:
                ledger.write_bytes(b"")
            again = cli_done(report, server.base_url, *run_args(manifest, out))
        paid = sim.stats(logs=False)["creates"] - creates
        ok = first.returncode == 0 and again.returncode == 0 and paid == 0
        codes = f"exit codes {first.returncode}, {again.returncode}"
        report.check(f"ledger {how} after a finished batch: runs paid again ({codes})", paid, ok)
        check_folder(report, f"ledger {how}", out, sim, jobs)

    jobs = 60
    sim = Simulator(SimConfig(latency=0.2, latency_sigma=0.3, seed=11))
    folder = report.folder("ledger-wal")
    manifest, out = write_manifest(folder, jobs, prefix="wal"), folder / "out"
    with SimulatorServer(sim) as server:
        process = cli(report, server.base_url, *run_args(manifest, out, "--concurrency", "8"))
        while sim.stats(logs=False)["creates"] < jobs // 3 and process.poll() is None:
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
        report.texts += list(process.communicate(timeout=60))
        killed = process.returncode == -signal.SIGKILL
        for side in ("-wal", "-shm"):
            Path(f"{out / 'batchgen.sqlite'}{side}").unlink(missing_ok=True)
        again = cli_done(report, server.base_url, *run_args(manifest, out, "--concurrency", "8"))
    report.check("-wal deleted after a SIGKILL: killed, then the resume exits 0", again.returncode,
                 killed and again.returncode == 0)  # fmt: skip
    figures = check_folder(report, "-wal deleted", out, sim, jobs)
    paid_again = max(0, figures["runs"] - jobs - figures["unknown"])
    report.check("-wal deleted: runs paid again beyond the creates counted 'unknown'", paid_again, paid_again == 0)


# -- 6. two ledgers, one folder --------------------------------------------------------------------------


def two_ledgers(report: Report) -> None:
    report.section = "Two ledgers on one output folder"
    folder = report.folder("two-ledgers")
    jobs, out = 6, folder / "out"
    manifest = write_manifest(folder, jobs, prefix="shared")
    sim = Simulator(SimConfig(latency=2.0, seed=10))
    with SimulatorServer(sim) as server:
        first = cli(report, server.base_url, *run_args(manifest, out))
        while sim.stats(logs=False)["creates"] == 0 and first.poll() is None:
            time.sleep(0.01)
        second = cli_done(report, server.base_url, *run_args(manifest, out, "--ledger", str(folder / "other.sqlite")))
        running = first.poll() is None
        report.texts += list(first.communicate(timeout=120))
    report.check(
        "the second run (another --ledger) exits 5 while the first works",
        second.returncode,
        second.returncode == ExitCode.LOCAL and running,
    )
    creates = sim.stats(logs=False)["creates"]
    ok = first.returncode == 0 and creates == jobs
    report.check("the first run finishes (exit 0), runs paid once each", f"exit {first.returncode}, {creates} runs", ok)
    check_folder(report, "two ledgers", out, sim, jobs)


# -- 7. bad manifests ---------------------------------------------------------------------------------


def bad_inputs(report: Report) -> None:
    report.section = "Bad manifests"
    corpus = sorted(p for p in (REPO / "tests" / "bad_manifests").iterdir() if p.suffix != ".md")
    sim = Simulator(SimConfig())
    failures, folders_made = [], 0
    with SimulatorServer(sim) as server:
        for path in corpus:
            out = report.root / "bad" / path.name
            done = cli_done(report, server.base_url, *run_args(path, out))
            if done.returncode != 2 or "Traceback" in done.stdout + done.stderr or path.name not in done.stderr:
                failures.append(path.name)
            folders_made += out.exists()
        requests = requests_seen(sim)
    report.check(
        "bad manifests refused (exit 2, the file named, no traceback)",
        f"{len(corpus) - len(failures)} of {len(corpus)}",
        not failures,
    )
    report.check("requests of any kind sent for bad manifests (creates, polls, downloads)", requests, requests == 0)
    report.check("output folders created for bad manifests", folders_made, folders_made == 0)


# -- 8. secrets ------------------------------------------------------------------------------------


def secrets(report: Report) -> None:
    report.section = "The key, everywhere"
    files = sum(1 for p in report.root.rglob("*") if p.is_file())
    report.info("files searched (every output folder, ledger, journal and the reuse index)", files)
    report.info("messages searched (stdout and stderr of every command, every result)", len(report.texts))
    leaks = sum(KEY in text for text in report.texts) + files_holding_key(report.root)
    report.check("secrets leaked (messages, files, ledgers)", leaks, leaks == 0)


SECTIONS = ("kills", "signals", "faults", "hostile", "odd", "echo", "ledger", "two", "bad")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--only", help=f"comma-separated sections to run: {','.join(SECTIONS)}")
    parser.add_argument("--json", type=Path, help="write the results file here")
    parser.add_argument("--save", action="store_true", help="write it to bench/results/reliability_<commit>.json")
    args = parser.parse_args()
    chosen = set(args.only.split(",")) if args.only else set(SECTIONS)
    rng = random.Random(args.seed)
    load_before = os.getloadavg()
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="batchgen-reliability-"))
    report = Report(root)
    try:
        steps = [
            ("kills", lambda: kill_chaos(report, args.kills, rng)),
            ("signals", lambda: signal_stops(report, rng)),
            ("faults", lambda: fault_soak(report, args.jobs, args.seed)),
            ("hostile", lambda: hostile_outputs(report)),
            ("odd", lambda: odd_ids_and_404s(report)),
            ("echo", lambda: echoed_key(report)),
            ("ledger", lambda: ledger_lost(report)),
            ("two", lambda: two_ledgers(report)),
            ("bad", lambda: bad_inputs(report)),
        ]
        for name, step in steps:
            if name in chosen:
                print(f"{name}...", file=sys.stderr, flush=True)
                step()
        secrets(report)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    checks = [row for row in report.rows if row["check"]]
    broken = [row for row in checks if not row["ok"]]
    seconds = round(time.monotonic() - started)
    print("\n| section | what | figure | verdict |\n|---|---|---|---|")
    for row in report.rows:
        verdict = "" if not row["check"] else ("held" if row["ok"] else "**BROKEN**")
        print(f"| {row['section']} | {row['what']} | {row['figure']} | {verdict} |")
    print(
        f"\n{len(checks) - len(broken)} of {len(checks)} checks held ({len(report.rows) - len(checks)} rows "
        f"of information) in {seconds} s"
    )
    if args.json or args.save:
        summary = {
            "checks": len(checks),
            "held": len(checks) - len(broken),
            "seconds": seconds,
            "kills": args.kills,
            "jobs": args.jobs,
            "seed": args.seed,
        }
        result = results_file.envelope("reliability", report.rows, load_before, summary=summary)
        print(f"written: {results_file.write(result, args.json)}", file=sys.stderr)
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
