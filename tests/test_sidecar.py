"""--sidecar: a JSON file next to each image saying what it is, for tools that pick images up from the folder."""

from __future__ import annotations

import hashlib
import json

from batchgen import ExitCode
from batchgen.simulator import SimConfig, Simulator


def test_each_image_gets_a_sidecar_naming_its_job_run_and_bytes(write_manifest, run, tmp_path):
    """lamp.png and lamp~2.png get lamp.json and lamp~2.json with the job, prompt, options, run id and metadata."""
    sim = Simulator(SimConfig(latency=0.02, outputs_per_run=2))
    jobs = [{"id": "lamp", "prompt": "a lamp", "quality": "high", "metadata": {"sku": "L-1"}}]
    assert run(write_manifest(jobs=jobs), sim, sidecar=True).exit_code == ExitCode.OK
    out = tmp_path / "out"
    (server_run,) = sim.stats()["runs"]
    for n, image in enumerate(["lamp.png", "lamp~2.png"]):
        record = json.loads((out / image.replace(".png", ".json")).read_text(encoding="utf-8"))
        assert record["job_id"] == "lamp" and record["prompt"] == "a lamp" and record["input"]["quality"] == "high"
        assert record["run_id"] == server_run["id"] and record["metadata"] == {"sku": "L-1"} and record["n"] == n
        assert record["sha256"] == hashlib.sha256((out / image).read_bytes()).hexdigest()
        assert record["sha256"] == server_run["files"][n]["sha256"]


def test_a_reused_image_gets_a_sidecar_saying_so(write_manifest, run, tmp_path):
    """A job given an identical request's image has a sidecar naming the run that made it, source 'reused'."""
    sim = Simulator(SimConfig(latency=0.02))
    jobs = [{"id": "a", "prompt": "same"}, {"id": "b", "prompt": "same"}]
    assert run(write_manifest(jobs=jobs), sim, sidecar=True).exit_code == ExitCode.OK
    a, b = (json.loads((tmp_path / "out" / f"{j}.json").read_text(encoding="utf-8")) for j in "ab")
    assert {a["source"], b["source"]} == {"run", "reused"}
    assert a["run_id"] == b["run_id"] == sim.stats()["runs"][0]["id"]
