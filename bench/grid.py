# ruff: noqa: E501  (report-building f-strings read better unbroken)
"""Issue 9's grid: the real CLI against the simulator's limit shapes, one point at a time.

    python bench/run.py --grid                   # every point once (about 25 minutes)
    python bench/run.py --grid --repeat 3        # medians of 3: the committed figures (quiet machine)
    python bench/run.py --grid --quick           # four short points: the CI smoke version
    python bench/run.py --grid --points cap      # the points whose name contains "cap"
    python bench/grid.py --merge A.json B.json --json OUT.json   # runs at one commit as medians over all

Points: create rate R ∈ {2, 10, 40, 150}/s × bucket ∈ {1, R/4, R} × Retry-After ∈ {precise
(whole seconds, as the header carries them), fixed 1 s, absent}; caps of 4 and 16 runs in
flight with --concurrency 64; polls sharing a 20/s limit; 30/s halved from 10 s to 20 s.
N is chosen so that T* = max(N/R, N·L/C) + L is 30 s (with polls sharing the limit each run
needs a poll too: 2N/R), and C so that the slots never bind unless they are the point.

For each point: T/T*, the share of creates answered 429, the seconds until the pace (creates
accepted per second over 5 s windows, or 20 creates when the rate is lower) stays within 10 %
of the limit, from the start and from each change (only a pace below the band counts: above
the limit is the bucket letting it be), Retry-After violations as the simulator counts them
(requests arriving before a 429 said they may, more than --violation-grace after it), and the
most runs one key had unfinished, and what the controller saw (its pace, the rates its fit
allowed and any cap it found, at each 429, from batchgen's JSON log). Two pictures (matplotlib, a bench-only dependency): creates
per second against the server's limit, for the changing limit and for 10/s with a bucket of 1.
Raw output goes to bench/results/grid_<commit>.json with the commit it measured.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

T_STAR = 30.0
QUICK_T_STAR = 4.0
VIOLATION_GRACE = 0.05  # seconds: a request the client sent before it read the 429 arrives this late at most
PICTURES = ("30/s halved 10-20 s none", "10/s burst 1 precise")
QUICK_PICTURES = ("30/s halved 2-4 s none",)


@dataclass(frozen=True)
class Point:
    name: str
    n: int
    latency: float
    concurrency: int
    rate: str | None = None  # a number or a schedule, as --create-rate takes it
    burst: int | None = None
    retry_after: str = "precise"
    max_running: int | None = None
    polls_count: bool = False
    t_star: float = 0.0

    def sim_args(self) -> list[str]:
        args = ["--latency", repr(self.latency), "--retry-after", self.retry_after,
                "--violation-grace", repr(VIOLATION_GRACE)]  # fmt: skip
        if self.rate is not None:
            args += ["--create-rate", self.rate]
        if self.burst is not None:
            args += ["--create-burst", str(self.burst)]
        if self.max_running is not None:
            args += ["--max-running", str(self.max_running)]
        if self.polls_count:
            args.append("--polls-count")
        return args

    def schedule(self) -> list[tuple[float, float]]:
        """(from, rate) steps of the create limit; empty without one."""
        if self.rate is None:
            return []
        steps = []
        for i, part in enumerate(self.rate.split(",")):
            rate, _, start = part.partition("@")
            steps.append((float(start) if i else 0.0, float(rate)))
        return steps


def points(quick: bool) -> list[Point]:
    t_star = QUICK_T_STAR if quick else T_STAR
    out: list[Point] = []

    def rated(name: str, rate: float, burst: int | None, retry_after: str, latency: float, **kw: Any) -> None:
        concurrency = kw.pop("concurrency", max(16, math.ceil(rate * latency * 1.6)))
        share = 2 if kw.get("polls_count") else 1  # with polls sharing the limit, a run needs a poll too
        n = int(rate / share * (t_star - latency))
        t = n * share / rate + latency
        out.append(Point(name, n, latency, concurrency, repr(rate), burst, retry_after, t_star=t, **kw))

    def capped(name: str, cap: int, retry_after: str, latency: float) -> None:
        n = int(cap * (t_star - latency) / latency)
        out.append(
            Point(name, n, latency, 64, retry_after=retry_after, max_running=cap, t_star=n * latency / cap + latency)
        )

    def changing(name: str, schedule: str, n: int, retry_after: str, latency: float) -> None:
        point = Point(name, n, latency, 64, schedule, None, retry_after)
        out.append(Point(**{**asdict(point), "t_star": earned(point.schedule(), n) + latency}))

    if quick:
        rated("10/s burst 1 precise", 10, 1, "precise", 0.5)
        rated("40/s burst R/4 none", 40, 10, "none", 0.5)
        capped("cap 4 fixed", 4, "fixed:1", 0.5)
        changing("30/s halved 2-4 s none", "30,15@2,30@4", 120, "none", 0.5)
        return out
    for rate in (2, 10, 40, 150):
        latency = 1.0 if rate <= 40 else 0.4
        for label, burst in (("1", 1), ("R/4", max(1, round(rate / 4))), ("R", rate)):
            for label_ra, retry_after in (("precise", "precise"), ("fixed", "fixed:1"), ("none", "none")):
                rated(f"{rate}/s burst {label} {label_ra}", rate, burst, retry_after, latency)
    for cap in (4, 16):
        for label_ra, retry_after in (("precise", "precise"), ("fixed", "fixed:1"), ("none", "none")):
            capped(f"cap {cap} {label_ra}", cap, retry_after, 1.0)
    for label_ra, retry_after in (("precise", "precise"), ("none", "none")):
        rated(f"polls count, 20/s {label_ra}", 20, None, retry_after, 1.0, polls_count=True, concurrency=64)
        # 30/s for 10 s, 15/s for 10 s, then 30/s: 720 creates take 29 s at the limit.
        changing(f"30/s halved 10-20 s {label_ra}", "30,15@10,30@20", 720, retry_after, 1.0)
    return out


def earned(schedule: list[tuple[float, float]], tokens: float) -> float:
    """When a client sending exactly at the limit has made ``tokens`` requests (the burst not counted)."""
    t, left = 0.0, tokens
    for i, (start, rate) in enumerate(schedule):
        stop = schedule[i + 1][0] if i + 1 < len(schedule) else math.inf
        if rate * (stop - start) >= left:
            return start + left / rate
        left -= rate * (stop - start)
        t = stop
    return t


@dataclass
class Measured:
    point: str
    t: float
    t_star: float
    ratio: float
    create_requests: int
    refused_creates: int
    refused_share: float
    refused_by: dict[str, int]
    settle: list[float]  # from the start and from each change; inf: never
    violations: int
    max_unfinished: int
    polls_per_run: float
    returncode: int
    accepted_at: list[float] = field(default_factory=list, repr=False)
    timeline: list[list[Any]] = field(default_factory=list, repr=False)
    # What the controller saw: at each 429, [t, what, pace after it, fitted [lo, hi] or None,
    # running limit or None], t on the simulator's clock (batchgen's JSON log, `throttled` events).
    trace: list[list[Any]] = field(default_factory=list, repr=False)
    violation_log: list[dict[str, Any]] = field(default_factory=list, repr=False)


def settle_times(
    times: list[float], schedule: list[tuple[float, float]], end: float, tolerance: float = 0.1
) -> list[float]:
    """Seconds from the start and from each change until the pace over a window of at least 5 s
    (and 20 creates) stays at or above (1 - tolerance) x the limit, up to the next change or ``end``."""
    ordered = sorted(times)
    result = []
    for i, (start, rate) in enumerate(schedule):
        window = max(5.0, 20.0 / rate)
        stop = min(schedule[i + 1][0] if i + 1 < len(schedule) else math.inf, end)
        settled = None
        t = stop
        while t - window >= start - 1e-9:
            accepted = sum(1 for x in ordered if t - window < x <= t)
            if accepted / window < rate * (1 - tolerance):
                break
            settled = t - window
            t -= 0.1
        result.append(math.inf if settled is None else max(0.0, settled - start))
    return result


class PointFailed(RuntimeError):
    """A grid point's run did not create every job: no figure can come from it."""


