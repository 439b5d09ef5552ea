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
import json
import math
import re
import statistics
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# The process and measurement plumbing (bench/harness.py). bench/grid.py reads write_manifest, Simulator,
# batchgen_cmd, run_measured and client_env from this module; bench/http_floor.py imports API_KEY and
# Simulator from it, bench/manifest_bench.py write_manifest. SOURCE is harness's own dict, not a copy.
from harness import (
    API_KEY as API_KEY,
    HERE,
    SOURCE as SOURCE,
    Simulator,
    baseline_cmd,
    batchgen_cmd,
    client_env,
    machine,
    run_measured,
    take_snapshot,
    write_manifest,
)
from profiles import print_profile, profile_scenario_5
from run_report import evaluate, figure, markdown_report, print_table, print_targets
from run_scale import scale_sizes, scenario_6, scenario_7

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
                        print(f"  S{number} {client} #{k + 1}: T={row.t:.2f} s T/T*={figure(row.ratio, '.3f')} "
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
        print_profile(profile)
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
    """``--grid``: bench/grid.py's points, with the simulator, CLI runner and snapshot of bench/harness.py
    (grid.py reads them from this module, which imports them)."""
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
