"""What a demanding newcomer and an independent server found: each test is one finding, against the real runner."""

from __future__ import annotations

import hashlib

import anyio
import pytest

from batchgen import BatchConfig, ExitCode, run_batch_async
from batchgen.simulator import SimConfig, Simulator

from .conftest import API_KEY, BASE_URL


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.anyio
async def test_two_creates_answered_with_one_run_id_both_finish(write_manifest, tmp_path):
    """A server that deduplicates identical requests answers two creates (--no-reuse) with one run id: both jobs
    get the run's image, the batch ends instead of waiting forever on the second, and nothing is paid twice."""
    jobs = [{"id": "first", "prompt": "the same lamp"}, {"id": "second", "prompt": "the same lamp"}]
    sim = Simulator(SimConfig(latency=0.05, dedupe_creates=True))
    config = BatchConfig(
        write_manifest(jobs=jobs), output_dir=tmp_path / "out", api_key=API_KEY, base_url=BASE_URL, progress="none",
        backoff_base=0.01, transport=sim.transport(), reuse=False,
    )  # fmt: skip
    with anyio.fail_after(30):
        result = await run_batch_async(config)
    assert result.exit_code == ExitCode.OK, result.message
    stats = sim.stats()
    assert stats["creates"] == 1 and stats["deduplicated"] == 1, stats
    (made,) = stats["runs"]
    (sha,) = {f["sha256"] for f in made["files"]}
    assert _sha256(tmp_path / "out" / "first.png") == sha == _sha256(tmp_path / "out" / "second.png")
