"""``batchgen status`` and ``batchgen export``: read a ledger, change nothing."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Iterator
from pathlib import Path
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
    with _open_existing(args) as ledger:
        if args.format == "jsonl":
            for record in _export_records(ledger):
                sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
        else:
            _write_csv(ledger)
    return 0


def _export_records(ledger: Ledger) -> Iterator[dict[str, Any]]:
    """Export's records; a file that is not there with its recorded size is listed as missing, never as present."""
    output_dir = Path(ledger.output_dir) if ledger.output_dir else ledger.path.parent
    for record in ledger.iter_export():
        present, missing, digests = [], [], []
        for output in record.pop("outputs"):
            path = output_dir / output["path"]
            try:
                ok = path.stat().st_size == output["bytes"]
            except OSError:
                ok = False
            if ok:
                present.append(str(path))
                digests.append(output["sha256"])
            else:
                missing.append(str(path))
        record["outputs"], record["sha256"] = present, digests
        if missing:
            record["missing_outputs"] = missing
        yield record


def _write_csv(ledger: Ledger) -> None:
    # Metadata columns are the union over all jobs: one pass to find them, one to write.
    metadata_keys: dict[str, None] = {}
    for record in ledger.iter_export():
        metadata_keys.update(dict.fromkeys(record["metadata"]))
    fixed = ["job_id", "state", "run_id", "outputs", "error", "attempts", "unknown_creates"]
    inputs = ["prompt", "aspect_ratio", "quality", "image_urls"]
    extra = [k for k in metadata_keys if k not in fixed and k not in inputs]
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(fixed + inputs + extra)
    for record in _export_records(ledger):
        given = record["input"]
        row = [record[k] for k in fixed[:3]] + ["|".join(record["outputs"])] + [record[k] for k in fixed[4:]]
        row += [given.get("prompt"), given.get("aspect_ratio"), given.get("quality")]
        row += ["|".join(given.get("image_urls", []))]
        row += [_cell(record["metadata"].get(k)) for k in extra]
        writer.writerow(["" if v is None else v for v in row])


def _cell(value: Any) -> Any:
    return json.dumps(value, ensure_ascii=False) if isinstance(value, (dict, list)) else value
