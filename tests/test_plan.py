"""The bill before paying: the dry-run plan, prices, and caps that stop a batch exactly where asked."""

from __future__ import annotations

import pytest

from batchgen import ExitCode
from batchgen.errors import UsageError
from batchgen.ledger.reuse import default_index_path
from batchgen.models import JobSpec, image_input
from batchgen.pricing import Prices, parse_prices
from batchgen.simulator import SimConfig, Simulator

from .conftest import BASE_URL, batchgen_cli


@pytest.mark.parametrize("concurrency", [1, 8, 64])
def test_max_runs_is_exact_whatever_the_concurrency(write_manifest, run, tmp_path, concurrency):
    """--max-runs N creates exactly N runs (429s and lost answers included), exits 7, and the next run goes on."""
    sim = Simulator(SimConfig(latency=0.05, create_rate="50", faults={"reset_after_create": 0.1}, seed=3))
    manifest = write_manifest(40)
    first = run(manifest, sim, max_runs=12, concurrency=concurrency)
    assert first.exit_code == ExitCode.CAPPED, first.message
    assert sim.stats()["creates"] == 12
    assert first.counts["running"] == 0  # what was created was collected before stopping
    second = run(manifest, sim, max_runs=1000, concurrency=concurrency)
    assert second.exit_code == ExitCode.OK, second.message
    assert second.counts["succeeded"] == 40


def test_max_credits_stops_before_the_run_that_would_pass_it(write_manifest, run):
    """With high=3, medium=1 and --max-credits 7, the batch spends at most 7 credits."""
    sim = Simulator(SimConfig(latency=0.05))
    jobs = [{"id": f"h{i}", "prompt": f"high {i}", "quality": "high"} for i in range(5)]
    jobs += [{"id": f"m{i}", "prompt": f"medium {i}", "quality": "medium"} for i in range(5)]
    result = run(write_manifest(jobs=jobs), sim, max_credits=7, prices={"high": 3, "medium": 1}, concurrency=1)
    assert result.exit_code == ExitCode.CAPPED
    spent = sum(3 if r["input"].get("quality") == "high" else 1 for r in sim.stats()["runs"])
    assert spent <= 7 and spent >= 5  # it stops at the first run that no longer fits


def test_max_credits_without_a_price_for_every_job_sends_nothing(write_manifest, run, sim):
    """A job whose price is unknown makes --max-credits a usage error before any request."""
    jobs = [{"id": "a", "prompt": "a", "quality": "high"}, {"id": "b", "prompt": "b"}]
    result = run(write_manifest(jobs=jobs), sim, max_credits=10, prices={"high": 2})
    assert result.exit_code == ExitCode.USAGE and "no price" in result.message
    assert sim.stats()["create_requests"] == 0


def test_prices_parse_and_look_up_by_model_quality_then_quality_then_default():
    """--price pairs parse; a job's price comes from the most specific key."""
    prices = parse_prices("high=2, medium=1, default=0.5, openai/gpt-image-1.5:high=3")
    high = JobSpec("h", image_input("p", quality="high"))
    other = JobSpec("o", image_input("p", quality="high"), model="someone/else")
    plain = JobSpec("p", image_input("p"))
    assert (prices.of(high), prices.of(other), prices.of(plain)) == (3, 2, 0.5)
    assert Prices({}).of(plain) is None
    assert parse_prices(" 2 ").table == {"default": 2.0}  # a lone number prices every run, as pricing: 2 does
    for bad in ("high", "two", "-1", "high=-1", "=2", "high=two", "high=nan"):
        with pytest.raises(UsageError):
            parse_prices(bad)


def test_a_price_key_that_would_price_no_job_is_refused_with_the_likely_one():
    """A typo or an unknown quality (hihg, ultra, model:hgh) would silently price nothing: refused, naming the
    key and, when one is close, the key meant. Models (with their owner/) and 'default' are keys."""
    assert parse_prices("someone/else=1, default=2, someone/else:medium=3").table.keys() == {
        "someone/else", "default", "someone/else:medium"
    }  # fmt: skip
    for bad, meant in (("hihg=2", "high"), ("ultra=2", None), ("openai/gpt-image-1.5:hgh=2", "high")):
        with pytest.raises(UsageError) as refused:
            parse_prices(bad)
        message = str(refused.value)
        assert repr(bad.partition("=")[0]) in message
        assert (f"did you mean {meant!r}" in message) if meant else ("did you mean" not in message)


