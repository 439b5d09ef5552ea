"""Property-based: generated manifests and server behaviours keep batchgen's promises."""

from __future__ import annotations

import csv
import io
import json
import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, event, given, settings, strategies as st

from batchgen import ExitCode, ManifestError, run_batch
from batchgen.manifest import load_jobs
from batchgen.outputs import output_path
from batchgen.simulator import FAULTS, SimConfig, Simulator

from .conftest import API_KEY, BASE_URL
from .served import assert_saved_as_served

FIELD_VALUES = {
    "id": st.one_of(st.text(max_size=20), st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,15}", fullmatch=True)),
    "prompt": st.one_of(st.text(max_size=40), st.integers(), st.none()),
    "aspect_ratio": st.sampled_from(["1:1", "3:2", "2:3", "4:3", "", "1x1"]),
    "quality": st.sampled_from(["medium", "high", "High", "low"]),
    "image_urls": st.one_of(
        st.lists(st.sampled_from(["https://e.com/a.png", "http://x.org/b", "ftp://x/c", "not a url"]), max_size=3),
        st.text(max_size=10),
    ),
    "aspect-ratio": st.just("1:1"),
    "metadata": st.dictionaries(st.text(min_size=1, max_size=5), st.text(max_size=5), max_size=2),
}
VALID_VALUES = {
    "id": st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,15}", fullmatch=True),
    "prompt": st.text(st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]), min_size=1, max_size=40).filter(
        str.strip
    ),
    "aspect_ratio": st.sampled_from(["1:1", "3:2", "2:3"]),
    "quality": st.sampled_from(["medium", "high"]),
    "image_urls": st.lists(st.sampled_from(["https://e.com/a.png", "http://x.org/b"]), min_size=1, max_size=3),
    "metadata": st.dictionaries(st.from_regex(r"[a-z]{1,5}", fullmatch=True), st.text(max_size=5), max_size=2),
}


def jobs_from(values: dict) -> st.SearchStrategy:
    """Jobs with a set of the optional fields (each drawn from ``values``) and always a prompt."""
    optional = sorted(key for key in values if key != "prompt")
    return st.sets(st.sampled_from(optional)).flatmap(
        lambda keys: st.fixed_dictionaries({k: values[k] for k in keys} | {"prompt": values["prompt"]})
    )


# Half the manifests are made of well-formed jobs (they may still repeat an id), half of anything.
job_dicts = st.one_of(st.lists(jobs_from(VALID_VALUES), max_size=8), st.lists(jobs_from(FIELD_VALUES), max_size=8))


def write_as(fmt: str, jobs: list[dict], folder: Path) -> Path:
    path = folder / f"manifest.{fmt}"
    if fmt == "yaml":
        path.write_text(yaml.safe_dump({"jobs": jobs}, allow_unicode=True), encoding="utf-8")
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(j) + "\n" for j in jobs), encoding="utf-8")
    else:
        columns = sorted({k for j in jobs for k in j if k != "metadata"} | {"prompt"})
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(columns)
        for job in jobs:
            value = {k: "|".join(v) if isinstance(v, list) else v for k, v in job.items()}
            writer.writerow(["" if value.get(c) is None else value.get(c) for c in columns])
        path.write_text(buffer.getvalue(), encoding="utf-8")
    return path


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(jobs=job_dicts, fmt=st.sampled_from(["yaml", "jsonl", "csv"]))
def test_any_manifest_gives_safe_stable_jobs_or_located_problems(jobs, fmt):
    """Parsing never crashes: valid manifests give unique safe ids, the same each time; invalid ones say where."""
    with tempfile.TemporaryDirectory() as folder:
        path = write_as(fmt, jobs, Path(folder))
        for field in sorted({key for job in jobs for key in job}):
            event(f"a job has {field!r}")  # the statistics show every field strategy being used
        try:
            first = load_jobs(path)
        except ManifestError as exc:
            event(f"{fmt}: refused")
            assert exc.problems
            for problem in exc.problems:
                assert problem.path == str(path) and problem.message
                assert str(path) in str(problem)
            return
        event(f"{fmt}: accepted, {min(len(first), 3)}{'+' if len(first) >= 3 else ''} job(s)")
        second = load_jobs(path)
        assert [j.job_id for j in first] == [j.job_id for j in second]
        assert len({j.job_id.lower() for j in first}) == len(first)
        for job in first:
            assert output_path(Path(folder), job.job_id + ".png").parent == Path(folder)
            assert job.prompt.strip()


fault_plans = st.dictionaries(st.sampled_from([f for f in FAULTS if f != "slow"]), st.floats(0.0, 0.15), max_size=5)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    faults=fault_plans,
    failure_rate=st.floats(0.0, 0.4),
    credits=st.one_of(st.none(), st.integers(0, 12)),
    create_rate=st.one_of(st.none(), st.floats(20.0, 200.0)),
    seed=st.integers(0, 1000),
    jobs=st.integers(1, 12),
    concurrency=st.integers(1, 6),
)
def test_whatever_the_server_does_no_job_is_lost_and_no_run_is_paid_twice(
    faults, failure_rate, credits, create_rate, seed, jobs, concurrency
):
    """Every job ends succeeded with a served file, failed with a reason, or pending after a stop;
    no job gets more runs than its attempts plus the creates whose answers were lost."""
    config = SimConfig(
        latency=0.02, failure_rate=failure_rate, credits=credits, create_rate=create_rate, faults=faults, seed=seed
    )
    sim = Simulator(config)
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "out"
        manifest = Path(folder) / "m.yaml"
        manifest.write_text(
            yaml.safe_dump({"jobs": [{"id": f"j{i}", "prompt": f"p {i}"} for i in range(jobs)]}), encoding="utf-8"
        )
        result = run_batch(
            manifest,
            output_dir=out,
            transport=sim.transport(),
            api_key=API_KEY,
            base_url=BASE_URL,
            progress="none",
            concurrency=concurrency,
            backoff_base=0.005,
            max_attempts=3,
        )
        assert result.exit_code in (ExitCode.OK, ExitCode.JOBS_FAILED, ExitCode.ACCOUNT), result.message
        stats = sim.stats()
        for name in sorted(stats["faults"]):
            event(f"fault injected: {name}")  # the statistics show which faults the examples met
        event(f"exit {result.exit_code}")
        succeeded = result.counts["succeeded"]
        # Each succeeded job's file is what the server sent for its own run; nothing else is in the folder.
        records = assert_saved_as_served(out, stats, succeeded=succeeded)
        assert len(records) == jobs
        for record in records:
            if record["state"] == "succeeded":
                assert len(record["outputs"]) == 1
            elif record["state"] == "failed":
                assert record["error"]
            else:
                assert result.exit_code == ExitCode.ACCOUNT
        assert not list(out.glob("*.part"))
        per_prompt: dict[str, int] = {}
        for run in stats["runs"]:
            per_prompt[run["prompt"]] = per_prompt.get(run["prompt"], 0) + 1
        for record in records:
            made = per_prompt.get(record["input"]["prompt"], 0)
            assert made <= record["attempts"], record
        assert stats["auth_on_files"] == 0
