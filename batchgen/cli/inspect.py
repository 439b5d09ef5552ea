"""``batchgen status`` and ``batchgen export``: read a ledger, change nothing."""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..words import plural
from . import LEDGER_NAME, add_location, positive_int

if TYPE_CHECKING:
    from ..ledger import Ledger


def add_parsers(commands: Any) -> None:
    status = commands.add_parser(
        "status",
        help="jobs by state, the most common errors, the last run, and the command to continue",
        description="Jobs by state, the most common errors with how many jobs each, possible double "
        "charges, the last run, and the exact command that continues the batch. Reads the ledger only.",
    )
    add_location(status)
    status.add_argument("--json", action="store_true", help="one JSON object, for programs (default: off: text)")
    status.add_argument(
        "--errors",
        type=positive_int,
        default=5,
        metavar="N",
        help="how many of the most common errors to list (default: 5)",
    )
    status.set_defaults(handler=_status)

    export = commands.add_parser(
        "export",
        help="one record per job, to standard output",
        description="One record per job of the current manifest, in manifest order: its state, run id, saved files "
        "(with their sha256), error, attempts, possible double charges, input and metadata. Reads the ledger "
        "only; works while a run is going and on a read-only folder.",
    )
    add_location(export)
    export.add_argument(
        "--format",
        choices=("jsonl", "csv"),
        default="jsonl",
        help="jsonl: one JSON object a line; csv: one row a job, a column per input field and per metadata key, "
        "several files joined by | (default: jsonl)",
    )
    export.set_defaults(handler=_export)


def _open_existing(args: argparse.Namespace) -> Ledger:
    from ..errors import BatchgenError
    from ..ledger import Ledger

    path = args.ledger or args.output / LEDGER_NAME
    if not path.is_file():
        raise BatchgenError(f"no ledger at {path}: run `batchgen run MANIFEST` first (or pass --output/--ledger)")
    return Ledger(path, readonly=True)


def _status(args: argparse.Namespace) -> int:
    from ..lastrun import continue_command, read_last_run, shell_line

    with _open_existing(args) as ledger:
        figures = ledger.status_figures(errors_shown=args.errors)
        manifest, recorded_output = ledger.manifest, ledger.output_dir
        path = ledger.path
    output_dir = _folder_of(args, recorded_output)
    command = continue_command(
        manifest=manifest, output_dir=output_dir, ledger_path=path, last_run=read_last_run(output_dir)
    )
    jobs, attempts = figures["jobs"], figures["attempts"]
    session = figures["last_session"]
    if session is not None:
        session["started"] = _when(session["started_at"])
        session["finished"] = _when(session["finished_at"])
    report: dict[str, Any] = {
        "ledger": str(path),
        "output_dir": str(output_dir),
        "manifest": manifest,
        "jobs": jobs,
        "attempts": attempts,
        "runs_created": sum(attempts.get(k, 0) for k in RUN_STATUSES),
        "possible_double_charges": attempts.get("unknown", 0),
        "failed_by_kind": figures["failed_by_kind"],
        "errors": {
            "shown": len(figures["errors"]),
            "distinct": figures["errors_distinct"],
            "jobs": figures["jobs_with_errors"],
            "top": figures["errors"],
        },
        "last_session": session,
        "manifest_read": figures["manifest_read"],
        "next_command": shell_line(command),
        "next_command_argv": command,
        "retry_command": _retry_command(figures["failed_by_kind"], args),
    }
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
        return 0
    _print_status(report)
    return 0


RUN_STATUSES = ("running", "succeeded", "failed")  # attempts whose create answered with a run id
# Kinds of failure that may well go through when tried again; 'rejected' would only be refused again.
RETRYABLE = ("rate_limit", "server_error", "download", "run_failed", "unknown", "missing")


