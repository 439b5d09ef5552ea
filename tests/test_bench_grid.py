"""The grid benchmark still runs: `python bench/run.py --grid --quick`, four short points, nothing timed.

Asserts only that every point completes against the real simulator process with the limit
shape it names, and that its figures are computed; the numbers are for bench/RESULTS.md.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from .conftest import bench_command


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
