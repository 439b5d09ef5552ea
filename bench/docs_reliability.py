"""bench/RELIABILITY.md: the checks of bench/reliability.py's newest results file, by section, and
the mutation scores of bench/mutation.py's files (each module's newest figures)."""

from __future__ import annotations

import re
from typing import Any

from docs_common import GENERATED, Result, assemble, block, newest, num, pct, series, table

# -- bench/RELIABILITY.md ---------------------------------------------------------------------------------


def verdict(row: dict[str, Any]) -> str:
    if not row.get("check"):
        return "information"
    return "held" if row.get("ok") else "**broken**"


def reliability_counts(result: Result) -> tuple[int, int, int]:
    checks = [r for r in result.rows if r.get("check")]
    return len(checks), sum(1 for r in checks if r.get("ok")), len(result.rows) - len(checks)


def reliability_md(results: list[Result]) -> str:
    parts = [
        "# Reliability figures",
        GENERATED,
        "`bench/reliability.py` checks batchgen's promises against the simulator: the real CLI killed "
        "with SIGKILL at random moments and resumed, stopped with SIGINT and SIGTERM, a batch with every "
        "retryable server fault, the off-the-happy-path answers (hostile output bodies and URLs, odd run "
        "ids, 404s just after a create, the key echoed in error bodies), a ledger lost or rolled back, "
        "two ledgers on one folder, every bad manifest, and the API key searched for in everything "
        "written and printed. A row is a *check* (the figure the promise requires; the script exits 1 if "
        "one is broken) or *information* (no verdict). Files are compared with the sha256 the server "
        "recorded for that job's own run and output.",
    ]
    result = newest(results, "reliability")
    if result is None:
        parts.append("No result of `bench/reliability.py` is committed yet.")
    else:
        checks, held, info = reliability_counts(result)
        summary = f"**{held} of {checks} checks held**; {info} rows of information."
        if held < checks:
            broken = [f"{r['section']}: {r['what']}" for r in result.rows if r.get("check") and not r.get("ok")]
            summary += " Broken at this commit:\n\n" + "\n".join(f"- {b}" for b in broken)
        parts.append(block(result, summary))
        sections: dict[str, list[dict[str, Any]]] = {}
        for row in result.rows:
            sections.setdefault(row["section"], []).append(row)
        for name, rows in sections.items():
            body = table(["what", "figure", "verdict"], ([r["what"], r["figure"], verdict(r)] for r in rows))
            parts.append(f"## {name}\n\n{body}")
    parts.append(mutation_section(results))
    return assemble(parts) + "\n"


def mutation_section(results: list[Result]) -> str:
    parts = [
        "## Mutation testing",
        "`bench/mutation.py` runs mutmut (configured under `[tool.mutmut]` in `pyproject.toml`) over one "
        "module at a time, with only the fast in-process tests that cover it (tests that start the CLI in "
        "a subprocess never see a mutant, and the runner's tests would take minutes per mutant on this "
        "2-core machine), and records how many of the mutants the tests killed. A surviving mutant is a "
        "change to the code that no test notices; 'no test reaches' counts mutants in functions none of "
        "the selected tests call. Score: killed and timed out over all mutants; the last column leaves "
        "out the survivors that only change the letter case of SQL keywords or names (equivalent: sqlite "
        "ignores it), as computed from each survivor's diff in the results file. 'Not run': mutmut stopped "
        "before testing any mutant, because its own run of the selected tests failed. A module's tests are "
        "whole files, or single tests of a file (counted as such in 'tests run').",
    ]
    found = series(results, "mutation")
    if not found:
        parts.append("No mutation result is committed yet.")
        return assemble(parts)
    seen: set[str] = set()
    for result in found:  # newest first: each module's newest figures
        rows = [r for r in result.rows if r["module"] not in seen]
        seen.update(r["module"] for r in rows)
        if not rows:
            continue
        body = table(
            ["module", "tests run", "mutants", "killed", "timeout", "survived", "of which SQL case only",
             "no test reaches", "score", "score without the SQL-case mutants"],
            (mutation_cells(r) for r in rows),
        )  # fmt: skip
        parts.append(block(result, body))
        explained = [(r["module"], s) for r in rows for s in r.get("survivors_explained", [])]
        if explained:
            parts.append(
                "Surviving mutants left on purpose, and why:\n\n"
                + "\n".join(f"- `{module}` `{s['mutant']}`: {s['why']}" for module, s in explained)
            )
    return assemble(parts)


_SQL = re.compile(
    r"\b(select|insert|update|delete|where|from|values|set|and|join|order by|group by|begin|commit|rollback)\b", re.I
)
_QUOTED = re.compile(r"'[^']*'")
_STRING = re.compile(r'"[^"]*"')


def sql_case_only(diff: str) -> bool:
    """A mutant that only changes the letter case of SQL text outside its quoted values: sqlite reads
    keywords and names in any case, so the mutant is equivalent to the original."""
    removed = [line[1:] for line in diff.splitlines() if line.startswith("-") and not line.startswith("---")]
    added = [line[1:] for line in diff.splitlines() if line.startswith("+") and not line.startswith("+++")]
    if len(removed) != 1 or len(added) != 1 or removed == added:
        return False
    before, after = removed[0], added[0]
    changed = [b for b, a in zip(_STRING.findall(before), _STRING.findall(after), strict=False) if b != a]
    return (
        before.lower() == after.lower()
        and _QUOTED.findall(before) == _QUOTED.findall(after)
        and _STRING.sub("", before) == _STRING.sub("", after)  # only string literals changed...
        and bool(changed)
        and all(_SQL.search(text) for text in changed)  # ...and each is SQL, not a header name or a message
    )


def tests_cell(tests: str) -> str:
    """The tests a row ran: whole files by name, single tests (``file::name``) counted per file."""
    files: list[str] = []
    single: dict[str, int] = {}
    for test in tests.split():
        path, _, name = test.partition("::")
        if name:
            single[path] = single.get(path, 0) + 1
        else:
            files.append(path)
    return " ".join(files + [f"{n} test{'s' if n > 1 else ''} of {path}" for path, n in single.items()])


def mutation_cells(row: dict[str, Any]) -> list[str]:
    mutants, caught = row["mutants"], row["killed"] + row.get("timeout", 0)
    tests = tests_cell(row.get("tests", ""))
    if caught + row["survived"] == 0:  # mutmut stopped before any mutant ran (its clean test run failed)
        return [f"`{row['module']}`", tests, num(mutants)] + ["not run"] * 7
    diffs = row.get("survivor_diffs") or {}
    equivalent = sum(sql_case_only(diffs.get(name, "")) for name in row.get("survivors", []))
    no_tests = (row.get("statuses") or {}).get("no tests", 0)
    return [
        f"`{row['module']}`", tests, num(mutants), num(row["killed"]), num(row.get("timeout", 0)),
        num(row["survived"]), num(equivalent), num(no_tests), pct(caught / mutants if mutants else None),
        pct(caught / (mutants - equivalent) if mutants > equivalent else None),
    ]  # fmt: skip