def _print_status(report: dict[str, Any]) -> None:
    from ..regenerate import ERROR_KINDS

    jobs, attempts = report["jobs"], report["attempts"]
    total = sum(jobs.values())
    print(f"ledger:   {report['ledger']}")
    print(f"manifest: {report['manifest'] or '(none yet: no run has read one into this ledger)'}")
    print(
        f"jobs:     {total} — {jobs['succeeded']} succeeded, {jobs['failed']} failed, "
        f"{jobs['pending'] + jobs['running']} pending ({jobs['running']} with a run in flight)"
        + ("" if report["manifest_read"] else "; the manifest is read only in part so far: the next run reads the rest")
    )
    detail = ", ".join(f"{n} {status}" for status, n in sorted(attempts.items()))
    print(
        f"attempts: {sum(attempts.values())}"
        + (f" ({detail}); {report['runs_created']} {plural(report['runs_created'], 'run')} created" if detail else "")
    )
    if report["failed_by_kind"]:
        kinds = sorted(report["failed_by_kind"].items(), key=lambda item: -item[1])
        print("failed:   " + ", ".join(f"{n} {_kind_words(kind, ERROR_KINDS)}" for kind, n in kinds))
    errors = report["errors"]
    if errors["top"]:
        print(
            f"errors:   the most common ({errors['shown']} of {errors['distinct']} shown), "
            f"with how many jobs each, of {errors['jobs']} {plural(errors['jobs'], 'job')} with an error:"
        )
        width = len(str(errors["top"][0]["jobs"]))
        for item in errors["top"]:
            kind = _kind_words(item["kind"], ERROR_KINDS)
            print(f"  {item['jobs']:>{width}}  [{kind}] {_shorten(item['error'])} (e.g. {item['example']})")
    unknown = report["possible_double_charges"]
    print(f"possible double charges: {unknown} {plural(unknown, 'create')} sent whose answer never came")
    session = report["last_session"]
    if session:
        print("last run: " + _session_line(session))
    print("next:     " + _next_line(report))


def _session_line(session: dict[str, Any]) -> str:
    if session["finished_at"] is None:
        return f"started {session['started']}; did not finish (killed, crashed, or still running)"
    took = session["finished_at"] - session["started_at"]
    line = f"{session['finished']} ({took:.1f} s): {session['outcome']}, exit {session['exit_code']}"
    stats = session.get("stats") or {}
    if stats:
        created, retries = stats.get("created", 0), stats.get("retries", 0)
        line += (
            f" — {created} {plural(created, 'run')} created, {stats.get('reused', 0)} reused, "
            f"{stats.get('succeeded', 0)} succeeded, {stats.get('failed', 0)} failed, "
            f"{stats.get('rate_limited', 0)} rate-limited, {retries} {plural(retries, 'retry', 'retries')}"
        )
    return line


def _next_line(report: dict[str, Any]) -> str:
    jobs, command = report["jobs"], report["next_command"]
    left = jobs["pending"] + jobs["running"]
    lines = []
    if not report["manifest_read"]:
        lines.append(f"{command}   # reads the rest of the manifest and finishes its jobs")
    elif left:
        lines.append(f"{command}   # finishes the {left} {plural(left, 'job')} left")
    if report["retry_command"]:
        lines.append(f"{report['retry_command']} && {command}   # tries the failures that may go through now")
    rejected = report["failed_by_kind"].get("rejected", 0)
    if rejected:
        lines.append(
            f"# {rejected} {plural(rejected, 'job was', 'jobs were')} refused by the API for "
            f"{plural(rejected, 'its input: change it', 'their input: change them')} in the manifest"
        )
    if not lines:
        lines.append(f"nothing to do: every job succeeded ({command} again after changing the manifest)")
    lines.append("batchgen report" + _location_options(report) + "   # a gallery to review the images")
    return "\n          ".join(lines)


def _location_options(report: dict[str, Any]) -> str:
    from ..lastrun import shell_line

    output = report["output_dir"]
    return "" if Path(output) == Path("output") else " " + shell_line(["--output", output])


def _retry_command(failed_by_kind: dict[str, int], args: argparse.Namespace) -> str | None:
    from ..lastrun import shell_line

    kinds = [kind for kind in RETRYABLE if failed_by_kind.get(kind)]
    if not kinds:
        return None
    command = ["batchgen", "retry", "--failed"]
    for kind in kinds:
        command += ["--error-kind", kind.replace("_", "-")]
    if args.ledger is not None:
        command += ["--ledger", str(args.ledger)]
    elif args.output != Path("output"):
        command += ["--output", str(args.output)]
    return shell_line(command)


def _kind_words(kind: str | None, kinds: dict[str, str]) -> str:
    return kinds.get(str(kind), str(kind)).split(":")[0] if kind else "other"


def _shorten(text: str, limit: int = 100) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _when(timestamp: float | None) -> str | None:
    from ..events import iso_time

    return None if timestamp is None else iso_time(timestamp, "seconds")


def _folder_of(args: argparse.Namespace, recorded: str | None) -> Path:
    """The output folder: --output, or with only --ledger the folder the ledger recorded."""
    if args.ledger is not None and recorded:
        return Path(recorded)
    return Path(args.output)


def _export(args: argparse.Namespace) -> int:
    from ..exporting import write_csv, write_jsonl

    with _open_existing(args) as ledger:
        if isinstance(sys.stdout, io.TextIOWrapper):  # data for a file or a program: UTF-8, whatever the locale
            sys.stdout.reconfigure(encoding="utf-8")
        (write_jsonl if args.format == "jsonl" else write_csv)(ledger, sys.stdout)
    return 0
