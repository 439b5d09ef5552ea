"""``batchgen retry`` through the real CLI against the simulator over sockets: which jobs it marks,
that earlier images are kept byte for byte, and that the next ``run`` pays for exactly the marked jobs."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

from batchgen.ledger import Ledger
from batchgen.simulator import SimulatorServer

from .conftest import batchgen_cli, env_for, killed_at_end, start_cli, wait_while_running

RUNS_PER_JOB = 1


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_cli(manifest: Path, out: Path, server: SimulatorServer, *extra: str) -> subprocess.CompletedProcess[str]:
    return batchgen_cli("run", str(manifest), "--output", str(out), "--no-progress", *extra, env=env_for(server))


def write_jobs(path: Path, prompts: dict[str, str]) -> Path:
    lines = ["jobs:"] + [f"  - id: {job_id}\n    prompt: {prompt}" for job_id, prompt in prompts.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def server_files(server: SimulatorServer) -> dict[str, list[str]]:
    """prompt -> sha256 of every file the server made for it, in creation order."""
    made: dict[str, list[str]] = {}
    for run in server.simulator.stats()["runs"]:
        made.setdefault(run["prompt"], []).extend(f["sha256"] for f in run["files"])
    return made


def prompts_created(server: SimulatorServer) -> list[str]:
    return sorted(run["prompt"] for run in server.simulator.stats()["runs"] if run["created_here"])


def ledger_rows(out: Path) -> dict[str, Any]:
    with Ledger(out / "batchgen.sqlite", readonly=True) as ledger:
        return {
            "counts": ledger.counts(),
            "versions": {job: ledger.versions(job) for job in ("a", "b", "c", "d", "e")},
            "outputs": {o["job_id"]: o for o in ledger.outputs_of(["a", "b", "c", "d", "e"])},
        }


PROMPTS = {job: f"catalogue photo of item {job}" for job in ("a", "b", "c", "d", "e")}


def test_retry_ids_keeps_earlier_images_and_the_next_run_pays_only_them(tmp_path, serve):
    """retry --ids moves the jobs' images under .batchgen/versions/ byte for byte, and the next run creates
    exactly one new run for each marked job; both versions survive."""
    server = serve()
    manifest, out = write_jobs(tmp_path / "m.yaml", PROMPTS), tmp_path / "out"
    assert run_cli(manifest, out, server).returncode == 0
    first = {job: sha256(out / f"{job}.png") for job in PROMPTS}
    made = server_files(server)
    assert all(first[job] == made[PROMPTS[job]][0] for job in PROMPTS)

    marked = batchgen_cli("retry", "--output", str(out), "--ids", "b,d")
    assert marked.returncode == 0, marked.stderr
    assert "marked 2" in marked.stdout
    assert f"batchgen run {manifest}" in marked.stdout  # the exact command to run next
    assert not (out / "b.png").exists() and not (out / "d.png").exists()
    rows = ledger_rows(out)
    assert rows["counts"] == {"pending": 2, "running": 0, "succeeded": 3, "failed": 0}
    for job in ("b", "d"):
        (version,) = rows["versions"][job]
        kept = out / version["path"]
        assert version["path"].startswith(f".batchgen/versions/{job}/")
        assert sha256(kept) == version["sha256"] == first[job]  # the earlier image, intact
        assert job not in rows["outputs"]  # the ledger points at no file until the new run saves one

    again = run_cli(manifest, out, server)
    assert again.returncode == 0, again.stderr
    assert prompts_created(server) == sorted([*PROMPTS.values(), PROMPTS["b"], PROMPTS["d"]])
    made = server_files(server)
    for job in PROMPTS:
        now = sha256(out / f"{job}.png")
        assert now == made[PROMPTS[job]][-1]  # the newest run's image is the one in place
        if job in ("b", "d"):
            assert now != first[job]
            assert sha256(out / ledger_rows(out)["versions"][job][0]["path"]) == first[job]
        else:
            assert now == first[job]


def test_retry_failed_by_kind_leaves_rejections_alone(tmp_path, serve):
    """retry --failed --error-kind 'run failed' marks only the runs that failed; the jobs the API refused
    (content policy) stay failed, and the next run creates runs for exactly the marked ones."""
    failing = serve(failure_rate=1.0, refuse_prompts_containing="forbidden")
    prompts = {"a": "a lamp", "b": "a forbidden lamp", "c": "a chair", "d": "a forbidden chair"}
    manifest, out = write_jobs(tmp_path / "m.yaml", prompts), tmp_path / "out"
    first = run_cli(manifest, out, failing, "--max-attempts", "1")
    assert first.returncode == 1, first.stderr

    unknown_kind = batchgen_cli("retry", "--output", str(out), "--failed", "--error-kind", "gremlins")
    assert unknown_kind.returncode == 2 and "unknown error kind 'gremlins'" in unknown_kind.stderr
    wrong_use = batchgen_cli("retry", "--output", str(out), "--ids", "a", "--error-kind", "download")
    assert wrong_use.returncode == 2 and "--error-kind" in wrong_use.stderr

    marked = batchgen_cli("retry", "--output", str(out), "--failed", "--error-kind", "run failed")
    assert marked.returncode == 0, marked.stderr
    assert "marked 2" in marked.stdout and "a, c" in marked.stdout

    working = serve(refuse_prompts_containing="forbidden")
    again = run_cli(manifest, out, working)
    assert again.returncode == 1, again.stderr  # the two rejections are still failed
    assert prompts_created(working) == ["a chair", "a lamp"]
    assert working.simulator.stats()["bad_requests"] == 0  # nothing refused was sent again
    status = json.loads(batchgen_cli("status", "--output", str(out), "--json").stdout)
    assert status["jobs"] == {"pending": 0, "running": 0, "succeeded": 2, "failed": 2}
    assert status["failed_by_kind"] == {"rejected": 2}

    bad_request = batchgen_cli("retry", "--output", str(out), "--failed", "--error-kind", "bad request", "--dry-run")
    assert bad_request.returncode == 0 and "would mark 2" in bad_request.stdout and "b, d" in bad_request.stdout


def test_retry_missing_makes_deleted_images_again(tmp_path, serve):
    """retry --missing marks the jobs whose image was deleted from the folder, and only those are paid for again."""
    server = serve()
    manifest, out = write_jobs(tmp_path / "m.yaml", PROMPTS), tmp_path / "out"
    assert run_cli(manifest, out, server).returncode == 0
    (out / "c.png").unlink()

    nothing_kept = batchgen_cli("retry", "--output", str(out), "--missing")
    assert nothing_kept.returncode == 0, nothing_kept.stderr
    assert "marked 1" in nothing_kept.stdout and ": c" in nothing_kept.stdout
    assert ledger_rows(out)["versions"]["c"] == []  # nothing was there to keep

    assert run_cli(manifest, out, server).returncode == 0
    assert prompts_created(server) == sorted([*PROMPTS.values(), PROMPTS["c"]])
    assert sha256(out / "c.png") == server_files(server)[PROMPTS["c"]][-1]


def test_retry_ids_from_file_and_usage_errors_change_nothing(tmp_path, serve):
    """--ids-from reads ids one a line (comments allowed); unknown ids or an empty list exit 2 and change nothing;
    a folder where nothing ran exits 5."""
    server = serve()
    manifest, out = write_jobs(tmp_path / "m.yaml", PROMPTS), tmp_path / "out"
    assert run_cli(manifest, out, server).returncode == 0
    before = {job: sha256(out / f"{job}.png") for job in PROMPTS}

    unknown = batchgen_cli("retry", "--output", str(out), "--ids", "a,zzz,yyy")
    assert unknown.returncode == 2
    assert (
        "2 of the 3 ids given are not jobs" in unknown.stderr
        and "zzz, yyy" in unknown.stderr
        and "nothing was marked" in unknown.stderr
    )
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing here\n\n", encoding="utf-8")
    assert batchgen_cli("retry", "--output", str(out), "--ids-from", str(empty)).returncode == 2
    assert batchgen_cli("retry", "--output", str(out), "--ids-from", str(tmp_path / "nope.txt")).returncode == 2
    nowhere = batchgen_cli("retry", "--output", str(tmp_path / "never-ran"), "--failed")
    assert nowhere.returncode == 5 and "no ledger" in nowhere.stderr
    assert not (tmp_path / "never-ran").exists()
    assert {job: sha256(out / f"{job}.png") for job in PROMPTS} == before
    assert ledger_rows(out)["counts"]["succeeded"] == len(PROMPTS)

    ids = tmp_path / "ids.txt"
    ids.write_text("# from the gallery\na\n\ne  # the blue one\n", encoding="utf-8")
    marked = batchgen_cli("retry", "--output", str(out), "--ids-from", str(ids))
    assert marked.returncode == 0 and "marked 2" in marked.stdout
    assert ledger_rows(out)["counts"]["pending"] == 2


def test_retry_while_a_run_holds_the_folder_exits_5(tmp_path, serve):
    """retry while a run works on the folder exits 5 at once and changes nothing; the run ends normally."""
    server = serve(latency=3.0)
    manifest, out = write_jobs(tmp_path / "m.yaml", PROMPTS), tmp_path / "out"
    running = start_cli("run", str(manifest), "--output", str(out), "--no-progress", env=env_for(server))
    with killed_at_end(running):
        wait_while_running(running, lambda: server.simulator.stats()["creates"] > 0, 30, "the run's first create")
        busy = batchgen_cli("retry", "--output", str(out), "--ids", "a", timeout=20)
        assert running.poll() is None  # retry did not wait for the run
        _, err = running.communicate(timeout=60)
    assert busy.returncode == 5, busy.stderr
    assert "another batchgen run" in busy.stderr
    assert running.returncode == 0, err
    assert ledger_rows(out)["counts"]["succeeded"] == len(PROMPTS)


def test_a_retried_job_is_paid_for_even_when_an_identical_image_is_at_hand(tmp_path, serve):
    """A second folder made from the same manifest got its images by reuse; a job retried there gets a new
    run of its own, not the identical request's old image again."""
    server = serve()
    manifest = write_jobs(tmp_path / "m.yaml", PROMPTS)
    assert run_cli(manifest, tmp_path / "first", server).returncode == 0
    second = tmp_path / "second"
    reused = run_cli(manifest, second, server)
    assert reused.returncode == 0 and "5 reused" in reused.stderr
    assert len(prompts_created(server)) == len(PROMPTS)
    old = sha256(second / "a.png")

    assert batchgen_cli("retry", "--output", str(second), "--ids", "a").returncode == 0
    again = run_cli(manifest, second, server)
    assert again.returncode == 0, again.stderr
    assert prompts_created(server) == sorted([*PROMPTS.values(), PROMPTS["a"]])
    assert sha256(second / "a.png") == server_files(server)[PROMPTS["a"]][-1] != old
    assert sha256(tmp_path / "first" / "a.png") == old  # the other folder's image is untouched


