"""``batchgen status`` and ``batchgen export``: read a ledger, change nothing."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from . import LEDGER_NAME, add_location

if TYPE_CHECKING:
    from ..ledger import Ledger


def add_parsers(commands: Any) -> None:
    status = commands.add_parser("status", help="counts by state, attempts and last errors of a batch")
    add_location(status)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(handler=_status)

    export = commands.add_parser("export", help="one record per job, to standard output")
    add_location(export)
    export.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    export.set_defaults(handler=_export)


def _open_existing(args: argparse.Namespace) -> Ledger:
    from ..errors import BatchgenError
    from ..ledger import Ledger

    path = args.ledger or args.output / LEDGER_NAME
    if not path.is_file():
        raise BatchgenError(f"no ledger at {path}: run `batchgen run MANIFEST` first (or pass --output/--ledger)")
    return Ledger(path, readonly=True)


def _status(args: argparse.Namespace) -> int:
    with _open_existing(args) as ledger:
        report: dict[str, Any] = {
            "ledger": str(ledger.path),
            "manifest": ledger.manifest,
            "jobs": ledger.counts(),
            "attempts": ledger.attempt_counts(),
            "last_session": ledger.last_session(),
            "recent_errors": [{"job_id": j, "error": e} for j, e in ledger.recent_errors()],
        }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    jobs, attempts = report["jobs"], report["attempts"]
    total = sum(jobs.values())
    print(f"ledger:   {report['ledger']}")
    print(f"manifest: {report['manifest']}")
    print(
        f"jobs:     {total} — {jobs['succeeded']} succeeded, {jobs['failed']} failed, "
        f"{jobs['pending'] + jobs['running']} pending ({jobs['running']} with a run in flight)"
    )
    runs = sum(n for status, n in attempts.items() if status != "creating")
    detail = ", ".join(f"{n} {status}" for status, n in sorted(attempts.items()))
    print(f"attempts: {runs}" + (f" ({detail})" if detail else ""))
    unknown = attempts.get("unknown", 0)
    print(f"possible double charges: {unknown} create(s) sent whose answer never came")
    session = report["last_session"]
    if session:
        print(f"last run: {session['outcome'] or 'did not finish (crashed or still running)'}")
    if report["recent_errors"]:
        print("last errors:")
        for item in report["recent_errors"]:
            print(f"  {item['job_id']}: {item['error']}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from ..exporting import write_csv, write_jsonl

    with _open_existing(args) as ledger:
        (write_jsonl if args.format == "jsonl" else write_csv)(ledger, sys.stdout)
    return 0
