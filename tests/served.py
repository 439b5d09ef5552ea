"""Saved files against the server's own record of what it sent: the check every test that saves files makes.

The simulator records, per run, the sha256 of every file it served whole
(``stats()["runs"][i]["files"]``). A saved image is right only if its bytes hash to what
the server sent for *that job's run* and *that output number*; and the output folder holds
no image that the ledger does not list.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import anyio

from batchgen.api import RunbaseClient
from batchgen.ledger import Ledger
from batchgen.runner import SIMULATED_BASE_URL
from batchgen.simulator import SimConfig, Simulator

# the ledger and its side files, the folder's own state, and the run's summary
STATE_NAMES = ("batchgen.sqlite", ".batchgen", "last-run.json")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def served_files(stats: dict[str, Any]) -> dict[str, dict[int, str]]:
    """run id -> {output number: sha256 of the file the server sent whole}."""
    return {run["id"]: {f["n"]: f["sha256"] for f in run["files"]} for run in stats["runs"]}


def image_files(out: Path) -> set[str]:
    """Every file in the output folder that is not batchgen's own state, relative to it."""
    found = set()
    for path in out.rglob("*"):
        relative = path.relative_to(out)
        if path.is_file() and not any(part.startswith(STATE_NAMES) for part in relative.parts):
            found.add(relative.as_posix())
    return found


def assert_saved_as_served(
    out: Path, stats: dict[str, Any], *, succeeded: int, ledger: Path | None = None
) -> list[dict[str, Any]]:
    """Exactly ``succeeded`` jobs succeeded; each of their files hashes to what the server sent for that
    job's run and output number, as the ledger also says; the folder holds no other image. Returns the
    ledger's export records."""
    with Ledger(ledger or out / "batchgen.sqlite") as opened:
        records = list(opened.iter_export())
    served = served_files(stats)
    done = [r for r in records if r["state"] == "succeeded"]
    assert len(done) == succeeded, [(r["job_id"], r["state"], r["error"]) for r in records]
    listed = set()
    for record in done:
        run = served.get(record["run_id"])
        assert run is not None, f"{record['job_id']}: run {record['run_id']} was never made by the server"
        assert record["outputs"], f"{record['job_id']} succeeded without a file"
        assert sorted(o["n"] for o in record["outputs"]) == sorted(run), (record["job_id"], record["outputs"], run)
        for output in record["outputs"]:
            path = out / output["path"]  # relative to the folder (or absolute: then the same path)
            assert sha256(path) == output["sha256"] == run[output["n"]], (record["job_id"], output)
            listed.add(path.relative_to(out).as_posix())
    assert image_files(out) == listed
    return records


def simulated_stats(run_ids: list[str]) -> dict[str, Any]:
    """What ``--simulate`` served for these runs. Its simulator is gone with its process, but any
    simulator with the same (default) seed answers for its runs: this one fetches each run's files
    and returns its stats, to compare saved files with."""
    witness = Simulator(SimConfig())

    async def fetch_each() -> None:
        async with RunbaseClient(SIMULATED_BASE_URL, "any", transport=witness.transport()) as client:
            for run_id in run_ids:
                info = await client.get_run(run_id)
                assert info.status == "succeeded" and info.urls, (run_id, info)
                for url in info.urls:
                    await client.download(url, io.BytesIO())

    anyio.run(fetch_each)
    return witness.stats()
