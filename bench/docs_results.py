"""bench/RESULTS.md: one section per series of results files (``SECTIONS``), then "Other results"
for every series without a section of its own (a table of each flat column of its rows)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from docs_common import (
    GENERATED,
    Column,
    Result,
    assemble,
    block,
    col,
    generic_table,
    num,
    pct,
    rows_table,
    series,
    table,
)

from batchgen.words import plural

# -- bench/RESULTS.md ------------------------------------------------------------------------------------


def added_latency(row: dict[str, Any]) -> str:
    if row.get("added_latency_share") is not None:
        return pct(row["added_latency_share"])
    seconds = row.get("added_latency_s")
    return "—" if seconds is None else f"{1000 * seconds:.0f} ms"


def share_429(row: dict[str, Any]) -> str:
    limited, requests = row.get("rate_limited_creates"), row.get("create_requests")
    if limited is None or not requests:
        return "—"
    return f"{num(limited, 0)} ({pct(limited / requests)})"


SCENARIO_COLUMNS = [
    col("#", "scenario"),
    col("client", "client"),
    col("runs", "runs"),
    col("N", "n"),
    Column("R/s", lambda r: num(r.get("rate")) if r.get("rate") else "—"),
    col("L s", "latency"),
    col("C", "concurrency"),
    col("T s", "t", 1),
    col("T* s", "t_star", 1),
    col("T/T*", "ratio", 3),
    col("creates", "creates", 0),
    Column("429s (share)", share_429),
    col("polls/run", "polls_per_run"),
    Column("added latency (of L)", added_latency),
    col("CPU ms/job", "cpu_ms_per_job"),
    col("peak RSS MB", "peak_rss_mb", 0),
]


def scenarios_1_to_5(results: list[Result]) -> str:
    parts = [
        "## Scenarios 1–5: `bench/run.py`",
        "For N jobs with an account rate limit R (creates/s), generation time L and C runs in flight, no "
        "client can do better than about **T\\* = max(N/R, N·L/C) + L**. `bench/run.py` runs the real "
        "`batchgen run` CLI (and a hand-written thread-pool baseline, `bench/baseline.py`) against the "
        "simulator in its own process over loopback, and compares the wall time T with T\\*. Figures "
        "are medians over the runs shown. Newest first.",
        "The account's limit in scenarios 1–3 is the simulator's token bucket at 50/s. Since commit "
        "`7ebf2e5` the bucket holds a tenth of a second of the rate unless told otherwise (5 creates), "
        "as real accounts' small bursts do; the files of `7ab917d` and before ran against a bucket of a "
        "whole second (50 creates), which lets a client that overshoots recover much sooner. Figures "
        "of the two kinds are not comparable.",
    ]
    for result in series(results, "s1-5"):
        parts.append(block(result, rows_table(result, SCENARIO_COLUMNS)))
        if result.raw.get("targets"):
            targets = table(
                ["target (computed by bench/run.py)", "measured", "met?"],
                ([t["what"], t["value"], num(t["met"])] for t in result.raw["targets"]),
            )
            parts.append(f"Targets, from the same file:\n\n{targets}")
    return assemble(parts)


# The tables that compare runs of scenarios 1-5 with a change and without it.
COMPARISON_COLUMNS = [col("#", "scenario"), col("client", "client"), col("runs", "runs"), col("T s", "t", 1),
                      col("T/T*", "ratio", 3), col("polls/run", "polls_per_run"),
                      Column("added latency", added_latency), col("CPU ms/job", "cpu_ms_per_job")]  # fmt: skip


def experiments(results: list[Result]) -> str:
    parts = [
        "## Experiments with proposed changes",
        "`bench/patched.py` applies a proposed change in the measured process only (`batchgen[pool32]`: "
        "both connection pools of 32; `batchgen[limitN]`: pools of N behind a capacity limiter of N; "
        "`batchgen[gapfirstP]`: after a missed poll, wait at least P % of the first-poll delay).",
    ]
    names = sorted({r.name for r in results if r.name.startswith("ab-")})
    for name in names:
        for result in series(results, name):
            parts.append(block(result, rows_table(result, COMPARISON_COLUMNS)))
    return assemble(parts)


def before_fixes(results: list[Result]) -> str:
    parts = [
        "## Before the poll planner and sniffio fixes",
        "The same scenarios before two fixes: `PollPlanner.first_poll_result` multiplied the first-poll "
        "delay for every run not finished at its first poll (64 runs created together pushed it to its "
        "cap), and a missing `sniffio` made httpcore search `sys.path` on every lock.",
    ]
    columns = [c for c in COMPARISON_COLUMNS if c.header != "runs"]
    for result in series(results, "s1-5_before-planner-fix"):
        rows = [r for r in result.rows if r.get("client") == "batchgen"]
        parts.append(block(result, rows_table(result, columns, rows)))
    return assemble(parts)


def scenarios_6_and_7(results: list[Result]) -> str:
    parts = ["## Scenario 6: a 1,000,000-row manifest; scenario 7: resuming a finished batch"]
    for result in series(results, "s6-7"):
        s6, s7 = result.raw.get("scenario_6"), result.raw.get("scenario_7")
        body = []
        if s6:
            v = s6["validate"]
            body.append(table(
                ["rows", "manifest MB", "validate wall s", "validate CPU s", "validate peak RSS MB"],
                [[num(s6["rows"]), num(s6["manifest_mb"], 1), num(v["wall_s"], 1), num(v["cpu_s"], 1),
                  num(v["peak_rss_mb"], 0)]],
            ))  # fmt: skip
            body.append(
                "`batchgen run` against an instant simulator, sent SIGINT once the ledger showed the given "
                "number of finished jobs (a fresh output folder each time):\n\n"
                + table(
                    ["stop after", "finished", "exit", "first job done at s", "jobs/s after", "wall s", "CPU s",
                     "RSS at first done MB", "RSS at signal MB", "peak RSS MB"],
                    ([num(r["stop_after"]), num(r["finished_total"]), num(r["returncode"]),
                      num(r["first_finished_at_s"], 1), num(r["jobs_per_s_after_first"], 0), num(r["wall_s"], 1),
                      num(r["cpu_s"], 1), num(r["rss_at_first_finished_mb"], 0), num(r["rss_at_signal_mb"], 0),
                      num(r["peak_rss_mb"], 0)] for r in s6["runs"]),
                )
                + f"\n\nPeak RSS change from the first to the last stop: {pct(s6['rss_growth'])}."
            )  # fmt: skip
        if s7:
            samples = ", ".join(num(x) for x in s7.get("resume_samples_s", []))
            body.append(table(
                ["jobs", "fill wall s", "fill CPU ms/job", "resume wall s (samples)", "resume peak RSS MB",
                 "Python start-up s", "said 'nothing to do'"],
                [[num(s7["jobs"]), num(s7["fill"]["wall_s"], 0), num(s7["fill"]["cpu_ms_per_job"]),
                  f"{num(s7['resume_wall_s'])} ({samples})", num(s7["resume_peak_rss_mb"], 0),
                  num(s7["python_startup_s"]), num(s7["said_nothing_to_do"])]],
            ))  # fmt: skip
        parts.append(block(result, "\n\n".join(body)))
    return assemble(parts)


def profile(results: list[Result]) -> str:
    parts = [
        "## Where scenario 5's CPU goes",
        "`bench/run.py --profile` runs scenario 5 once more under cProfile. The functions with the most "
        "cumulative time (ncalls counts coroutine resumptions, not requests):",
    ]
    for result in series(results, "s1-5"):
        prof = result.raw.get("profile")
        if not prof:
            continue
        cpu = prof["cpu_s"]
        body = table(
            ["function", "ncalls", "cumulative s", "share of the profiled CPU"],
            ([f"`{f['function']}`", num(f["ncalls"]), num(f["cumtime"], 1), pct(f["cumtime"] / cpu)]
             for f in prof["by_cumtime"][:15]),
        )  # fmt: skip
        summary = prof.get("summary") or {}
        kinds = ""
        if summary.get("by_kind"):
            # Summaries made before bench/run.py knew the pacing package count it in batchgen's own Python.
            old = "batchgen/pacing.py"
            shown = [k for k in summary["by_kind"] if not (k["name"].startswith(old) and not k["seconds"])]
            kinds = table(
                ["own time of", "share", "ms per job", "ms per request"],
                ([k["name"], pct(k["share"]), num(k["ms_per_job"], 2), num(k["ms_per_request"], 3)] for k in shown),
            )  # fmt: skip
            if len(shown) < len(summary["by_kind"]):
                kinds += "\n\n(The create-rate fit, batchgen/pacing/, is counted in batchgen's own Python here.)"
            kinds = (
                f"Own time by kind ({num(summary.get('requests_per_job'), 2)} requests per job; under the profiler "
                f"every figure is inflated alike, so read the shares):\n\n{kinds}"
            )
        text = f"{num(prof['n'])} jobs, {num(cpu, 1)} s of CPU under the profiler.\n\n{body}"
        parts.append(block(result, assemble([text, kinds])))
    return assemble(parts)


def http_floor(results: list[Result]) -> str:
    parts = [
        "## The HTTP stack's own cost: `bench/http_floor.py`",
        "A client that does nothing but GET the simulator: CPU per request and requests per second by "
        "transport (medians of the rounds).",
    ]
    found = series(results, "http_floor")
    for result in found:
        medians = result.raw.get("medians") or {}
        body = table(
            ["transport", "CPU ms/request", "requests/s", "simulator CPU ms/request"],
            ([name, num(m.get("cpu_ms_per_request")), num(m.get("requests_per_s"), 0),
              num(m.get("simulator_cpu_ms_per_request"))] for name, m in medians.items()),
        )  # fmt: skip
        parts.append(block(result, body))
    if not found:
        parts.append("No result of `bench/http_floor.py` is committed yet, so no figure is given.")
    return assemble(parts)


def median_cell(value: Any, digits: int = 2) -> str:
    """A {"median": m, "runs": [...]} figure as "m (r1, r2, ...)"."""
    if not isinstance(value, dict):
        return num(value, digits)
    runs = ", ".join(num(x, digits) for x in value.get("runs", []))
    return f"{num(value.get('median'), digits)} ({runs})" if runs else num(value.get("median"), digits)


def report_gallery(results: list[Result]) -> str:
    parts = [
        "## The gallery: `bench/report_bench.py`",
        "`batchgen report` on a batch of many jobs (some failed, pending, or with files deleted): the "
        "command's wall time and memory, the page's size, and in Debian's chromium the first render, the "
        "load event, a search and a filter. Medians, with every run in brackets.",
    ]
    for result in series(results, "report-10k"):
        raw = result.raw
        generation, browser = raw.get("generation") or {}, raw.get("browser") or {}
        rows = [
            ["jobs in the ledger", num(raw.get("jobs"))],
            ["`batchgen report` wall s", median_cell(generation.get("cli_wall_s"))],
            ["`batchgen report` peak RSS MB", num(generation.get("cli_peak_rss_mb"), 1)],
            ["collecting from the ledger and disk s", median_cell(generation.get("collect_s"))],
            ["rendering the page s", median_cell(generation.get("render_s"))],
            ["page bytes", num(generation.get("page_bytes"))],
            ["first render ms", median_cell(browser.get("first_render_ms"), 1)],
            ["load event ms", median_cell(browser.get("load_event_ms"), 1)],
            ["cards in the DOM at first", num(browser.get("cards_in_dom"))],
            ["a search ms", median_cell(browser.get("search_ms"), 1)],
            ["the 'failed' filter ms", median_cell(browser.get("filter_failed_ms"), 1)],
        ]
        parts.append(block(result, table(["figure", "value"], rows)))
    return assemble(parts) if len(parts) > 2 else ""


def settle_cell(values: Any) -> str:
    if not values:
        return "n/a"
    return ", ".join("never" if isinstance(v, float) and math.isinf(v) else num(v, 1) for v in values)


def pacing_grid(results: list[Result]) -> str:
    parts = [
        "## Pacing against the simulator's limit shapes: `bench/run.py --grid`",
        "Each point is a limit shape (create rate, bucket size, Retry-After, a cap on runs in flight, polls "
        "sharing the limit, a limit that changes); N is chosen so that T* is the same at every point. "
        "Settle: seconds until the pace stays within 10 % of the limit, from the start and from each "
        "change. Violations: requests that arrived before a 429 said they may.",
    ]
    for result in series(results, "grid"):
        points = {p["name"]: p for p in result.raw.get("points", [])}
        medians = result.raw.get("medians") or {}
        body = table(
            ["point", "N", "C", "T s", "T* s", "T/T*", "429s (share)", "settle s", "violations", "max unfinished",
             "targets missed"],
            ([name, num(points.get(name, {}).get("n")), num(points.get(name, {}).get("concurrency")),
              num(m.get("t"), 1), num(m.get("t_star"), 1), num(m.get("ratio"), 3),
              f"{num(m.get('refused_creates'))} ({pct(m.get('refused_share'))})", settle_cell(m.get("settle")),
              num(m.get("violations")), num(m.get("max_unfinished")),
              ", ".join(k for k, ok in (m.get("meets") or {}).items() if not ok) or "—"]
             for name, m in medians.items()),
        )  # fmt: skip
        repeat = result.raw.get("repeat")
        runs = f"Medians of {repeat} {plural(repeat, 'run')} per point." if repeat else ""
        traces = trace_table(medians)
        pictures = [
            f"![{name}: creates per second against the server's limit](results/{Path(path).name})"
            for name, path in (result.raw.get("figures") or {}).items()
        ]
        parts.append(block(result, assemble([runs, body, traces, *pictures])))
    return assemble(parts) if len(parts) > 2 else ""


def trace_table(medians: dict[str, Any]) -> str:
    """What the controller saw at the points that miss a target: its pace and fitted rates at each
    429 (batchgen's JSON log), and the first Retry-After violation with its timing."""
    rows = []
    for name, m in medians.items():
        trace = m.get("trace")
        if not trace or all((m.get("meets") or {}).values()):
            continue
        paces = ", ".join(f"{row[0]:.1f} s: {row[2]:.3g}" for row in trace[:6]) + (" …" if len(trace) > 6 else "")
        fitted = trace[-1][3]
        violation = (m.get("violation_log") or [None])[0]
        rows.append([
            name, num(len(trace)), paces,
            f"{fitted[0]:.3g}–{fitted[1]:.3g}/s" if fitted else "none", num(trace[-1][4]) if trace[-1][4] else "—",
            f"{violation['kind']} {violation['after_429'] * 1000:.0f} ms after a 429" if violation else "—",
        ])  # fmt: skip
    if not rows:
        return ""
    return assemble([
        "What the controller saw where a target is missed: the 429s batchgen logged (creates and polls), "
        "its pace after the first ones (time on the simulator's clock: requests/s), the rates its fit "
        "allowed after the last, the cap on running runs it found, and the first Retry-After violation.",
        table(["point", "429s", "pace after each", "fitted at the end", "cap found", "first violation"], rows),
    ])  # fmt: skip


def grid_summary(result: Result) -> tuple[int, int, list[float]]:
    """Points meeting every target, points, and the median T/T* of each point."""
    medians = result.raw.get("medians") or {}
    met = sum(1 for m in medians.values() if all((m.get("meets") or {}).values()))
    return met, len(medians), [m["ratio"] for m in medians.values() if m.get("ratio") is not None]


SECTIONS: list[Callable[[list[Result]], str]] = [
    scenarios_1_to_5, pacing_grid, profile, experiments, before_fixes, scenarios_6_and_7, http_floor,
    report_gallery,
]  # fmt: skip
CLAIMED = (
    "s1-5", "s1-5_before-planner-fix", "s6-7", "grid", "http_floor", "report-10k", "reliability", "mutation",
)  # fmt: skip


def other_series(results: list[Result]) -> str:
    names = sorted({r.name for r in results if r.name not in CLAIMED and not r.name.startswith("ab-")})
    if not names:
        return ""
    parts = ["## Other results", "Series without a section of their own yet: every flat column of their rows."]
    for name in names:
        for result in series(results, name):
            body = assemble([generic_table(result), profile_tables(result.raw.get("profiles") or {})])
            parts.append(f"### {name}\n\n" + block(result, body))
    return assemble(parts)


def profile_tables(profiles: dict[str, Any]) -> str:
    """Where a command's own time goes, one run under cProfile (bench/scale.py --profile)."""
    if not profiles:
        return ""
    rows = []
    for what, found in profiles.items():
        groups = ", ".join(f"{g} {pct(share)}" for g, _, share in found["groups"][:6])
        functions = ", ".join(f"`{f}` {num(t, 2)} s" for f, t in found["functions"][:4])
        rows.append([what, num(found["profiled_s"], 1), groups, functions])
    return assemble([
        "Where each command's own time goes, in one run under cProfile (which slows it): by module or package, "
        "then the functions that spend most.",
        table(["command", "profiled s", "own time by module (share)", "functions with most own time"], rows),
    ])  # fmt: skip


RESULTS_INTRO = """# Benchmark results

{generated}

Every figure here is computed by `bench/docs.py` from a file in `bench/results/`, and each
table names that file, the command that wrote it and the commit it measured. Figures from
different files were measured on different days, commits and machines: compare within a
table. Timings were taken on a shared 2-core machine; the load average, where recorded, says
how busy it was. Regenerate with `python bench/docs.py`; add results as `bench/README.md`
describes.

Not given here any more, because no committed result holds their raw data: the per-module
time shares of an earlier profile, earlier `bench/http_floor.py` figures, a bytes-per-row
estimate of manifest validation and a profile of a 200,000-row sync, and a table of single
runs made after the connection-pool and poll-gap changes. `bench/poll_model.py` searches
poll schedules by coordinate descent: what it finds is an example of what a schedule can do,
not a bound on what none can, and its output is not stored.
"""


def results_md(results: list[Result]) -> str:
    parts = [RESULTS_INTRO.format(generated=GENERATED).rstrip()]
    parts += [section(results) for section in SECTIONS]
    parts.append(other_series(results))
    return assemble(parts) + "\n"