def test_dry_run_counts_only_what_would_be_paid_now(write_manifest, tmp_path, run):
    """The plan leaves out jobs done, identical ones and reusable ones, prices the rest, and sends nothing."""
    sim = Simulator(SimConfig(latency=0.05))
    done = write_manifest(jobs=[{"id": "a", "prompt": "lamp", "quality": "high"}], name="done.yaml")
    assert run(done, sim).exit_code == ExitCode.OK
    elsewhere = write_manifest(jobs=[{"id": "x", "prompt": "stool", "quality": "medium"}], name="elsewhere.yaml")
    assert run(elsewhere, sim, output_dir=tmp_path / "other").exit_code == ExitCode.OK
    jobs = [
        {"id": "a", "prompt": "lamp", "quality": "high"},  # done in this folder's ledger
        {"id": "b", "prompt": "mug", "quality": "high", "aspect_ratio": "3:2"},
        {"id": "c", "prompt": "mug", "quality": "high", "aspect_ratio": "3:2"},  # identical to b
        {"id": "d", "prompt": "vase", "quality": "medium"},
        {"id": "e", "prompt": "stool", "quality": "medium"},  # made by the other folder's batch: reused
    ]
    manifest = write_manifest(jobs=jobs, name="more.yaml")
    out = tmp_path / "out"
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and not p.name.endswith(("-wal", "-shm"))}
    result = batchgen_cli(
        "run", str(manifest), "--output", str(out), "--dry-run", "--price", "high=2,medium=1", "--base-url", BASE_URL
    )  # the same API as the batches above: an image is reused only from the service that made it
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert (
        "5 jobs in the manifest" in text and "1 already done" in text and "1 identical" in text and "1 reusing" in text
    )
    assert "runs that would be created now: 2" in text and "credits: 3" in text
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and not p.name.endswith(("-wal", "-shm"))}
    assert after == before  # nothing written (sqlite may add its empty side files for a reader)
    assert sim.stats()["creates"] == 2


def test_validate_prints_the_plan_too(write_manifest, tmp_path):
    """validate says the manifest is valid and what a run would create, with no output folder needed."""
    result = batchgen_cli(
        "validate", str(write_manifest(3)), "--output", str(tmp_path / "none"), "--price", "default=1"
    )
    assert result.returncode == 0, result.stderr
    assert "3 jobs, valid" in result.stdout and "runs that would be created now: 3" in result.stdout
    assert "credits: 3" in result.stdout
    assert not (tmp_path / "none").exists()


def test_the_manifests_pricing_prices_the_plan_and_the_option_overrides_it(write_manifest, tmp_path):
    """'pricing:' in the manifest prices the plan; --price wins where both give a price."""
    jobs = [{"id": "h", "prompt": "high", "quality": "high"}, {"id": "m", "prompt": "medium", "quality": "medium"}]
    manifest = write_manifest(jobs=jobs, pricing={"high": 5, "medium": 1})
    own = batchgen_cli("run", str(manifest), "--output", str(tmp_path / "o"), "--dry-run")
    assert "credits: 6" in own.stdout, own.stdout + own.stderr
    both = batchgen_cli("run", str(manifest), "--output", str(tmp_path / "o"), "--dry-run", "--price", "high=2")
    assert "credits: 3" in both.stdout, both.stdout + both.stderr


def _plans(manifest, **lookups):
    from batchgen.manifest import iter_jobs, read_manifest
    from batchgen.planning import count_requests, plan, plan_manifest

    prices = Prices({"high": 2})
    plain = plan(iter_jobs(manifest), prices=prices, **lookups)
    return plain, plan_manifest(read_manifest(manifest), prices=prices, **lookups), count_requests, prices


