"""The grid benchmark still runs: `python bench/run.py --grid --quick`, four short points, nothing timed.

Asserts only that every point completes against the real simulator process with the limit
shape it names, and that its figures are computed; the numbers are for bench/RESULTS.md.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO, bench_command


@pytest.mark.timeout(300)
def test_grid_quick_completes_and_computes_every_figure(tmp_path: Path) -> None:
    """Each quick grid point runs the CLI to the end and reports T/T*, 429s, settle times and violations."""
    out = tmp_path / "grid.json"
    bench_command("run.py", "--grid", "--quick", "--json", str(out), "--workdir", str(tmp_path / "work"),
                  "--figures", str(tmp_path / "figures"))  # fmt: skip
    report = json.loads(out.read_text())
    points = {p["name"]: p for p in report["points"]}
    assert len(points) == 4
    for name, m in report["medians"].items():
        assert m["returncode"] == 0
        assert m["ratio"] > 0 and math.isfinite(m["ratio"])
        assert m["create_requests"] >= points[name]["n"]
        assert 0 <= m["refused_share"] < 1 and m["violations"] >= 0
        # what the controller saw: one row per 429 of a create or poll, from batchgen's own log
        assert len(m["trace"]) >= m["refused_creates"] and all(row[2] > 0 for row in m["trace"])
        if points[name]["max_running"] is not None:
            assert m["max_unfinished"] <= points[name]["max_running"]
        if points[name]["rate"] is not None:
            assert len(m["settle"]) == points[name]["rate"].count(",") + 1
    assert report["markdown"].startswith("| point |")

    # Runs at one commit merge into medians over all of them (bench/grid.py --merge); other commits are refused.
    merged = tmp_path / "merged.json"
    bench_command("grid.py", "--merge", str(out), str(out), "--json", str(merged), "--figures", str(tmp_path / "f2"))
    both = json.loads(merged.read_text())
    assert both["repeat"] == 2 * report["repeat"] and len(both["machine"]["merged"]) == 2
    for name, samples in both["samples"].items():
        assert samples == report["samples"][name] * 2
        assert both["medians"][name]["ratio"] == report["medians"][name]["ratio"]
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**report, "machine": {**report["machine"], "commit": "0000000"}}))
    merge = [sys.executable, str(REPO / "bench" / "grid.py"), "--merge", str(out), str(other)]
    refused = subprocess.run([*merge, "--json", str(tmp_path / "no.json")], capture_output=True, text=True)
    assert refused.returncode != 0 and "different commits" in refused.stderr
    assert not (tmp_path / "no.json").exists()
