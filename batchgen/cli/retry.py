"""``batchgen retry``: mark jobs to be generated again by the next ``batchgen run``.

The work is ``batchgen.regenerate.mark``; this module picks the jobs from the
options, takes the ledger's and the output folder's locks (so it cannot race a
running ``run``), and says what it did and the exact command to run next.
Exit codes follow ``run`` and ``status``: 2 for a usage problem (an unknown id, an
unknown error kind, an empty id list), 5 for a ledger or folder that cannot be
used (none there yet, another run holding it), 0 otherwise, also when nothing matched.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from ..images import IMAGE_TYPES
from . import EXIT_LOCAL, EXIT_USAGE, LEDGER_NAME, add_location, given_path

if TYPE_CHECKING:
    from ..ledger import Ledger

# A job's files: its images and its sidecar. An id typed as one of them is told the id it names.
IMAGE_SUFFIXES = tuple(f".{ext}" for ext in (*IMAGE_TYPES.values(), "jpeg", "json"))

KIND_HELP = (
    "rate-limit, server-error, download, run-failed, rejected (bad request / content policy), "
    "missing (missing file), unknown (the create's answer never came), "
    "reference (a reference image URL did not answer; not paid for)"
)
SHOWN = 20  # ids listed by name at most


def add_parsers(commands: Any) -> None:
    retry = commands.add_parser(
        "retry",
        help="mark jobs to be generated again by the next run (earlier images are kept)",
        description=textwrap.fill(
            "Mark jobs to be generated again: the next `batchgen run MANIFEST` makes each of them with a new "
            "run of its own (paid for; an identical request's image is not reused). Earlier images are moved "
            "to DIR/.batchgen/versions/<job>/<attempt>/ and listed by `batchgen report`, never overwritten. "
            "Jobs with a run in flight are left for `run` to collect.",
            width=88,
        ),
        epilog="examples:\n"
        "  batchgen retry --failed --error-kind rate-limit --error-kind server-error\n"
        "  batchgen retry --ids thr-1005-1x1,mug-0303-3x2\n"
        "  batchgen retry --ids-from bad.txt      (one id a line; the report's 'copy ids' pastes here)\n"
        "  batchgen retry --missing\n\n"
        "exit codes: 0 marked (or nothing matched), 2 usage (unknown id or kind), "
        "5 no usable ledger or another run holds the folder",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_location(retry)
    which = retry.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--failed",
        action="store_true",
        help="jobs that failed for good, of every kind unless --error-kind says (one of these four "
        "selections is required; default: none)",
    )
    which.add_argument(
        "--ids", action="append", metavar="ID[,ID...]", help="these jobs, by id; repeatable (default: none)"
    )
    which.add_argument(
        "--ids-from", type=given_path, metavar="FILE", help="the job ids in FILE, one a line or comma-separated; "
        "- reads standard input (default: none)"
    )  # fmt: skip
    which.add_argument(
        "--missing",
        action="store_true",
        help="jobs whose image is gone from the folder: deleted, or lost with no run to fetch it from (default: none)",
    )
    retry.add_argument(
        "--error-kind",
        action="append",
        metavar="KIND",
        help=f"with --failed: only failures of this kind; repeatable. KIND: {KIND_HELP} (default: every kind)",
    )
    retry.add_argument(
        "--dry-run", action="store_true", help="say what would be marked and change nothing (default: off)"
    )
    retry.set_defaults(handler=_retry)


def _retry(args: argparse.Namespace) -> int:
    from ..errors import BatchgenError, LedgerBusy, UsageError
    from ..folder import OutputFolder
    from ..ledger import Ledger

    try:
        kinds = _kinds(args)
        wanted_ids = _wanted_ids(args)
    except UsageError as exc:
        return _fail(str(exc), EXIT_USAGE)
    ledger_path = args.ledger or args.output / LEDGER_NAME
    if not ledger_path.is_file():
        return _fail(
            f"no ledger at {ledger_path}: nothing has run there yet (run `batchgen run MANIFEST` first, "
            "or pass --output/--ledger)",
            EXIT_LOCAL,
        )
    try:
        with Ledger(ledger_path) as ledger:
            output_dir = _output_dir(args, ledger)
            folder = OutputFolder(output_dir)
            try:
                ledger.lock_for_run()
                folder.lock()
                return _mark(args, ledger, output_dir, kinds, wanted_ids)
            finally:
                folder.close()
    except LedgerBusy as exc:
        return _fail(f"{exc}. `retry` changes nothing while a run works on the folder", EXIT_LOCAL)
    except UsageError as exc:
        return _fail(str(exc), EXIT_USAGE)
    except BatchgenError as exc:
        return _fail(str(exc), EXIT_LOCAL)


def _mark(
    args: argparse.Namespace, ledger: Ledger, output_dir: Path, kinds: list[str] | None, wanted: list[str] | None
) -> int:
    from ..errors import UsageError
    from ..regenerate import ERROR_KINDS, mark, missing_jobs
    from ..words import plural

    if wanted is not None:
        known = ledger.jobs_by_id(wanted)
        unknown = [job_id for job_id in wanted if job_id not in known]
        if unknown:
            one = len(unknown) == 1
            raise UsageError(
                f"{len(unknown)} of the {len(wanted)} {plural(len(wanted), 'id')} given "
                f"{'is not a job' if one else 'are not jobs'} of the current manifest "
                f"({ledger.manifest or 'none recorded'}): {_listed(unknown)}; nothing was marked"
                + _meant(ledger, unknown)
            )
        job_ids, what = wanted, f"{len(wanted)} {plural(len(wanted), 'job')} given"
    elif args.missing:
        job_ids, what = missing_jobs(ledger, output_dir), "jobs whose image is missing"
    else:
        job_ids = ledger.failed_jobs(kinds)
        by_kind = ledger.failed_by_kind()
        failed = sum(by_kind.values())
        detail = ", ".join(f"{n} {ERROR_KINDS.get(str(k), str(k)).split(':')[0]}" for k, n in sorted(
            by_kind.items(), key=lambda item: -item[1]))  # fmt: skip
        what = f"{failed} failed {plural(failed, 'job')}" + (f" ({detail})" if detail else "")
        if kinds is not None:
            what += f", of which {len(job_ids)} of kind {', '.join(k.replace('_', '-') for k in kinds)}"
    if not job_ids:
        print(f"batchgen: nothing to mark: {what} — 0 jobs match; nothing changed")
        return 0
    marked = mark(ledger, output_dir, job_ids, dry_run=args.dry_run)
    verb = "would mark" if args.dry_run else "marked"
    print(f"batchgen: {what}: {verb} {len(marked.jobs)} to be generated again by a new run: {_listed(marked.jobs)}")
    if marked.versions:
        where = output_dir / ".batchgen" / "versions"
        kept = "would be kept" if args.dry_run else "kept"
        print(
            f"batchgen: {len(marked.versions)} earlier {plural(len(marked.versions), 'image')} "
            f"{kept} under {where}/ (see `batchgen report`)"
        )
    if marked.gone:
        print(
            f"batchgen: {len(marked.gone)} listed {plural(len(marked.gone), 'file was', 'files were')} "
            f"already gone from the folder: {_listed(marked.gone)}"
        )
    if marked.in_flight:
        print(
            f"batchgen: left alone, a run is in flight for {plural(len(marked.in_flight), 'it', 'them')} "
            f"(the next run collects it): {_listed(marked.in_flight)}"
        )
    if args.dry_run:
        print("batchgen: --dry-run: nothing was changed")
    elif marked.jobs:
        them = plural(len(marked.jobs), "it (a new, paid run)", "them (each a new, paid run)")
        print(f"batchgen: next, to make {them}: {_next_command(ledger, output_dir)}")
    return 0


def _kinds(args: argparse.Namespace) -> list[str] | None:
    from ..errors import UsageError
    from ..regenerate import parse_error_kind

    if not args.error_kind:
        return None
    if not args.failed:
        raise UsageError("--error-kind picks among failed jobs: use it with --failed")
    return sorted({parse_error_kind(text) for item in args.error_kind for text in item.split(",") if text.strip()})


def _wanted_ids(args: argparse.Namespace) -> list[str] | None:
    from ..errors import UsageError
    from ..regenerate import parse_ids

    if args.ids is not None:
        ids = parse_ids(args.ids)
        if not ids:
            raise UsageError("--ids names no job id")
        return ids
    if args.ids_from is None:
        return None
    try:
        text = sys.stdin.read() if str(args.ids_from) == "-" else args.ids_from.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise UsageError(f"cannot read --ids-from {args.ids_from}: {reason}") from None
    ids = parse_ids([text])
    if not ids:
        raise UsageError(f"--ids-from {args.ids_from} holds no job id")
    return ids


def _output_dir(args: argparse.Namespace, ledger: Ledger) -> Path:
    """The folder the ledger's images are in: --output, or with only --ledger the folder it recorded."""
    if args.ledger is not None and ledger.output_dir and Path(ledger.output_dir).is_dir():
        return Path(ledger.output_dir)
    return Path(args.output)


