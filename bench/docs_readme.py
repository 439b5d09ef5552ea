"""The README's figures: each block between ``<!-- docs.py:NAME -->`` and ``<!-- /docs.py:NAME -->``
is filled by ``README_BLOCKS[NAME]``; everything outside the markers is left as it is."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from docs_common import Result, assemble, newest, num, pct, series, table
from docs_reliability import reliability_counts
from docs_results import grid_summary, share_429

from batchgen.words import plural

# -- README.md -----------------------------------------------------------------------------------------


def readme_performance(results: list[Result]) -> str:
    latest = newest(results, "s1-5")
    with_baseline = next(
        (r for r in series(results, "s1-5") if any(row.get("client") == "baseline" for row in r.rows)), None
    )
    if latest is None:
        return "No benchmark result is committed yet."

    def row(result: Result | None, scenario: int, client: str) -> dict[str, Any] | None:
        if result is None:
            return None
        return next((r for r in result.rows if r["scenario"] == scenario and r["client"] == client), None)

    def cell(found: dict[str, Any] | None, with_429: bool) -> str:
        if found is None:
            return "—"
        text = num(found.get("ratio"), 3)
        return text + (f", {share_429(found).split('(')[-1].rstrip(')')} answered 429" if with_429 else "")

    # The newest batchgen figures, and the newest like-for-like comparison (both clients in one file).
    columns = [(latest, "batchgen")]
    if with_baseline is not None:
        if with_baseline is not latest:
            columns.append((with_baseline, "batchgen"))
        columns.append((with_baseline, "baseline"))
    label = {"batchgen": "batchgen", "baseline": "hand-written"}
    header = ["scenario"] + [
        f"{label[client]} T/T\\* at `{result.commit}` ({num(series_runs(result))} {plural(series_runs(result), 'run')})"
        for result, client in columns
    ]
    lines = [
        [scenario_name(latest, s)] + [cell(row(result, s, client), s > 1) for result, client in columns]
        for s in (1, 2, 3)
    ]
    s4, s5 = row(latest, 4, "batchgen"), row(latest, 5, "batchgen")
    sentences = []
    if s4 and s5:
        sentences.append(
            f"At `{latest.commit}`, slow lognormal generations (scenario 4): "
            f"{num(s4['polls_per_run'])} polls per run at "
            f"{pct(s4['added_latency_share'])} added latency; instant generations (scenario 5): "
            f"{num(s5['cpu_ms_per_job'])} ms of CPU per job."
        )
    s67 = newest(results, "s6-7") if newest(results, "scale-1000000") is None else None  # else: readme_scale
    if s67 and s67.raw.get("scenario_6") and s67.raw.get("scenario_7"):
        v, s7 = s67.raw["scenario_6"]["validate"], s67.raw["scenario_7"]
        sentences.append(
            f"At `{s67.commit}`: validating a {num(s67.raw['scenario_6']['rows'])}-row CSV took "
            f"{num(v['wall_s'], 1)} s and {num(v['peak_rss_mb'], 0)} MB; resuming a finished "
            f"{num(s7['jobs'])}-job batch took {num(s7['resume_wall_s'])} s."
        )
    sentences.append(
        "Scenarios 1–3 run against the simulator's token bucket at 50/s holding 5 creates (a tenth of a "
        "second), the way real accounts' small bursts do; a client that overshoots such a bucket waits "
        "out whole-second pauses."
    )
    sources = [latest.file] + [r.file for r in (with_baseline, s67) if r is not None and r is not latest]
    return assemble(
        [table(header, lines), " ".join(sentences), "Sources: " + ", ".join(f"`{f}`" for f in sources) + "."]
    )


def scenario_name(result: Result, number: int) -> str:
    """How bench/run.py described the scenario, from the file: N, the limit and how it is known."""
    spec = (result.raw.get("scenarios") or {}).get(str(number))
    if not spec:
        return f"scenario {number}"
    limit = f"{num(spec['n'])} jobs, limit {num(spec['rate'])}/s"
    if spec.get("give_rate"):
        return f"{limit} given with `--rate`"
    return f"{limit} found from 429s " + ("(Retry-After)" if spec.get("retry_after") else "(no Retry-After)")


def series_runs(result: Result) -> int:
    return max((r.get("runs", 1) for r in result.rows), default=1)


def readme_reliability(results: list[Result]) -> str:
    result = newest(results, "reliability")
    if result is None:
        return "(no result committed yet)"
    checks, held, _ = reliability_counts(result)
    kills = next((r["figure"] for r in result.rows if r["what"].startswith("runs ended by SIGKILL")), "—")
    return f"({held} of {checks} checks held at `{result.commit}`; {kills} runs ended by SIGKILL and resumed)"


def cite(result: Result, command: str) -> str:
    """Where a README figure comes from: the commit measured, the command, the results file."""
    return f"at `{result.commit}`, `{command}`, [`{result.file}`]({result.file})"


def readme_status(results: list[Result]) -> str:
    """How fast `batchgen status` answers on a large ledger: bench/scale.py's row, else status_bench.py's."""
    scale = newest(results, "scale-1000000")
    found = next((r for r in scale.rows if r.get("what") == "status"), None) if scale else None
    if scale is not None and found is not None:
        return (
            f"on a million jobs it answers in {num(found['wall_s'])} s (median of {num(found['runs'])} runs of the "
            f"CLI {cite(scale, 'python bench/scale.py')})."
        )
    status = newest(results, "status-1m")
    if status is None:
        return "(no result committed yet)"
    return (
        f"on a million jobs it answers in {num(status.raw.get('median_text'))} s (median of "
        f"{num(len(status.raw.get('status_text_seconds') or []))} runs of the CLI "
        f"{cite(status, 'python bench/status_bench.py')})."
    )


def readme_report(results: list[Result]) -> str:
    result = newest(results, "report-10k")
    if result is None:
        return "(no result committed yet)"
    raw = result.raw
    generation, browser = raw.get("generation") or {}, raw.get("browser") or {}

    def median(value: Any, digits: int = 1) -> str:
        return num((value or {}).get("median"), digits)

    return (
        f"with {num(raw.get('jobs'))} jobs, `batchgen report` took {median(generation.get('cli_wall_s'))} s, "
        f"and Chromium showed the first cards {median(browser.get('first_render_ms'), 0)} ms after the page "
        f"started loading; only the cards on screen are in the page ({num(browser.get('cards_in_dom'))} at "
        f"first), and a search over all jobs took {median(browser.get('search_ms'), 0)} ms (medians "
        f"{cite(result, 'python bench/report_bench.py')})."
    )


def readme_grid(results: list[Result]) -> str:
    runs = series(results, "grid")
    if not runs:
        return "The pacing grid (`bench/run.py --grid`) has no committed result yet."
    whole = max(len(r.raw.get("medians") or {}) for r in runs)
    full = next(r for r in runs if len(r.raw.get("medians") or {}) == whole)
    sentences = []
    for result in [runs[0], full] if runs[0] is not full else [full]:
        met, points, ratios = grid_summary(result)
        ratios.sort()
        violations = sum(int(m.get("violations") or 0) for m in (result.raw.get("medians") or {}).values())
        if points == whole:
            shapes = (
                f"{points} limit shapes of the simulator (create rates of 2 to 150/s, buckets of 1 to R, Retry-After "
                f"exact, fixed or absent, caps on running runs, polls sharing the limit, a limit halved and restored)"
            )
        else:
            rates = sorted({p.get("rate") for p in result.raw.get("points", []) if p.get("rate")}, key=float)
            shapes = f"{points} of the grid's limit shapes (those at {', '.join(rates)}/s)"
        sentences.append(
            f"Pacing against {shapes}, without `--rate`, at `{result.commit}` ({num(result.raw.get('repeat'))} "
            f"{plural(result.raw.get('repeat') or 0, 'run')} per point, `bench/run.py --grid`): "
            f"{met} of {points} points meet every target of the grid "
            f"(T/T\\* ≤ 1.10, ≤ 3 % of creates answered 429, settled within 5 s); T/T\\* from "
            f"{num(ratios[0], 2)} to {num(ratios[-1], 2)}, median {num(ratios[len(ratios) // 2], 2)}; "
            f"{num(violations)} {plural(violations, 'request')} sent before a 429's Retry-After allowed."
        )
    text = " ".join(sentences) + " The tables, with the targets each point misses, are in `bench/RESULTS.md`."
    pictured = next((r for r in runs if r.raw.get("figures")), None)
    if pictured is not None:
        figures = pictured.raw["figures"]
        name = next((n for n in figures if "halved" in n), next(iter(figures)))
        text += (
            f"\n\n![{name}: creates per second against the limit, at {pictured.commit}]"
            f"(bench/results/{Path(figures[name]).name})"
        )
    return text


def readme_scale(results: list[Result]) -> str:
    """A million jobs: bench/scale.py's start, resume, status and export; manifest_bench.py's validate."""
    sentences = []
    scale = newest(results, "scale-1000000")
    if scale is not None:
        by = {r["what"]: r for r in scale.rows}

        def wall(what: str) -> str:
            return num(by[what]["wall_s"]) + " s" if what in by else "—"

        start = by.get("start: first create", {})
        sentences.append(
            f"A million-row CSV manifest, at `{scale.commit}` (`python bench/scale.py`, medians of "
            f"{num(max((r.get('runs', 1) for r in scale.rows), default=1))}): the first create reached the "
            f"simulator {num(start.get('first_create_s'))} s after `batchgen run` started, at a peak of "
            f"{num(start.get('peak_rss_mb'), 0)} MB while it read the whole manifest into its ledger; resuming "
            f"the finished batch took {wall('resume a finished batch')} (every file checked), `status` "
            f"{wall('status')}, `export` {wall('export jsonl')} (JSONL) and {wall('export csv')} (CSV)."
        )
    cells, seen = [], set()
    for manifest in series(results, "manifest"):  # newest first: each size's newest figure
        for r in manifest.rows:
            if r.get("command") == "validate" and r.get("format", "csv") == "csv" and r["rows"] not in seen:
                seen.add(r["rows"])
                cells.append(
                    (
                        r["rows"],
                        f"{num(r['median_wall_s'], 1)} s and {num(r['max_peak_rss_mb'], 0)} MB for "
                        f"{num(r['rows'])} rows at `{manifest.commit}`",
                    )
                )
    if cells:
        sentences.append(
            "`batchgen validate` (every row checked and the run planned: what the ledger and the reuse index "
            f"hold, identical requests, the bill) took {' and '.join(text for _, text in sorted(cells))} "
            "(`python bench/manifest_bench.py`)."
        )
    if not sentences:
        return "No scale result is committed yet."
    return " ".join(sentences)


README_BLOCKS: dict[str, Callable[[list[Result]], str]] = {
    "performance": readme_performance,
    "reliability": readme_reliability,
    "status": readme_status,
    "report": readme_report,
    "grid": readme_grid,
    "scale": readme_scale,
}


def fill_markers(text: str, blocks: dict[str, str]) -> str:
    for name, content in blocks.items():
        pattern = re.compile(rf"(<!-- docs\.py:{name} -->)(.*?)(<!-- /docs\.py:{name} -->)", re.S)
        if not pattern.search(text):
            raise SystemExit(f"README.md has no <!-- docs.py:{name} --> ... <!-- /docs.py:{name} --> markers")
        inline = "\n" not in content
        replacement = content if inline else f"\n{content}\n"
        text = pattern.sub(lambda m, r=replacement: m[1] + r + m[3], text)
    return text
