"""What a newcomer does when following the README, and off it: the real CLI in a subprocess.

Each test is a trap someone new to batchgen walked into: the command as typed, and what
they must see (a clear message, the right exit code, nothing sent or lost).
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from pathlib import Path

from batchgen.exitcodes import ExitCode
from batchgen.simulator import SimConfig, Simulator

from .conftest import REPO, batchgen_cli, env_for

EXAMPLE = REPO / "manifests" / "example.yaml"


def assert_exit(result: subprocess.CompletedProcess[str], code: int) -> None:
    """The command exited with ``code`` and printed no traceback."""
    assert result.returncode == code, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def catalogue_with(folder: Path, text: str, instead: str) -> Path:
    """The README's catalogue manifest and its export, copied into ``folder`` with ``text`` replaced."""
    catalogue = (REPO / "manifests" / "catalogue.yaml").read_text(encoding="utf-8")
    assert text in catalogue
    (folder / "catalogue-products.csv").write_bytes((REPO / "manifests" / "catalogue-products.csv").read_bytes())
    manifest = folder / "catalogue.yaml"
    manifest.write_text(catalogue.replace(text, instead), encoding="utf-8")
    return manifest


def test_a_real_run_refuses_a_folder_filled_by_simulate(tmp_path, serve):
    """The README's quick start fills output/ with --simulate; a real run into that folder must not take the
    simulator's placeholders as done: it exits 2 before any request, naming --simulate and --output."""
    out = tmp_path / "output"
    assert_exit(batchgen_cli("run", str(EXAMPLE), "--simulate", "--output", str(out), "--no-progress"), 0)
    server = serve()
    for dry_run in (["--dry-run"], []):
        real = batchgen_cli("run", str(EXAMPLE), "--output", str(out), "--no-progress", *dry_run, env=env_for(server))
        assert_exit(real, ExitCode.USAGE)
        assert "--simulate" in real.stderr and "--output" in real.stderr, real.stderr
    stats = server.simulator.stats()
    assert stats["create_requests"] == stats["gets"] == 0


def test_a_refused_folder_keeps_no_new_ledger(tmp_path, serve):
    """A real run given its own new --ledger but a folder of simulated images: refused (exit 2), and the
    ledger it would have started is not left behind."""
    out = tmp_path / "output"
    assert_exit(batchgen_cli("run", str(EXAMPLE), "--simulate", "--output", str(out), "--quiet"), 0)
    ledger = tmp_path / "ledgers" / "real.sqlite"
    real = batchgen_cli("run", str(EXAMPLE), "--output", str(out), "--ledger", str(ledger), env=env_for(serve()))
    assert_exit(real, ExitCode.USAGE)
    assert not ledger.parent.exists(), sorted(ledger.parent.iterdir())


def test_a_folder_without_images_changes_hands(tmp_path, serve):
    """A real run that stopped before any image (here a refused key) leaves the folder free for --simulate."""
    out = tmp_path / "output"
    server = serve(api_key="the-one-right-key")
    assert_exit(batchgen_cli("run", str(EXAMPLE), "--output", str(out), env=env_for(server)), ExitCode.UNAUTHORIZED)
    assert_exit(batchgen_cli("run", str(EXAMPLE), "--simulate", "--output", str(out), "--no-progress"), 0)


def test_simulate_refuses_a_folder_of_real_images(tmp_path, serve):
    """The other way round: --simulate into a folder of images made through the API exits 2, so no
    placeholder ever stands among (or in for) the real images."""
    out = tmp_path / "images"
    server = serve()
    assert_exit(batchgen_cli("run", str(EXAMPLE), "--output", str(out), "--no-progress", env=env_for(server)), 0)
    before = {path: path.read_bytes() for path in out.glob("*.png")}
    simulated = batchgen_cli("run", str(EXAMPLE), "--simulate", "--output", str(out), "--no-progress", "--no-reuse")
    assert_exit(simulated, ExitCode.USAGE)
    assert "--simulate" in simulated.stderr and "--output" in simulated.stderr, simulated.stderr
    assert {path: path.read_bytes() for path in out.glob("*.png")} == before


def test_simulate_with_a_base_url_is_refused(tmp_path):
    """`--simulate --base-url URL` asks for two APIs at once: exit 2 naming both options, nothing made
    (the URL used to be dropped without a word)."""
    out = tmp_path / "out"
    url = "http://127.0.0.1:9/api/v1"
    both = batchgen_cli("run", str(EXAMPLE), "--simulate", "--base-url", url, "--output", str(out))
    assert_exit(both, ExitCode.USAGE)
    assert "--simulate" in both.stderr and "--base-url" in both.stderr, both.stderr
    assert not out.exists()


