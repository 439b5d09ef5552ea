"""Where batchgen's CPU goes: scenario 5 under cProfile, its own time grouped by module or
package and summed by kind (HTTP libraries, batchgen, pacing, sqlite, the event loop, the rest).

bench/run.py --profile calls profile_scenario_5 and print_profile; bench/scale.py groups its
profiles with group_of and short_name, so both tables read alike. On its own, at any size
(the profiled command is the benchmark's own, ``harness.batchgen_cmd``):

    python bench/profiles.py [--jobs 1500] [--top 25] [--source worktree]
"""

from __future__ import annotations

import os
import pstats
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness import PY, Simulator, batchgen_cmd, client_env, run_measured, write_manifest

if TYPE_CHECKING:
    from run import Scenario


def profile_scenario_5(sc: Scenario, work: Path, top: int = 25) -> dict[str, Any]:
    manifest = write_manifest(work / f"jobs-{sc.n}.csv", sc.n)
    out = work / "s5-profile"
    prof = work / "s5-batchgen.prof"
    with Simulator(sc.sim_args(), work / "s5-profile.sim.log") as sim:
        # The command scenario 5 measures (--no-reuse included), under cProfile.
        cmd = [PY, "-m", "cProfile", "-o", str(prof), *batchgen_cmd(manifest, out, sc.concurrency)[1:]]
        done = run_measured(cmd, client_env(sim.base_url), work / "s5-profile.log")
        counts = sim.stats()
    stats = pstats.Stats(str(prof))
    entries = []
    for (filename, line, func), (_cc, nc, tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        entries.append({"function": f"{short_name(filename)}:{line}({func})", "ncalls": nc, "tottime": tt,
                        "cumtime": ct, "group": group_of(filename, func)})  # fmt: skip
    by_cum = sorted(entries, key=lambda e: e["cumtime"], reverse=True)[:top]
    by_tot = sorted(entries, key=lambda e: e["tottime"], reverse=True)[:top]
    requests = counts["create_requests"] + counts["gets"] + counts["downloads"]
    return {"wall_s": done.wall, "cpu_s": done.cpu, "n": sc.n, "by_cumtime": by_cum, "by_tottime": by_tot,
            "requests": requests, "summary": profile_summary(entries, sc.n, requests),
            "prof_file": str(prof)}  # fmt: skip


# Where the profiled time goes, by who spends it (own time, so nothing is counted twice).
HTTP_LIBRARIES = ("httpx", "httpcore", "h11", "aiohttp", "httpx_aiohttp", "yarl", "multidict", "aiohappyeyeballs",
                   "propcache", "frozenlist", "aiosignal", "idna", "certifi")  # fmt: skip
KINDS = {
    "HTTP libraries": lambda g: g.split("/")[0] in HTTP_LIBRARIES or g in ("builtin:send", "builtin:recv"),
    "batchgen (its own Python)": lambda g: g.startswith("batchgen/") and not g.startswith("batchgen/pacing"),
    "batchgen/pacing (the create-rate fit)": lambda g: g.startswith("batchgen/pacing"),  # a module, then a package
    "sqlite (ledger statements)": lambda g: g.startswith("builtin:") and ("execute" in g or "commit" in g),
    "event loop and anyio": lambda g: g.split("/")[0] in ("anyio", "sniffio") or g.startswith("stdlib/asyncio"),
}


def group_of(filename: str, func: str) -> str:
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
    kinds: dict[str, float] = {name: 0.0 for name in [*KINDS, "other (stdlib, builtins)"]}
    for group, seconds in groups.items():
        kind = next((name for name, match in KINDS.items() if match(group)), "other (stdlib, builtins)")
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


def short_name(filename: str) -> str:
    if "site-packages/" in filename:
        return filename.split("site-packages/", 1)[1]
    if "/batchgen/" in filename:
        return "batchgen/" + filename.rsplit("/batchgen/", 1)[1]
    if filename.startswith(("~", "<")):
        return filename
    return "stdlib/" + os.path.basename(filename)


def print_profile(profile: dict[str, Any]) -> None:
    """The top of the profile by cumulative time, then own time by kind and by group."""
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


def main(argv: list[str] | None = None) -> int:
    """Scenario 5 (no latency, no limit) at ``--jobs`` jobs under cProfile; prints the tables above
    and the top functions by own time. Nothing is stored: the figures depend on the machine's load."""
    import argparse
    import tempfile

    from harness import take_snapshot
    from run import throughput_scenarios

    parser = argparse.ArgumentParser(description="scenario 5 under cProfile: where batchgen's CPU goes")
    parser.add_argument("--jobs", type=int, default=1500, help="jobs in the run (scenario 5 has 5,000)")
    parser.add_argument("--top", type=int, default=25, help="functions shown by own time")
    parser.add_argument("--source", default="worktree", help="the batchgen to measure (see bench/run.py --source)")
    args = parser.parse_args(argv)
    scenario = throughput_scenarios(False, 1.0)[5]
    scenario.n = args.jobs
    with tempfile.TemporaryDirectory(prefix="batchgen-profile-") as tmp:
        work = Path(tmp)
        take_snapshot(args.source, work)
        profile = profile_scenario_5(scenario, work, top=args.top)
    print(f"scenario 5, {args.jobs} jobs under cProfile: {profile['wall_s']:.1f} s wall, {profile['cpu_s']:.1f} s CPU")
    print_profile(profile)
    print(f"\ntop {args.top} by own time:")
    for e in profile["by_tottime"]:
        print(f"  {e['tottime']:7.2f} s own {e['cumtime']:7.2f} s cum {e['ncalls']:>8}  {e['function']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
