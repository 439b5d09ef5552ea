"""The envelope every file in bench/results/ has: what ran, on which commit, where, and its rows.

    {
      "schema": 1,
      "name": "reliability",            # the series: bench/docs.py picks the newest file of each name
      "command": "python bench/reliability.py --kills 20 --json ...",
      "commit": "1a2b3c4",              # the commit measured; "-dirty" appended when batchgen/ or bench/ differed
      "date": "2026-11-28T18:00:00Z",   # UTC, when the measurement ended
      "machine": {"cores": 2, "cpu_model": "...", "python": "3.11.7", "platform": "...",
                  "load_before": [1.0, 1.2, 1.3], "load_after": [...]},
      "rows": [{...}, ...],             # the figures: one flat object per table row
      ...                               # anything else the producer wants to keep (raw samples)
    }

Files are named ``<name>_<commit>.json``. See bench/README.md.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

SCHEMA = 1
REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"


def git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False)
    return done.stdout.strip()


def measured_commit() -> str:
    """The short commit of the working tree, with "-dirty" when batchgen/ or bench/ (results aside) differ."""
    head = git("rev-parse", "--short", "HEAD") or "unknown"
    changed = [
        line for line in git("status", "--porcelain", "--", "batchgen", "bench").splitlines()
        if "bench/results/" not in line
    ]  # fmt: skip
    return head + ("-dirty" if changed else "")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine(load_before: tuple[float, ...] | None = None) -> dict[str, Any]:
    info: dict[str, Any] = {
        "cores": os.cpu_count(),
        "cpu_model": cpu_model(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    if load_before is not None:
        info["load_before"] = [round(x, 2) for x in load_before]
        info["load_after"] = [round(x, 2) for x in os.getloadavg()]
    return info


def command_line() -> str:
    script = Path(sys.argv[0]).resolve()
    try:
        shown = script.relative_to(REPO).as_posix()
    except ValueError:
        shown = str(script)
    return " ".join(["python", shown, *sys.argv[1:]])


def envelope(
    name: str, rows: list[dict[str, Any]], load_before: tuple[float, ...], *, commit: str | None = None, **extra: Any
) -> dict[str, Any]:
    """The results file; ``commit`` defaults to the working tree's (measured_commit()) at this moment."""
    return {
        "schema": SCHEMA,
        "name": name,
        "command": command_line(),
        "commit": commit or measured_commit(),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine(load_before),
        "rows": rows,
        **extra,
    }


def write(result: dict[str, Any], path: Path | None = None) -> Path:
    """Write ``result`` to ``path`` (default: bench/results/<name>_<commit>.json)."""
    path = path or RESULTS / f"{result['name']}_{result['commit']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return path