def test_the_fast_plan_gives_the_plain_plans_answer(tmp_path, run):
    """The plan read from a CSV's columns equals the one built from specs: repeats within and across chunks
    (some chunks read column by column, one row by row), known jobs and reusable images included."""
    from batchgen.ledger.reuse import ReuseIndex
    from batchgen.manifest import read_manifest
    from batchgen.manifest.csv_reader import CHUNK_ROWS

    rows = []
    for i in range(3 * CHUNK_ROWS):
        prompt = f"item {i % 1500}"  # every prompt made twice or more, across chunks too
        rows.append(f"job-{i:05d},{prompt},{('high', 'medium', '')[i % 3]},{('1:1', '')[i % 2]}")
    rows[CHUNK_ROWS + 5] = "short-row,item 7"  # fewer cells: that chunk is read row by row
    manifest = tmp_path / "repeats.csv"
    manifest.write_text("id,prompt,quality,aspect_ratio\n" + "\n".join(rows) + "\n", encoding="utf-8")
    nothing_known = {"ledger_path": None, "reuse_index": None}
    plain, fast, count_requests, prices = _plans(manifest, **nothing_known)
    assert fast == plain == count_requests(read_manifest(manifest).requests(), prices)
    assert plain.duplicates > 0 and plain.runs > 0 and len(plain.lines) == 6

    sim = Simulator(SimConfig(latency=0.01))
    done = tmp_path / "done.csv"
    done.write_text("id,prompt,quality,aspect_ratio\n" + "\n".join(rows[:40]) + "\n", encoding="utf-8")
    assert run(done, sim).exit_code == ExitCode.OK  # the ledger knows these jobs
    other = tmp_path / "other.csv"
    other.write_text("id,prompt,quality,aspect_ratio\n" + "\n".join(rows[100:140]) + "\n", encoding="utf-8")
    assert run(other, sim, output_dir=tmp_path / "other-out").exit_code == ExitCode.OK  # reusable images
    index = ReuseIndex(default_index_path(), BASE_URL)
    try:
        known = {"ledger_path": tmp_path / "out" / "batchgen.sqlite", "reuse_index": index}
        plain, fast, _, _ = _plans(manifest, **known)
    finally:
        index.close()
    assert fast == plain and plain.done == 40 and plain.reusable > 0


def test_distinct_requests_are_counted_exactly_when_split_into_parts(monkeypatch):
    """Counting distinct fingerprints a part at a time (to bound memory) gives the count of one big set."""
    from array import array

    from batchgen import planning

    monkeypatch.setattr(planning, "DISTINCT_AT_ONCE", 4)
    for n in (3, 8, 9, 17, 40):
        table = array("q", [hash(f"request {i % 7}") for i in range(n)] + [-5, 5, 0, -(2**63)])
        assert planning._distinct(table) == len(set(table))


def test_the_fast_plan_still_names_a_repeated_id_and_reads_a_csv_without_ids(tmp_path):
    """Read for the plan, a CSV's id repeated chunks later is a problem naming both rows; ids left out are fine."""
    from batchgen.errors import ManifestError
    from batchgen.manifest import read_manifest
    from batchgen.manifest.csv_reader import CHUNK_ROWS
    from batchgen.planning import plan_manifest

    rows = [f"job-{i:05d},photo {i}" for i in range(2 * CHUNK_ROWS)] + ["JOB-00003,another photo"]
    repeated = tmp_path / "repeated.csv"
    repeated.write_text("id,prompt\n" + "\n".join(rows) + "\n", encoding="utf-8")
    with pytest.raises(ManifestError) as caught:
        plan_manifest(read_manifest(repeated), ledger_path=None, reuse_index=None, prices=Prices())
    assert [str(p) for p in caught.value.problems] == [
        f"{repeated}, row {2 * CHUNK_ROWS + 2}, field 'id': id 'JOB-00003' differs only in letter case from "
        "'job-00003' on row 5; ids become file names, and some file systems ignore case"
    ]
    no_ids = tmp_path / "no-ids.csv"
    no_ids.write_text("prompt\n" + "".join(f"photo {i % 100}\n" for i in range(CHUNK_ROWS + 1)), encoding="utf-8")
    result = plan_manifest(read_manifest(no_ids), ledger_path=None, reuse_index=None, prices=Prices())
    assert (result.jobs, result.runs, result.duplicates) == (CHUNK_ROWS + 1, 100, CHUNK_ROWS + 1 - 100)