def run_point(point: Point, work: Path, seq: int, bench: ModuleType) -> Measured:
    manifest = bench.write_manifest(work / f"grid-{point.n}.csv", point.n)
    tag = "".join(c if c.isalnum() else "_" for c in point.name)
    out = work / f"grid-{tag}-{seq}"
    with bench.Simulator(point.sim_args(), work / f"{out.name}.sim.log") as sim:
        events = work / f"{out.name}.events.jsonl"
        events.unlink(missing_ok=True)
        cmd = [*bench.batchgen_cmd(manifest, out, point.concurrency), "--log-format", "json", "--log-file", str(events)]
        done = bench.run_measured(cmd, bench.client_env(sim.base_url), work / f"{out.name}.log")
        stats = sim.stats()
    accepted = [t for t, status, *_ in stats["create_log"] if status == 201]
    if done.returncode != 0 or len(accepted) < point.n:
        raise PointFailed(
            f"grid point {point.name}: exit {done.returncode}, {len(accepted)} of {point.n} creates accepted:\n"
            f"{done.stderr_tail}"
        )
    settle = (
        settle_times(accepted, point.schedule(), max(accepted))
        if point.rate is not None and not point.polls_count
        else []
    )
    runs = stats["runs"]
    return Measured(
        point=point.name,
        t=done.wall,
        t_star=point.t_star,
        ratio=done.wall / point.t_star,
        create_requests=stats["create_requests"],
        refused_creates=stats["rate_limited_creates"],
        refused_share=stats["rate_limited_creates"] / stats["create_requests"] if stats["create_requests"] else 0.0,
        refused_by=stats["rate_limited_by"],
        settle=settle,
        violations=stats["retry_after_violations"],
        max_unfinished=stats["max_unfinished_runs"],
        polls_per_run=statistics.fmean(r["polls"] for r in runs) if runs else 0.0,
        returncode=done.returncode,
        accepted_at=accepted,
        timeline=stats["limit_timeline"]["create_rate"],
        trace=pacing_trace(events, stats["started_at"]),
        violation_log=stats["retry_after_violation_log"][:50],
    )


