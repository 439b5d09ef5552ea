"""What a newcomer and an independent server found in the fifth round of trials: each test is one finding."""

from __future__ import annotations

import json
import signal
import textwrap

from batchgen import ExitCode
from batchgen.lastrun import LAST_RUN_NAME
from batchgen.manifest.problems import MAX_PROBLEMS
from batchgen.simulator import SimConfig, Simulator

from .conftest import API_KEY, BASE_URL, batchgen_cli, env_for, export_records, killed_at_end, start_cli, wait_until
from .served import assert_saved_as_served
from .test_newcomer import catalogue_with

# Loaded by the CLI's interpreter (PYTHONPATH): the first import of batchgen.runner waits, as on a slow disk or
# a cold cache, after writing HOLD_MARK, until HOLD_RELEASE exists, so that a signal lands while it loads.
SLOW_IMPORT = """\
import os, sys, time

class Hold:
    def find_spec(self, name, path=None, target=None):
        if name == "batchgen.runner":
            sys.meta_path.remove(self)
            open(os.environ["HOLD_MARK"], "w").close()
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not os.path.exists(os.environ["HOLD_RELEASE"]):
                time.sleep(0.01)
        return None

sys.meta_path.insert(0, Hold())
"""


def test_ctrl_c_while_the_runner_loads_says_how_to_go_on(tmp_path):
    """SIGINT after 'running ...' is printed but before the runner handles signals (its modules, httpx and
    anyio, still loading: half a second on a busy machine) ends like every other interruption: exit 130 with
    'run the same command again', no traceback, and last-run.json says so for a monitor; it said only
    'batchgen: interrupted' and left last-run.json alone."""
    hook, mark, release, out = tmp_path / "hook", tmp_path / "held", tmp_path / "release", tmp_path / "out"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(textwrap.dedent(SLOW_IMPORT), encoding="utf-8")
    manifest = tmp_path / "m.csv"
    manifest.write_text("id,prompt\nlamp-1,a lamp\n", encoding="utf-8")
    out.mkdir()
    env = {"PYTHONPATH": str(hook), "HOLD_MARK": str(mark), "HOLD_RELEASE": str(release)}
    args = ("run", str(manifest), "--simulate", "--output", str(out), "--no-progress")
    with killed_at_end(start_cli(*args, env=env)) as proc:
        wait_until(mark.exists, timeout=60, what="the runner's import")
        proc.send_signal(signal.SIGINT)
        release.touch()
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == ExitCode.INTERRUPTED, stderr
    assert "Traceback" not in stderr
    assert "run the same command again" in stderr.lower(), stderr
    assert json.loads((out / LAST_RUN_NAME).read_text(encoding="utf-8"))["exit_code"] == ExitCode.INTERRUPTED


def test_dry_run_says_which_runs_are_new_changed_or_made_again(write_manifest, tmp_path, run):
    """As the README promises, the plan tells runs for new jobs from those for jobs whose prompt changed and
    those made again (here marked by `retry`): it said only 'runs that would be created now: 3'."""
    jobs = [{"id": "lamp", "prompt": "a red lamp"}, {"id": "vase", "prompt": "a blue vase"}]
    assert run(write_manifest(jobs=[*jobs, {"id": "cup", "prompt": "a cup"}])).exit_code == ExitCode.OK
    out = str(tmp_path / "out")
    assert batchgen_cli("retry", "--output", out, "--ids", "lamp").returncode == ExitCode.OK
    jobs[1]["prompt"] = "a tall blue vase"
    manifest = write_manifest(jobs=[*jobs, {"id": "cup", "prompt": "a cup"}, {"id": "chair", "prompt": "a chair"}])
    plan = batchgen_cli("run", str(manifest), "--output", out, "--dry-run", "--base-url", BASE_URL)
    assert plan.returncode == ExitCode.OK, plan.stderr
    assert "1 already done" in plan.stdout
    expected = "runs that would be created now: 3 (1 new, 1 changed in the manifest, 1 retried or left unfinished)"
    assert expected in plan.stdout, plan.stdout