def test_an_unusable_reuse_index_is_said_not_silently_dropped(tmp_path):
    """A reuse index that cannot be opened (its folder is a file, as with a service user whose home is not
    writable) is named in the summary: identical requests will be paid again, so the user must know."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be\n")
    index = blocker / "reuse.sqlite"
    out = tmp_path / "out"
    result = batchgen_cli("run", str(EXAMPLE), "--simulate", "--output", str(out), "--reuse-index", str(index))
    assert_exit(result, 0)
    assert f"reuse index {index}" in result.stderr, result.stderr


def test_a_misspelt_option_names_the_command_and_the_option_meant(tmp_path):
    """`run M --concurency 3`: exit 2 with the usage of `run` (not the top level's) and 'did you mean
    --concurrency?', nothing made."""
    result = batchgen_cli("run", str(EXAMPLE), "--simulate", "--concurency", "3", "--output", str(tmp_path / "o"))
    assert_exit(result, ExitCode.USAGE)
    assert "usage: batchgen run " in result.stderr, result.stderr
    assert "--concurency" in result.stderr and "did you mean --concurrency?" in result.stderr, result.stderr
    assert not (tmp_path / "o").exists()


def test_a_misspelt_option_is_named_before_a_missing_one():
    """`retry --fialed`: the typo is what the user must see ('did you mean --failed?'), not argparse's 'one
    of the arguments --failed --ids --ids-from --missing is required'."""
    result = batchgen_cli("retry", "--fialed")
    assert_exit(result, ExitCode.USAGE)
    assert "usage: batchgen retry" in result.stderr and "did you mean --failed?" in result.stderr, result.stderr


def test_batchgen_alone_prints_the_commands():
    """`batchgen` with no arguments lists the commands (the help), exit 2, instead of one terse line."""
    result = batchgen_cli()
    assert_exit(result, ExitCode.USAGE)
    for command in ("run", "validate", "status", "report", "retry", "export", "simulate"):
        assert f"    {command} " in result.stderr, result.stderr


def test_a_column_with_a_space_in_a_template_is_explained_once(tmp_path):
    """A Shopify export's `{{ Variant SKU }}`: one problem on the template's line saying how to write such a
    column (row['Variant SKU']), and no second, made-up problem about the metadata holding 'a object'."""
    (tmp_path / "shop.csv").write_text("Handle,Title,Variant SKU\nlinen-shirt,Linen Shirt,SH-1-S\n", encoding="utf-8")
    manifest = tmp_path / "shop.yaml"
    manifest.write_text(
        'rows: shop.csv\njob:\n  id: "{{ Handle }}"\n  prompt: "Photo of {{ Title }}"\n'
        '  metadata: {sku: "{{ Variant SKU }}"}\n',
        encoding="utf-8",
    )
    result = batchgen_cli("validate", str(manifest))
    assert_exit(result, ExitCode.USAGE)
    problems = [line for line in result.stderr.splitlines() if line.startswith(str(manifest))]
    assert len(problems) == 1, result.stderr
    assert "line 5" in problems[0] and "row['Variant SKU']" in problems[0], problems


def test_a_column_called_like_a_function_is_pointed_at(tmp_path):
    """WooCommerce/Shopify's `Body (HTML)` written `{{ Body (HTML) }}` reads as a call of 'Body': the problem
    names the column meant and how to write it."""
    (tmp_path / "shop.csv").write_text("Handle,Body (HTML)\nlinen-shirt,<p>Linen</p>\n", encoding="utf-8")
    manifest = tmp_path / "shop.yaml"
    manifest.write_text('rows: shop.csv\njob:\n  id: "{{ Handle }}"\n  prompt: "{{ Body (HTML) | strip_html }}"\n')
    result = batchgen_cli("validate", str(manifest))
    assert_exit(result, ExitCode.USAGE)
    assert "line 4" in result.stderr and "row['Body (HTML)']" in result.stderr, result.stderr


def test_a_key_set_empty_or_pasted_with_bearer_says_which(tmp_path, serve):
    """RUNBASE_API_KEY set to nothing is called empty, not 'not set'; one pasted with its 'Bearer ' prefix is
    told to drop it. Both exit 4 before any request, and the key is never echoed."""
    server = serve()
    manifest = EXAMPLE
    for key, expected in (("  ", "RUNBASE_API_KEY is empty"), ("Bearer sk-0123456789", "'Bearer '")):
        env = {**env_for(server), "RUNBASE_API_KEY": key}
        result = batchgen_cli("run", str(manifest), "--output", str(tmp_path / "o"), "--no-progress", env=env)
        assert_exit(result, ExitCode.UNAUTHORIZED)
        assert expected in result.stderr, result.stderr
        assert "sk-0123456789" not in result.stderr
    assert server.simulator.stats()["create_requests"] == 0


def test_a_report_that_cannot_be_written_says_where_else_it_can_go(tmp_path):
    """`batchgen report` on a folder it cannot write into (here the page's name is a folder that cannot be
    replaced) exits 5 naming --out, the option that writes the page elsewhere."""
    out = tmp_path / "out"
    assert_exit(batchgen_cli("run", str(EXAMPLE), "--simulate", "--output", str(out), "--quiet"), 0)
    blocked = tmp_path / "blocked.html"
    blocked.mkdir()
    (blocked / "report.html").mkdir()  # `--out DIR` writes DIR/report.html: here a folder, so the write fails
    result = batchgen_cli("report", "--output", str(out), "--out", str(blocked))
    assert_exit(result, ExitCode.LOCAL)
    assert "--out" in result.stderr, result.stderr


def test_a_spreadsheet_export_given_as_the_manifest_says_how_to_use_it(tmp_path):
    """A .tsv or .txt (Excel's 'Text (Tab delimited)') export, or an .xlsx, given straight to `validate` is
    refused (exit 2) with the way to use it: rename a delimited file to .csv; read an .xlsx with `rows:`."""
    for name, advice in (
        ("products.tsv", "rename it to .csv"),
        ("products.txt", "rename it to .csv"),
        ("products.xlsx", "rows: products.xlsx"),
    ):
        path = tmp_path / name
        path.write_bytes(b"id\tprompt\nlamp-1\tA lamp\n")
        result = batchgen_cli("validate", str(path))
        assert_exit(result, ExitCode.USAGE)
        assert advice in result.stderr, result.stderr


def test_a_prompt_changed_then_changed_back_is_not_paid_again(write_manifest, run, tmp_path):
    """Change a job's prompt, run, change it back, run: the first image (kept aside in .batchgen/replaced/
    when the second took its name) is the same request's image, so it is copied back, not paid for again."""
    sim = Simulator(SimConfig(latency=0.05))
    first = [{"id": "lamp", "prompt": "a ceramic lamp"}]
    assert run(write_manifest(jobs=first), sim).exit_code == ExitCode.OK
    assert run(write_manifest(jobs=[{"id": "lamp", "prompt": "a ceramic lamp, from above"}]), sim).exit_code == 0
    back = run(write_manifest(jobs=first), sim)
    assert back.exit_code == ExitCode.OK
    assert sim.stats()["creates"] == 2 and back.stats.reused == 1
    runs = sim.stats()["runs"]
    first_image = next(f["sha256"] for r in runs if r["prompt"] == "a ceramic lamp" for f in r["files"])
    assert hashlib.sha256((tmp_path / "out" / "lamp.png").read_bytes()).hexdigest() == first_image


def test_a_large_manifest_stopped_early_is_not_reported_as_smaller(tmp_path):
    """A 100,000-row manifest stopped at `--max-runs 1` while it is still being read in: the summary and
    `status` say the rest of the manifest waits too, rather than giving the rows read so far as the batch."""
    manifest = tmp_path / "big.csv"
    rows = 100_000
    manifest.write_text("id,prompt\n" + "".join(f"j{i},photo number {i}\n" for i in range(rows)), encoding="utf-8")
    out = tmp_path / "out"
    capped = batchgen_cli("run", str(manifest), "--simulate", "--output", str(out), "--quiet", "--max-runs", "1")
    assert_exit(capped, ExitCode.CAPPED)
    status = batchgen_cli("status", "--output", str(out), "--json")
    assert_exit(status, 0)
    report = json.loads(status.stdout)
    read = sum(report["jobs"].values())
    assert read < rows, "the manifest was read whole before the cap: make it larger"
    assert report["manifest_read"] is False
    assert "rows not read yet" in capped.stderr, capped.stderr
    assert "read only in part" in batchgen_cli("status", "--output", str(out)).stdout


def test_dry_run_counts_a_manifest_run_before_another_as_done(tmp_path):
    """example.yaml into a folder, then example.csv, then `run example.yaml --dry-run`: the plan says what
    the run then does (the jobs it left as they were are done, nothing to create), not that it would pay
    for them again."""
    out = tmp_path / "out"
    csv = REPO / "manifests" / "example.csv"
    for manifest in (EXAMPLE, csv):
        assert_exit(batchgen_cli("run", str(manifest), "--simulate", "--output", str(out), "--quiet"), 0)
    plan = batchgen_cli("run", str(EXAMPLE), "--simulate", "--output", str(out), "--dry-run", "--no-reuse")
    assert_exit(plan, 0)
    again = batchgen_cli("run", str(EXAMPLE), "--simulate", "--output", str(out), "--no-progress", "--no-reuse")
    assert_exit(again, 0)
    created = int(re.search(r"(\d+) runs? created", again.stderr).group(1))
    assert f"runs that would be created now: {created}" in plan.stdout, plan.stdout + again.stderr
    assert "already done" in plan.stdout, plan.stdout


def test_a_utf16_yaml_or_jsonl_manifest_is_named_as_such_once(tmp_path):
    """PowerShell's `>` writes UTF-16: a YAML or JSONL manifest saved so is refused with one problem saying
    it is UTF-16 and to save it as UTF-8, not advice about Excel's CSV export plus a JSON error per line."""
    for name, text in (("jobs.yaml", "jobs:\n  - prompt: a lamp\n"), ("jobs.jsonl", '{"prompt": "a lamp"}\n' * 3)):
        path = tmp_path / name
        path.write_bytes(text.encode("utf-16"))
        result = batchgen_cli("validate", str(path))
        assert_exit(result, ExitCode.USAGE)
        problems = [line for line in result.stderr.splitlines() if line.startswith(str(path))]
        assert len(problems) == 1 and "UTF-16" in problems[0] and "UTF-8" in problems[0], result.stderr
        assert "Excel" not in result.stderr, result.stderr


def test_a_where_that_no_row_passes_says_what_the_column_holds(tmp_path):
    """The README's catalogue with `Type: [Simple, Variable]` (the export writes them in lower case): instead
    of 'the manifest has no jobs', the problem is on the 'where:' line and shows the values the column holds."""
    manifest = catalogue_with(tmp_path, "Type: [simple, variable]", "Type: [Simple, Variable]")
    result = batchgen_cli("validate", str(manifest))
    assert_exit(result, ExitCode.USAGE)
    assert "no jobs" not in result.stderr, result.stderr
    assert "field 'where'" in result.stderr and "'simple'" in result.stderr, result.stderr


def test_every_error_kind_is_listed_where_users_look():
    """The run's own note tells users `retry --failed --error-kind reference`: every kind `retry` accepts is
    listed by `retry --help` and by the README's list of kinds."""
    from batchgen.regenerate import ERROR_KINDS

    help_text = " ".join(batchgen_cli("retry", "--help").stdout.split())
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    listed = readme[readme.index("Kinds for `--error-kind`") :].split("\n\n")[0]
    for kind in ERROR_KINDS:
        name = kind.replace("_", "-")
        assert name in help_text, name
        assert f"`{name}`" in listed, name


def test_a_misspelt_variant_name_is_not_taken_as_a_variable(tmp_path):
    """`variants: {aspect-ratio: ["1:1", "3:2"]}` looked like a variable of that name: two jobs per product with
    the API's default aspect ratio. It is refused on its line with 'did you mean 'aspect_ratio'?'."""
    manifest = catalogue_with(tmp_path, "  aspect_ratio: [", "  aspect-ratio: [")
    result = batchgen_cli("validate", str(manifest))
    assert_exit(result, ExitCode.USAGE)
    assert "field 'variants'" in result.stderr and "did you mean 'aspect_ratio'?" in result.stderr, result.stderr


def test_excels_sep_line_is_named_and_what_to_do_said(tmp_path):
    """A CSV saved by Excel with its 'sep=;' first line: one problem naming that line and saying to delete
    it, instead of 'the header has no prompt column' and a problem for every row."""
    path = tmp_path / "jobs.csv"
    path.write_bytes(b"sep=;\r\nid;prompt\r\nlamp-1;A lamp\r\nvase-2;A vase\r\n")
    result = batchgen_cli("validate", str(path))
    assert_exit(result, ExitCode.USAGE)
    problems = [line for line in result.stderr.splitlines() if line.startswith(str(path))]
    assert len(problems) == 1 and "sep=;" in problems[0] and "delete" in problems[0], result.stderr
