"""Mutation testing per module: how many of mutmut's mutants the tests that cover the module kill.

    python bench/mutation.py [--target ledger] [--max-children 2] [--save | --json PATH]

For each target, a copy of the committed tree (``git archive HEAD``) gets a ``[tool.mutmut]``
that mutates only that module and runs only the tests listed for it (files, or single tests as
``file::name``: the fast in-process ones that exercise it; tests that start the CLI in a
subprocess would not see a mutant), then
``mutmut run``. The counts come from ``mutmut results --all true``. Surviving mutants are
listed by name in the results file; ``SURVIVORS_EXPLAINED`` says why the ones left alive are
harmless. On this shared 2-core machine a target takes minutes to tens of minutes.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import results_file  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
# target -> (the files to mutate, the tests that exercise them in-process)
TARGETS: dict[str, tuple[list[str], list[str]]] = {
    "ledger": (
        ["batchgen/ledger/*"],
        ["tests/test_ledger.py", "tests/test_ledger_contract.py", "tests/test_streaming.py"],
    ),
    "throttle": (
        ["batchgen/throttle.py"],
        ["tests/test_throttle.py", "tests/test_pacing.py", "tests/test_throttle_contract.py"],
    ),
    # The client against fake servers: tests/test_api_contract.py, and those of tests/test_api.py that drive the
    # client itself. The ones that drive the whole runner take minutes per mutant on this machine and test no
    # answer the contract tests do not.
    "api": (
        ["batchgen/api/__init__.py", "batchgen/api/sending.py", "batchgen/api/files.py", "batchgen/api/answers.py"],
        [
            "tests/test_api_contract.py",
            *(
                f"tests/test_api.py::{name}"
                for name in (
                    "test_error_messages_never_carry_the_key_or_control_characters",
                    "test_run_errors_and_status_words_are_scrubbed_and_printable",
                    "test_the_bytes_decide_the_type_and_the_extension",
                    "test_a_body_that_is_not_an_image_is_refused_before_anything_is_written",
                    "test_sink_receives_nothing_from_a_refused_body",
                    "test_refusals_are_classified_by_what_can_help",
                )
            ),
        ],
    ),
}
# Mutant name -> why it may live (equivalent to the original, or outside what the module promises).
_ID_STEP = "attempt ids grow by 2 instead of 1: still unique and increasing, which is all any reader relies on"
_MESSAGE = (
    "changes only the letter case or padding of the error text stored with the attempt (the report's "
    "attempt log shows it as written): the words, and what they say, are the same"
)
_HEADER_CASE = (
    "looks a header up by another letter case (or sends it so): HTTP header names are case-insensitive, and "
    "httpx's headers are looked up and sent that way"
)
_NO_LOCATION = "a missing Location read as None instead of '': `if not location` treats both as no location"
_API = "batchgen.api.xǁRunbaseClientǁ"
_FILES = "batchgen.api.files.xǁFileClientǁ"
_HTTP = "batchgen.api.sending.x_"
SURVIVORS_EXPLAINED: dict[str, str] = {
    "batchgen.ledger.writes.xǁLedgerWritesǁbegin_attempt__mutmut_4": _ID_STEP,
    "batchgen.ledger.writes.xǁLedgerWritesǁjob_satisfied__mutmut_4": _ID_STEP,
    "batchgen.ledger.writes.xǁLedgerWritesǁrun_created__mutmut_21": "the journal keeps a run's creation time to 0.1 ms "
    "instead of 1 ms: a repaired run's created_at moves by under a millisecond",
    "batchgen.ledger.writes.xǁLedgerWritesǁrecover__mutmut_17": _MESSAGE,
    "batchgen.ledger.writes.xǁLedgerWritesǁlost_create__mutmut_11": _MESSAGE,
    "batchgen.ledger.writes.xǁLedgerWritesǁlost_create__mutmut_12": _MESSAGE,
    "batchgen.api.answers.x_content_length__mutmut_4": _HEADER_CASE,
    _FILES + "_check_link__mutmut_19": _HEADER_CASE,
    _FILES + "_check_link__mutmut_20": _HEADER_CASE,
    _FILES + "_check_link__mutmut_26": _HEADER_CASE,
    _FILES + "_check_link__mutmut_33": _HEADER_CASE,
    _FILES + "_receive__mutmut_17": _HEADER_CASE,
    _FILES + "download__mutmut_15": _HEADER_CASE,
    _FILES + "download__mutmut_11": _NO_LOCATION,
    _FILES + "download__mutmut_13": _NO_LOCATION,
    _HTTP + "error_text__mutmut_3": "a body that is not JSON read as '' instead of None: neither is a dict, so the "
    "text is taken from the body either way",
    _HTTP + "error_text__mutmut_31": "reads response.text of an empty body too: it is '' already",
    _HTTP + "error_text__mutmut_33": "strips tags when the text has '<' or '>' instead of both: the pattern only "
    "matches a '<' ... '>' pair, so with one of them it changes nothing",
    _HTTP + "raise_for_download_status__mutmut_4": "takes a 300 for success: httpx reports every 3xx as a "
    "redirect, which download() handles (a Location followed, none refused) before this check is reached",
    _HTTP + "raise_for_download_status__mutmut_5": "takes a 300 for success: httpx reports every 3xx as a "
    "redirect, which download() handles (a Location followed, none refused) before this check is reached",
    _FILES + "_receive__mutmut_58": "leaves other bytes in the sniffing buffer once the type is known: it is never "
    "read again after that",
    _API + "create_run__mutmut_21": "sends the method as 'post': httpx.Request upper-cases the method it is given",
    "batchgen.api.sending.xǁScrubǁurl__mutmut_21": "a URL in a message is shown as written up to its query instead "
    "of rebuilt from its parts: the same text, except that a #fragment (never sent to a server, no credential) "
    "stays visible",
}
STATUS = re.compile(r"^\s*(?P<name>[\w.]+__mutmut_\d+): (?P<status>.+)$")


def mutmut_config(text: str, only: list[str], tests: list[str], existing: list[str]) -> str:
    """pyproject.toml with its [tool.mutmut] replaced by one for this target."""
    config = tomllib.loads(text)["tool"].get("mutmut", {})
    lines = [
        "[tool.mutmut]",
        f"source_paths = {config.get('source_paths', ['batchgen/'])!r}",
        f"only_mutate = {only!r}",
        f"pytest_add_cli_args = {config.get('pytest_add_cli_args', [])!r}",
        f"pytest_add_cli_args_test_selection = {[t for t in tests if t in existing]!r}",
    ]
    kept = re.sub(r"\n\[tool\.mutmut\][^\[]*", "\n", text)
    return kept.rstrip() + "\n\n" + "\n".join(lines).replace("'", '"') + "\n"


def run_target(name: str, max_children: int, commit: str) -> dict[str, Any]:
    only, tests = TARGETS[name]
    scratch = Path(tempfile.mkdtemp(prefix=f"batchgen-mutation-{name}-"))
    try:
        archive = subprocess.run(["git", "archive", commit], cwd=REPO, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(scratch)], input=archive, check=True)
        existing = [t for t in tests if (scratch / t.partition("::")[0]).exists()]  # a file, or one test in it
        pyproject = scratch / "pyproject.toml"
        pyproject.write_text(mutmut_config(pyproject.read_text(), only, tests, existing), encoding="utf-8")
        env = {k: v for k, v in os.environ.items() if not k.startswith("RUNBASE_")}
        env["BATCHGEN_CACHE_DIR"] = str(scratch / "cache")
        run = subprocess.run(
            ["mutmut", "run", "--max-children", str(max_children)], cwd=scratch, env=env, capture_output=True, text=True
        )
        listing = subprocess.run(
            ["mutmut", "results", "--all", "true"], cwd=scratch, env=env, capture_output=True, text=True
        ).stdout
        statuses = {m["name"]: m["status"].strip() for m in map(STATUS.match, listing.splitlines()) if m}
        if not statuses:
            raise SystemExit(f"mutmut gave no results for {name}:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}")
        counts = Counter(statuses.values())
        survivors = sorted(n for n, s in statuses.items() if s == "survived")
        with ThreadPoolExecutor(4) as pool:  # `mutmut show` starts slowly: a few at a time
            shown = pool.map(
                lambda n: subprocess.run(["mutmut", "show", n], cwd=scratch, env=env, capture_output=True, text=True),
                survivors,
            )
            diffs = {n: done.stdout for n, done in zip(survivors, shown, strict=True)}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    known = ("killed", "survived", "timeout")
    return {
        "module": ", ".join(only),
        "tests": " ".join(existing),
        "mutants": len(statuses),
        "killed": counts["killed"],
        "survived": counts["survived"],
        "timeout": counts["timeout"],
        "other": sum(v for k, v in counts.items() if k not in known),
        "statuses": dict(counts),
        "mutmut_exit_code": run.returncode,
        "mutmut_output_tail": [line for line in run.stdout.splitlines() if "⠋" not in line][-40:],
        "survivors": survivors,
        "survivor_diffs": diffs,
        "survivors_explained": [
            {"mutant": n, "why": SURVIVORS_EXPLAINED[n]} for n in survivors if n in SURVIVORS_EXPLAINED
        ],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", action="append", choices=sorted(TARGETS), help="default: every target")
    parser.add_argument("--max-children", type=int, default=2)
    parser.add_argument("--json", type=Path, help="write the results file here")
    parser.add_argument("--save", action="store_true", help="write it to bench/results/mutation_<commit>.json")
    args = parser.parse_args()
    load_before = os.getloadavg()
    commit = results_file.git("rev-parse", "--short", "HEAD")  # what each target archives: the committed tree
    rows = []
    for name in args.target or list(TARGETS):
        print(f"{name}...", file=sys.stderr, flush=True)
        row = run_target(name, args.max_children, commit)
        score = row["killed"] / row["mutants"] if row["mutants"] else 0.0
        print(
            f"  {row['killed']} of {row['mutants']} killed ({score:.1%}), {row['survived']} survived", file=sys.stderr
        )
        rows.append(row)
    if args.json or args.save:
        result = results_file.envelope("mutation", rows, load_before, commit=commit)
        print(f"written: {results_file.write(result, args.json)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