def _next_command(ledger: Ledger, output_dir: Path) -> str:
    from ..lastrun import continue_command, read_last_run, shell_line

    return shell_line(
        continue_command(
            manifest=ledger.manifest,
            output_dir=output_dir,
            ledger_path=ledger.path,
            last_run=read_last_run(output_dir),
        )
    )


def _meant(ledger: Ledger, unknown: list[str]) -> str:
    """'; did you mean ...' for ids typed in another case, or as a file of their job (home/thr-1005~2.png):
    the ids as the manifest spells them."""
    stems = []
    for typed in unknown:
        name = PurePosixPath(typed.replace("\\", "/")).name
        if name.lower().endswith(IMAGE_SUFFIXES):
            name = name.rsplit(".", 1)[0].split("~", 1)[0]  # lamp~2.png: the further image of job lamp
        stems.append(name)
    found = ledger.ids_ignoring_case(stems)
    meant = list(dict.fromkeys(found[stem.lower()] for stem in stems if stem.lower() in found))
    return f"; did you mean {_listed(meant)}?" if meant else ""


def _listed(items: list[str]) -> str:
    shown = ", ".join(items[:SHOWN])
    return shown + (f" and {len(items) - SHOWN} more" if len(items) > SHOWN else "")


def _fail(message: str, code: int) -> int:
    print(f"batchgen: error: {message}", file=sys.stderr)
    return code
