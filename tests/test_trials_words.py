"""A count of one is said in the singular in what the CLI prints: the plan, the run's summary and its cap,
status, report."""

from __future__ import annotations

import re
import tokenize
from pathlib import Path

import pytest

import batchgen
from batchgen import ExitCode
from batchgen.words import plural

from .conftest import batchgen_cli
from .manifest_files import problems_of, write

PARENTHESISED = re.compile(r"[a-z]{2,}\(s\)(?=[\s.,;:!?'\")]|$)")
ONE_THEN_PLURAL = re.compile(r"(?<![\d.,])1 (runs|files|jobs|credits|retries)\b")


@pytest.mark.parametrize(("n", "said"), [(0, "runs"), (1, "run"), (2, "runs"), (1.0, "run"), (0.5, "runs")])
def test_plural_says_one_in_the_singular(n, said):
    """plural() gives the singular for exactly one, the plural for anything else (none, fractions of credits)."""
    assert plural(n, "run") == said
    assert plural(n, "retry", "retries") == ("retry" if said == "run" else "retries")


def test_the_plan_of_one_job_says_one_run_and_one_credit(write_manifest, tmp_path):
    """validate on a one-job manifest: '1 job, valid', the model's line '1 run  1 credit', never '1 runs'."""
    result = batchgen_cli(
        "validate", str(write_manifest(1)), "--output", str(tmp_path / "none"), "--price", "default=1"
    )
    assert result.returncode == 0, result.stderr
    assert "1 job, valid" in result.stdout
    assert re.search(r"\b1 run  1 credit$", result.stdout, re.MULTILINE), result.stdout
    assert not ONE_THEN_PLURAL.search(result.stdout), result.stdout


def test_a_run_capped_at_one_run_says_it_in_the_singular(write_manifest, tmp_path):
    """--max-runs 1 on two jobs: the summary says '1 run created, 1 file saved' and the cap '(1 run used)';
    status says '1 run created' too. No '1 runs', '1 files' or '1 jobs' anywhere."""
    out = tmp_path / "out"
    ran = batchgen_cli(
        "run", str(write_manifest(2)), "--simulate", "--output", str(out), "--no-progress", "--max-runs", "1"
    )
    assert ran.returncode == ExitCode.CAPPED, ran.stderr
    assert "1 run created, 1 file saved" in ran.stderr and "(1 run used)" in ran.stderr, ran.stderr
    status = batchgen_cli("status", "--output", str(out))
    assert status.returncode == 0, status.stderr
    assert "1 run created" in status.stdout, status.stdout
    for text in (ran.stderr, status.stdout):
        assert not ONE_THEN_PLURAL.search(text), text


def test_a_manifest_problem_counts_one_in_the_singular(tmp_path):
    """A CSV whose header has one column and a row with two cells: 'the header has 1 column'; 1,001 problems:
    the last says '... and 1 more problem not listed'."""
    (problem,) = problems_of(write(tmp_path, "a.csv", "prompt\na,b\n"))
    assert "the header has 1 column (" in problem.message, problem.message
    problems = problems_of(write(tmp_path, "b.csv", "id,prompt\n" + "../x,p\n" * 1001))
    assert problems[-1].message == "... and 1 more problem not listed"


def test_validate_counts_one_problem_in_the_singular(tmp_path):
    """The last line of a refused manifest: 'batchgen: 1 problem in m.csv', not '1 problem(s)'."""
    result = batchgen_cli("validate", str(write(tmp_path, "m.csv", "id,prompt\n../x,p\n")))
    assert result.returncode == ExitCode.USAGE
    assert f"batchgen: 1 problem in {tmp_path / 'm.csv'}; nothing was sent" in result.stderr, result.stderr


def test_no_message_counts_with_a_parenthesised_plural():
    """Every count in batchgen's messages goes through plural(): no 'job(s)', 'image(s)' or 'file(s)' is left
    in the text of its source ('http(s)', a scheme, is not a count)."""
    source = Path(batchgen.__file__).parent
    found = []
    for path in sorted(source.rglob("*.py")):
        with path.open("rb") as file:
            for token in tokenize.tokenize(file.readline):
                text = token.string.replace("http(s)", "")
                if token.type == tokenize.STRING and PARENTHESISED.search(text):
                    found.append(f"{path.relative_to(source)}:{token.start[0]}: {token.string[:80]}")
    assert not found, "\n".join(found)