def test_retry_of_an_id_typed_in_another_case_or_as_its_file_names_the_id(tmp_path):
    """Ids are unique ignoring case and the folder shows them as files: `retry --ids THR-1005,out/mug-7~2.png`
    is still refused (exit 2, nothing marked) but ends 'did you mean thr-1005, mug-7?'; it gave no hint."""
    manifest, out = tmp_path / "m.yaml", tmp_path / "out"
    manifest.write_text(
        "jobs:\n  - {id: thr-1005, prompt: a throw}\n  - {id: mug-7, prompt: a mug}\n",
        encoding="utf-8",
    )
    assert batchgen_cli("run", str(manifest), "--simulate", "--output", str(out)).returncode == ExitCode.OK
    typed = batchgen_cli("retry", "--ids", "THR-1005,out/mug-7~2.png,nope", "--output", str(out))
    assert typed.returncode == ExitCode.USAGE, typed.stderr
    assert typed.stderr.rstrip().endswith("nothing was marked; did you mean thr-1005, mug-7?"), typed.stderr
    assert {record["state"] for record in export_records(out)} == {"succeeded"}  # nothing was marked


def test_a_key_echoed_by_the_api_reads_bearer_redacted_once_in_the_log(write_manifest, serve):
    """A 400 whose body echoes the request's headers is stored as 'authorization: Bearer [redacted]'; the log
    line printed it as 'authorization: [redacted] [redacted]' (and 'Bearer [redacted]]' before a space), its
    own second scrub taking the word 'Bearer', then '[redacted', for tokens. The line now says what the
    ledger says, and the key is in neither."""
    server = serve(faults={"echo_headers": 1.0}, refuse_prompts_containing="refuse")
    manifest = write_manifest(jobs=[{"id": "bad", "prompt": "refuse this"}])
    out = manifest.parent / "out"
    done = batchgen_cli("run", str(manifest), "--output", str(out), "--no-progress", env=env_for(server))
    assert done.returncode == ExitCode.JOBS_FAILED, done.stderr
    (error,) = [record["error"] for record in export_records(out)]
    assert "authorization: Bearer [redacted]" in error and API_KEY not in error + done.stderr
    (line,) = [line for line in done.stderr.splitlines() if "job bad failed for good" in line]
    assert line.endswith(error), line


def test_one_job_is_spoken_of_as_it_in_the_summary_status_and_retry(write_manifest, serve):
    """With one failed job the summary said 'retry --failed marks them', status '1 job was refused by the API
    for their input: change them', and retry of one id 'next, to make them (each a new, paid run)'."""
    server = serve(refuse_prompts_containing="refuse")
    manifest = write_manifest(jobs=[{"id": "bad", "prompt": "refuse this"}, {"id": "good", "prompt": "a lamp"}])
    out = str(manifest.parent / "out")
    done = batchgen_cli("run", str(manifest), "--output", out, "--no-progress", env=env_for(server))
    assert done.returncode == ExitCode.JOBS_FAILED, done.stderr
    assert "`batchgen retry --failed` marks it to be made again" in done.stderr, done.stderr
    status = batchgen_cli("status", "--output", out)
    assert "1 job was refused by the API for its input: change it in the manifest" in status.stdout, status.stdout
    retry = batchgen_cli("retry", "--output", out, "--ids", "good")
    assert "batchgen: next, to make it (a new, paid run): batchgen run" in retry.stdout, retry.stdout


def test_a_missing_column_counts_the_rows_it_fails_on_not_their_variants(tmp_path):
    """The README's catalogue (6 products, 2 aspect ratios each) with `{{ Nme }}`: 'row 2: ... did you mean
    'Name'?' then '... and the same on 5 more rows'; it said 11 more rows, counting each variant as a row."""
    manifest = catalogue_with(tmp_path, "{{ Name }}:", "{{ Nme }}:")
    checked = batchgen_cli("validate", str(manifest))
    assert checked.returncode == ExitCode.USAGE, checked.stderr
    assert "catalogue-products.csv row 2: 'Nme' is not a column" in checked.stderr, checked.stderr
    assert "field 'prompt': ... and the same on 5 more rows" in checked.stderr, checked.stderr


def test_one_kept_run_and_one_file_fetched_again_are_said_in_the_singular(write_manifest, run, tmp_path):
    """One job whose image the file host would not serve ended '1 job waits, their runs kept: the next run
    polls them and downloads their images'; one changed file was '1 changed file (e.g. lamp.png): 1 fetched
    again from their runs'. Both now speak of it and its run."""
    sim = Simulator(SimConfig(latency=0.02, faults={"file_unavailable": 1.0}))
    manifest = write_manifest(jobs=[{"id": "lamp", "prompt": "a lamp"}])
    kept = run(manifest, sim)
    assert kept.exit_code == ExitCode.UNAVAILABLE, kept.message
    assert "1 job waits, its run kept: the next run polls it and downloads its image without paying" in kept.message
    sim.config.faults = {}
    assert run(manifest, sim).exit_code == ExitCode.OK
    image = tmp_path / "out" / "lamp.png"
    image.write_bytes(image.read_bytes() + b"edited")
    again = run(manifest, sim)
    assert f"1 changed file in {tmp_path / 'out'} (lamp.png): 1 fetched again from its run" in again.notes, again.notes


