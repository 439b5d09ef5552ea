# ruff: noqa: E501  (report-building f-strings read better unbroken)
"""bench/run.py's tables: scenarios 1-5 as printed and as Markdown, the targets and whether
each was met, and the Markdown report of a whole run (--markdown)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from run import Row, Scenario


def figure(value: Any, fmt: str = ".2f") -> str:
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
            str(r.scenario), r.client, str(r.n), figure(r.rate, "g"), r.latency, str(r.concurrency),
            figure(r.t, ".1f"), figure(r.t_star, ".1f"), figure(r.ratio, ".3f"), str(int(r.creates)),
            f"{int(r.rate_limited_creates)} ({r.share_429:.1%})" + (f" +{int(r.rate_limited_gets)} on GET" if r.rate_limited_gets else ""),
            figure(r.polls_per_run), share, figure(r.cpu_ms_per_job, ".2f"), figure(r.peak_rss_mb, ".0f"),
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
            f"Medians of {runs} runs per row." if runs > 1 else "One run per row.",
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
                f"| {r['stop_after']:,} | {r['finished_total']:,} | {r['returncode']} | {figure(r['first_finished_at_s'], '.1f')} s "
                f"| {figure(r['jobs_per_s_after_first'], '.0f')} | {r['wall_s']:.1f} s | {r['cpu_s']:.1f} "
                f"| {figure(r['rss_at_first_finished_mb'], '.0f')} MB | {figure(r['rss_at_signal_mb'], '.0f')} MB | {r['peak_rss_mb']:.0f} MB |"
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
