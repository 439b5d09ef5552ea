"""The benchmark harness still runs: `python bench/run.py --quick`, tiny sizes, nothing timed.

Asserts only that every scenario completes against the real simulator process and
that its ratios and counters are computed; the numbers themselves are for
bench/RESULTS.md, not for CI.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

from .conftest import REPO, bench_command


@pytest.mark.timeout(300)
def test_bench_quick_completes_and_computes_ratios(tmp_path: Path) -> None:
    """`bench/run.py --quick`: every scenario ends for both clients, with its ratios and counters computed."""
    out = tmp_path / "bench.json"
    md = tmp_path / "bench.md"
    bench_command("run.py", "--quick", "--json", str(out), "--markdown", str(md), "--workdir", str(tmp_path / "work"))
    report = json.loads(out.read_text())

    rows = {(r["scenario"], r["client"]): r for r in report["rows"]}
    for scenario in (1, 2, 3, 4, 5):
        for client in ("batchgen", "baseline"):
            row = rows[(scenario, client)]
            assert row["returncode"] == 0
            assert row["creates"] >= row["n"]
            assert row["succeeded_files"] == row["n"]
            assert row["t"] > 0 and math.isfinite(row["polls_per_run"]) and row["cpu_ms_per_job"] > 0
            assert row["peak_rss_mb"] > 0
            if scenario != 5:  # L = 0 and no limit: T* = 0, no ratio
                assert row["ratio"] is not None and row["ratio"] > 0
                assert row["added_latency_share"] is not None

    s6 = report["scenario_6"]
    assert s6["validate"]["wall_s"] > 0 and s6["validate"]["peak_rss_mb"] > 0
    assert [r["returncode"] for r in s6["runs"]] == [130, 130]  # interrupted with SIGINT, cleanly
    assert all(r["finished_total"] >= r["stop_after"] for r in s6["runs"])
    assert math.isfinite(s6["rss_growth"])

    s7 = report["scenario_7"]
    assert s7["said_nothing_to_do"] and s7["creates_during_resume"] == 0 and s7["resume_wall_s"] > 0

    assert report["targets"], "targets were evaluated"
    assert "T/T*" in md.read_text()


@pytest.mark.timeout(300)
def test_bench_profile_summarises_scenario_5_by_kind(tmp_path: Path) -> None:
    """`bench/run.py --profile` profiles scenario 5 and splits its own time by kind, per job and per request."""
    out = tmp_path / "profile.json"
    bench_command("run.py", "--quick", "--scenarios", "5", "--clients", "batchgen", "--profile", "--json", str(out),
                  "--markdown", str(tmp_path / "p.md"), "--workdir", str(tmp_path / "work"))  # fmt: skip
    profile = json.loads(out.read_text())["profile"]
    summary = profile["summary"]
    assert summary["jobs"] == profile["n"] and summary["requests"] >= 3 * profile["n"]  # create, poll, download
    kinds = {k["name"]: k for k in summary["by_kind"]}
    assert "HTTP libraries" in kinds and "batchgen (its own Python)" in kinds
    assert math.isclose(sum(k["seconds"] for k in kinds.values()), summary["profiled_s"], rel_tol=1e-6)
    assert kinds["HTTP libraries"]["seconds"] > 0 and kinds["batchgen (its own Python)"]["seconds"] > 0
    assert any(g["name"].startswith("batchgen/") for g in summary["by_group"])
    assert "| HTTP libraries |" in (tmp_path / "p.md").read_text()


@pytest.mark.timeout(300)
def test_profile_command_runs_scenario_5_at_a_given_size() -> None:
    """`bench/profiles.py --jobs N` profiles scenario 5 at N jobs on its own and prints where the time went."""
    printed = bench_command("profiles.py", "--jobs", "20", "--top", "5").stdout
    assert "scenario 5, 20 jobs under cProfile" in printed
    assert "HTTP libraries" in printed and "batchgen (its own Python)" in printed
    assert "top 5 by own time:" in printed


@pytest.mark.timeout(300)
def test_scale_quick_measures_every_step(tmp_path: Path) -> None:
    """`bench/scale.py --quick` (20,000 rows, nothing saved): start, resume, status and export all measured."""
    done = bench_command("scale.py", "--quick", "--work", str(tmp_path / "work"))
    rows = {row["what"]: row for row in (json.loads(line) for line in done.stdout.splitlines() if line.startswith("{"))}
    assert set(rows) == {
        "start: first create", "resume a finished batch", "status", "status --json", "export jsonl", "export csv",
    }  # fmt: skip
    assert rows["start: first create"]["first_create_s"] is not None
    assert all(row["wall_s"] > 0 and row["peak_rss_mb"] > 0 and row["jobs"] == 20_000 for row in rows.values())


def load_docs():
    spec = importlib.util.spec_from_file_location("bench_docs", REPO / "bench" / "docs.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_documents_are_exactly_what_docs_py_makes_from_the_results() -> None:
    """RESULTS.md, RELIABILITY.md and the README's figures are what bench/docs.py computes from bench/results/:
    a figure typed in by hand, or a results file added without regenerating, fails here."""
    docs = load_docs()
    rendered = docs.render_all()
    assert set(rendered) == {REPO / "README.md", REPO / "bench" / "RESULTS.md", REPO / "bench" / "RELIABILITY.md"}
    for path, text in rendered.items():
        assert path.read_text(encoding="utf-8") == text, f"{path.name} differs: run `python bench/docs.py`"


def test_every_results_file_names_its_command_and_commit() -> None:
    """Each file in bench/results/ says which command made it and which commit it measured."""
    docs = load_docs()
    results = docs.load()
    assert results
    for result in results:
        assert result.command != "(not recorded)" and result.commit != "(not recorded)", result.file