def test_one_dead_reference_url_and_one_job_left_behind_are_said_in_the_singular(write_manifest, run, tmp_path):
    """One dead reference URL ended 'did not answer, so their jobs failed unpaid (e.g. URL: ...); fix them', and
    one job dropped from the manifest 'is not in m.yaml ...: their images stay there'."""
    sim = Simulator(SimConfig(latency=0.02, dead_links=("gone",)))
    url = "https://shop.example/img/gone.jpg"
    jobs = [{"id": "a", "prompt": "a lamp"}, {"id": "b", "prompt": "a mug", "image_urls": [url]}]
    first = run(write_manifest(jobs=jobs), sim)
    (note,) = [note for note in first.notes if "did not answer" in note]
    assert note.startswith(f"1 reference image URL did not answer, so its jobs failed unpaid ({url}: "), note
    assert note.endswith("; fix it and run `batchgen retry --failed --error-kind reference`"), note
    manifest = write_manifest(jobs=[{"id": "c", "prompt": "a chair"}])
    (note,) = [note for note in run(manifest, sim).notes if "is not in" in note]
    assert ": its images stay there, but status" in note, note


def test_validate_says_it_of_one_reference_url_it_could_not_check(write_manifest, tmp_path):
    """validate --check-urls with one unreachable reference said 'run will try them, as the API may reach
    them'."""
    manifest = write_manifest(jobs=[{"id": "a", "prompt": "a lamp", "image_urls": ["http://127.0.0.1:9/lamp.png"]}])
    checked = batchgen_cli("validate", str(manifest), "--check-urls")
    assert checked.returncode == ExitCode.OK, checked.stderr
    assert "run will try it, as the API may reach it" in checked.stderr, checked.stderr


def test_validate_counts_the_problems_there_are_not_the_lines_it_prints(write_manifest, tmp_path):
    """1,500 rows with a bad quality said '1001 problems' (1,000 listed, then '... and 500 more problems not
    listed' counted as one); the README's catalogue with two missing columns said '4 problems', counting each
    '... and the same on 5 more rows' as one. They are 1500 and 2."""
    many = tmp_path / "many.csv"
    many.write_text("id,prompt,quality\n" + "".join(f"j{i},p{i},best\n" for i in range(1500)), encoding="utf-8")
    listed = batchgen_cli("validate", str(many))
    assert listed.returncode == ExitCode.USAGE, listed.stderr
    assert f"... and {1500 - MAX_PROBLEMS} more problems not listed" in listed.stderr, listed.stderr[-500:]
    assert listed.stderr.rstrip().endswith(f"1500 problems in {many}; nothing was sent"), listed.stderr[-500:]
    manifest = catalogue_with(tmp_path, "{{ Name }}:", "{{ Nme }}:")
    manifest.write_text(manifest.read_text(encoding="utf-8").replace("Categories |", "Category |"), encoding="utf-8")
    two = batchgen_cli("validate", str(manifest))
    assert two.stderr.count("... and the same on 5 more rows") == 2, two.stderr
    assert two.stderr.rstrip().endswith(f"2 problems in {manifest}; nothing was sent"), two.stderr


def test_outputs_behind_the_key_on_the_apis_own_address_are_fetched_with_it(write_manifest, run, tmp_path):
    """An API that serves its outputs at its own address and answers 401 without the key (the API's rules let
    the key go to the API's own host): each output is asked again once with the key, and every image comes,
    byte for byte what the server sent. Found against an independent server: 6 runs bought for 2 jobs, then
    a stop blaming the file host."""
    sim = Simulator(SimConfig(latency=0.05, relative_output_urls=True, files_behind_key=True))
    result = run(write_manifest(3), sim)
    assert result.exit_code == ExitCode.OK, result.message
    stats = sim.stats()
    assert stats["creates"] == 3 and stats["unauthorized"] == 3  # the first, key-less, try of each file
    assert_saved_as_served(tmp_path / "out", stats, succeeded=3)


def test_a_file_host_elsewhere_that_asks_for_a_key_never_gets_it(write_manifest, run):
    """The same 401 from a host other than the API's: the key is never sent there, whatever it answers."""
    sim = Simulator(SimConfig(latency=0.05, files_behind_key=True))
    result = run(write_manifest(3), sim, max_attempts=1)
    assert result.exit_code != ExitCode.OK
    stats = sim.stats()
    assert stats["auth_on_files"] == 0 and stats["unauthorized"] > 0
