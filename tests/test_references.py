"""Reference images asked once before their jobs are paid for: a dead link fails its jobs unpaid."""

from __future__ import annotations

from batchgen import ExitCode
from batchgen.ledger import Ledger
from batchgen.simulator import SimConfig, Simulator

from .conftest import batchgen_cli


def jobs_with(urls: dict[str, str]) -> list[dict[str, object]]:
    return [{"id": job_id, "prompt": f"photo of {job_id}", "image_urls": [url]} for job_id, url in urls.items()]


def test_a_dead_reference_fails_its_jobs_unpaid_and_the_rest_go_on(write_manifest, run, tmp_path):
    """Jobs naming a 404 reference fail (kind 'reference') without a create; a shared URL is asked once."""
    sim = Simulator(SimConfig(latency=0.02, dead_links=("gone",)))
    urls = {
        "a": "https://shop.example/img/gone.jpg",
        "b": "https://shop.example/img/gone.jpg",
        "c": "https://shop.example/img/here.jpg",
        "d": "https://shop.example/img/here.jpg",
    }
    result = run(write_manifest(jobs=jobs_with(urls)), sim)
    assert result.exit_code == ExitCode.JOBS_FAILED
    assert sim.stats()["creates"] == 2 and sim.stats()["reference_checks"] == 2
    assert any("reference image URL did not answer" in note for note in result.notes)
    with Ledger(tmp_path / "out" / "batchgen.sqlite", readonly=True) as ledger:
        failed = {r["job_id"]: r for r in ledger.iter_export() if r["state"] == "failed"}
    assert set(failed) == {"a", "b"}
    assert all(r["error_kind"] == "reference" and "gone.jpg" in r["error"] for r in failed.values())


def test_skip_url_check_sends_the_job_as_it_is(write_manifest, run):
    """--skip-url-check asks nothing: the job with the dead link is created (and the API decides)."""
    sim = Simulator(SimConfig(latency=0.02, dead_links=("gone",)))
    result = run(write_manifest(jobs=jobs_with({"a": "https://shop.example/gone.jpg"})), sim, check_references=False)
    assert result.exit_code == ExitCode.OK
    assert sim.stats()["reference_checks"] == 0 and sim.stats()["creates"] == 1


def test_a_link_that_cannot_be_told_does_not_block_its_job(write_manifest, run, serve):
    """A reference this machine cannot reach (a closed port) is not called dead: the API may reach it."""
    server = serve()
    manifest = write_manifest(jobs=jobs_with({"a": "http://127.0.0.1:9/ref.jpg"}))
    result = run(manifest, transport=None, base_url=server.base_url)
    assert result.exit_code == ExitCode.OK
    assert server.simulator.stats()["creates"] == 1


def test_validate_check_urls_says_which_links_it_could_not_tell(write_manifest, serve):
    """A reference URL nobody answers at (refused connection) is no dead link, since the API may reach it;
    validate --check-urls says how many it could not check, and the manifest stays valid."""
    server = serve()
    host = server.base_url.removesuffix("/api/v1")
    urls = {"a": "http://127.0.0.1:9/lamp.png", "b": f"{host}/img/here.png"}
    result = batchgen_cli("validate", str(write_manifest(jobs=jobs_with(urls))), "--check-urls")
    assert result.returncode == 0, result.stderr
    assert "1 reference image URL could not be checked from here" in result.stderr
    assert "2 jobs, valid" in result.stdout


def test_validate_check_urls_lists_dead_links_with_their_jobs(write_manifest, serve):
    """validate --check-urls asks each URL once and names the jobs using a dead one; exit 2."""
    server = serve(dead_links=("gone",))
    host = server.base_url.removesuffix("/api/v1")
    urls = {"a": f"{host}/img/gone.png", "b": f"{host}/img/gone.png", "c": f"{host}/img/here.png"}
    result = batchgen_cli("validate", str(write_manifest(jobs=jobs_with(urls))), "--check-urls")
    assert result.returncode == 2, result.stderr
    assert "gone.png (HTTP 404" in result.stderr and "used by a, b" in result.stderr
    assert "here.png" not in result.stderr
    assert "valid" not in result.stdout  # a manifest whose jobs would fail is not called valid
    assert "`run` would fail its jobs without paying for them; fix that URL" in result.stderr
    assert server.simulator.stats()["reference_checks"] == 2