def pacing_trace(events: Path, started_at: float) -> list[list[Any]]:
    """The `throttled` events of batchgen's JSON log, on the simulator's clock."""
    from datetime import datetime

    trace = []
    for line in events.read_text(encoding="utf-8").splitlines():
        event = json.loads(line)
        if event.get("event") == "throttled":
            t = datetime.fromisoformat(event["time"]).timestamp() - started_at
            trace.append([round(t, 3), event["what"], event["pace"], event["fitted"], event["running_limit"]])
    return trace


def median(samples: list[Measured]) -> Measured:
    """The sample with the median T/T*, its other figures medians of their own."""
    ordered = sorted(samples, key=lambda m: m.ratio)
    mid = ordered[len(ordered) // 2]
    settle = [statistics.median(s.settle[i] for s in samples) for i in range(len(mid.settle))]
    return Measured(**{**asdict(mid), "settle": settle,
                       "refused_share": statistics.median(s.refused_share for s in samples),
                       "violations": max(s.violations for s in samples)})  # fmt: skip


def meets(m: Measured, capped: bool) -> dict[str, bool]:
    return {
        "T/T* ≤ 1.10": m.ratio <= 1.10,
        "429s ≤ 5 %" if capped else "429s ≤ 3 %": m.refused_share <= (0.05 if capped else 0.03),
        "settled ≤ 5 s": all(s <= 5.0 for s in m.settle),
        "0 violations": m.violations == 0,
    }


def table(results: list[tuple[Point, Measured]]) -> str:
    head = "| point | N | C | T s | T* s | T/T* | 429s (share) | settle s (start, changes) | Retry-After violations | max unfinished | targets missed |"
    lines = [head, "|" + "---|" * 11]
    for point, m in results:
        missed = [name for name, ok in meets(m, point.max_running is not None).items() if not ok]
        settle = ", ".join("never" if math.isinf(s) else f"{s:.1f}" for s in m.settle) or "n/a"
        lines.append(f"| {point.name} | {point.n} | {point.concurrency} | {m.t:.1f} | {m.t_star:.1f} | {m.ratio:.3f} | "
                     f"{m.refused_creates} ({m.refused_share:.1%}) | {settle} | {m.violations} | {m.max_unfinished} | "
                     f"{', '.join(missed) or '—'} |")  # fmt: skip
    return "\n".join(lines)


def picture(point: Point, m: Measured, path: Path) -> None:
    """Creates accepted per second (1 s bins) against the server's create limit."""
    import matplotlib  # a bench-only dependency: pip install 'batchgen[bench]'

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    end = max(m.accepted_at) + 1
    bins = [0] * (int(end) + 1)
    for t in m.accepted_at:
        bins[int(t)] += 1
    fig, ax = plt.subplots(figsize=(8, 3.2), dpi=110)
    ax.step(range(len(bins)), bins, where="post", label="creates accepted per second")
    xs, ys = [], []
    for i, (start, rate, *_) in enumerate(m.timeline):
        stop = m.timeline[i + 1][0] if i + 1 < len(m.timeline) else end
        xs += [start, stop]
        ys += [rate, rate]
    ax.plot(xs, ys, color="black", linestyle="--", label="the server's limit")
    if m.trace:  # batchgen's pace after each 429, held until the next
        ts = [row[0] for row in m.trace]
        ax.step(ts, [row[2] for row in m.trace], where="post", color="tab:orange", alpha=0.8,
                label="batchgen's pace after each 429")  # fmt: skip
    ax.set_xlabel("seconds since the simulator started")
    ax.set_ylabel("creates / s")
    ax.set_title(f"{point.name}: T/T* {m.ratio:.2f}, {m.refused_share:.1%} of creates answered 429")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run_grid(args: Any, work: Path, info: dict[str, Any], bench: ModuleType) -> dict[str, Any]:
    """Run the grid; returns the JSON payload (raw samples included) and prints the table."""
    wanted = [p for p in points(args.quick) if not args.points or args.points in p.name]
    results: list[tuple[Point, Measured]] = []
    raw: dict[str, list[dict[str, Any]]] = {}
    failed: dict[str, list[str]] = {}
    for point in wanted:
        samples = []
        for k in range(args.repeat):
            try:
                m = run_point(point, work, k, bench)
            except PointFailed as exc:  # told and kept; the other points still run
                print(f"  {exc}", flush=True)
                failed.setdefault(point.name, []).append(str(exc)[-2000:])
                continue
            samples.append(m)
            print(f"  {point.name} #{k + 1}: T={m.t:.1f} s T/T*={m.ratio:.3f} 429={m.refused_creates} "
                  f"settle={m.settle} violations={m.violations}", flush=True)  # fmt: skip
        raw[point.name] = [asdict(s) for s in samples]
        if samples:
            results.append((point, median(samples)))
    print()
    print(table(results))
    return payload(info, args.quick, args.repeat, wanted, results, raw, failed, args.figures or work)


def payload(
    info: dict[str, Any],
    quick: bool,
    repeat: int,
    wanted: list[Point],
    results: list[tuple[Point, Measured]],
    raw: dict[str, list[dict[str, Any]]],
    failed: dict[str, list[str]],
    figures_dir: Path,
) -> dict[str, Any]:
    """The JSON payload of a grid (raw samples included), with its pictures drawn into ``figures_dir``."""
    commit = info.get("commit", "worktree")
    pictures = QUICK_PICTURES if quick else PICTURES
    figures = {}
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("no pictures: matplotlib is not installed (pip install 'batchgen[bench]')")
        pictures = ()
    for point, m in results:
        if point.name in pictures and m.accepted_at:
            slug = "".join(c if c.isalnum() else "_" for c in point.name)
            path = figures_dir / f"grid_{slug}_{commit}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            picture(point, m, path)
            figures[point.name] = str(path)
            print(f"picture: {path}")
    return {
        "machine": info,
        "quick": quick,
        "repeat": repeat,
        "violation_grace": VIOLATION_GRACE,
        "points": [asdict(p) for p in wanted],
        "medians": {p.name: asdict(m) | {"meets": meets(m, p.max_running is not None)} for p, m in results},
        "samples": raw,
        "failed": failed,
        "figures": figures,
        "markdown": table(results),
    }


def merge(paths: list[Path], figures_dir: Path, command: str) -> dict[str, Any]:
    """Runs of the grid at one commit (each file from ``bench/run.py --grid --json``) as one: every
    sample kept, the medians taken over all of them, the pictures drawn again for the median runs.
    Files that measured different commits, or a quick grid with a full one, are refused."""
    runs = [json.loads(path.read_text(encoding="utf-8")) for path in paths]
    commits = {run["machine"].get("commit") for run in runs}
    if len(commits) != 1 or None in commits or len({run["quick"] for run in runs}) != 1:
        raise SystemExit(f"grid merge: the files measured different commits or grids: {sorted(map(str, commits))}")
    wanted = [Point(**p) for p in runs[0]["points"]]
    results: list[tuple[Point, Measured]] = []
    raw: dict[str, list[dict[str, Any]]] = {}
    failed: dict[str, list[str]] = {}
    for point in wanted:
        samples = [Measured(**s) for run in runs for s in run["samples"].get(point.name, [])]
        raw[point.name] = [asdict(s) for s in samples]
        for run in runs:
            failed.setdefault(point.name, []).extend(run.get("failed", {}).get(point.name, []))
        if samples:
            results.append((point, median(samples)))
    info = dict(runs[0]["machine"])
    info.update(
        date=max(run["machine"]["date"] for run in runs),
        command=command,
        merged=[{key: run["machine"].get(key) for key in ("command", "date", "snapshot_sha256")} for run in runs],
    )
    failed = {name: texts for name, texts in failed.items() if texts}
    print(table(results))
    return payload(
        info, runs[0]["quick"], sum(run["repeat"] for run in runs), wanted, results, raw, failed, figures_dir
    )


def main(argv: list[str] | None = None) -> int:
    import argparse
    import shlex
    import sys

    parser = argparse.ArgumentParser(description="Merge runs of the grid at one commit into medians over every run.")
    parser.add_argument(
        "--merge", nargs="+", type=Path, required=True, help="grid JSON files (bench/run.py --grid --json)"
    )
    parser.add_argument("--json", type=Path, required=True, help="where the merged grid goes")
    parser.add_argument("--figures", type=Path, default=Path("bench/results"), help="where the pictures go")
    args = parser.parse_args(argv)
    command = "python bench/grid.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    merged = merge(args.merge, args.figures, command)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(merged, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