def test_retry_never_overwrites_what_is_already_kept(tmp_path, serve):
    """A version place already holding the same bytes (a retry stopped before its commit) is taken as kept;
    one holding other bytes is left alone and the image goes to name.v2.ext."""
    server = serve()
    manifest, out = write_jobs(tmp_path / "m.yaml", PROMPTS), tmp_path / "out"
    assert run_cli(manifest, out, server).returncode == 0
    outputs = ledger_rows(out)["outputs"]
    images = {job: (out / f"{job}.png").read_bytes() for job in ("a", "b")}
    same = out / ".batchgen" / "versions" / "a" / str(outputs["a"]["attempt_id"]) / "a.png"
    same.parent.mkdir(parents=True)
    same.write_bytes(images["a"])
    other = out / ".batchgen" / "versions" / "b" / str(outputs["b"]["attempt_id"]) / "b.png"
    other.parent.mkdir(parents=True)
    other.write_bytes(b"not the image")

    assert batchgen_cli("retry", "--output", str(out), "--ids", "a,b").returncode == 0
    versions = ledger_rows(out)["versions"]
    assert [v["path"] for v in versions["a"]] == [same.relative_to(out).as_posix()]
    assert same.read_bytes() == images["a"] and not (out / "a.png").exists()
    (kept,) = versions["b"]
    assert kept["path"].endswith("/b.v2.png") and (out / kept["path"]).read_bytes() == images["b"]
    assert other.read_bytes() == b"not the image"
