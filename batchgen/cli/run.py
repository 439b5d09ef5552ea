"""``batchgen run`` and ``batchgen validate``.

``run`` writes to standard error: a progress bar on a terminal, a status line every
10 s elsewhere (each line starting with an ISO timestamp when not on a terminal),
a line per job that failed for good, and the final summary. ``--log-format json``
makes that one JSON object per event; ``--log-file`` sends it to a file and leaves
standard error only the final summary; ``--quiet`` keeps only the final summary.
The summary also goes to ``DIR/last-run.json`` (lastrun.py).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TextIO

from .. import __version__
from ..exitcodes import ExitCode, exit_code_help
from ..words import plural
from . import EXIT_LOCAL, EXIT_USAGE, add_location, given_path, positive_float, positive_int

if TYPE_CHECKING:
    from ..errors import ManifestError
    from ..events import Events, Log
    from ..planning import Plan
    from ..runner import BatchResult

SIGNALS = (signal.SIGINT, signal.SIGTERM)  # what stops a run: Ctrl-C, and a shutdown or systemd stopping it
ENVIRONMENT = """environment:
  RUNBASE_API_KEY     the API key (required unless --simulate); sent only to the API, never written anywhere
  RUNBASE_BASE_URL    the API's base URL when --base-url is not given (default https://runbase.net/api/v1)
  BATCHGEN_CACHE_DIR  where the shared reuse index lives (default ~/.cache/batchgen)
  BATCHGEN_ALLOW_HTTP 1: plain http:// to any host (else only to this machine or a private network)"""

RUN_EPILOG = f"""{ENVIRONMENT}

output: a progress bar on a terminal; elsewhere (cron) a status line every 10 s, each line
starting with an ISO timestamp. The final summary also goes to DIR/last-run.json.

{exit_code_help()}"""


def add_parsers(commands: Any) -> None:
    run = commands.add_parser(
        "run",
        help="generate every job of a manifest (run again to resume)",
        description="Generate every job of the manifest not yet done; run the same command again to resume.",
        epilog=RUN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = run.add_argument
    add("manifest", type=given_path, help="YAML, CSV or JSONL manifest")
    add_location(run)
    add("--concurrency", type=positive_int, default=8, metavar="N", help="runs in flight at most (default: 8)")
    add("--rate", type=positive_float, metavar="R", help="run creations per second at most, if you know your "
        "account's limit (default: found from the API's 429 answers)")  # fmt: skip
    add("--max-attempts", type=positive_int, default=3, metavar="N", help="runs tried per job before it fails "
        "for good (default: 3)")  # fmt: skip
    add("--retry-failed", action="store_true", help="give jobs that failed for good a new set of attempts "
        "(default: off; `batchgen retry` picks failures by kind)")  # fmt: skip
    add("--simulate", action="store_true", help="use the built-in simulator: no key, no network (default: off)")
    add("--base-url", metavar="URL", help="the API's base URL (default: $RUNBASE_BASE_URL, "
        "else https://runbase.net/api/v1)")  # fmt: skip
    add("--timeout", type=positive_float, default=30.0, metavar="S", help="seconds to wait for one API answer "
        "(default: 30)")  # fmt: skip
    add("--run-timeout", type=positive_float, default=900.0, metavar="S", help="seconds before an unfinished run "
        "is given up and tried again (default: 900)")  # fmt: skip
    add("--max-download-mb", type=positive_float, default=100.0, metavar="M", help="size cap per output file, "
        "in MiB (default: 100)")  # fmt: skip
    add("--no-progress", action="store_true", help="no progress bar or status lines (default: off: a bar on a "
        "terminal, a status line every 10 s elsewhere)")  # fmt: skip
    add("--quiet", "-q", action="store_true", help="write only the final summary (default: off)")
    add("--log-format", choices=("text", "json"), default="text", help="text: lines for people, timestamped "
        "when not on a terminal; json: one JSON object per event (default: text)")  # fmt: skip
    add("--log-file", type=given_path, metavar="PATH", help="append the log to PATH instead of standard error, which "
        "then gets only the final summary (default: standard error)")  # fmt: skip
    add("--no-reuse", action="store_true", help="pay for every job's own run, even when an identical request's "
        "image is at hand (default: off: such images are copied)")  # fmt: skip
    add("--reuse-index", type=given_path, metavar="PATH", help="the index of images by request shared by your batches "
        "(default: $BATCHGEN_CACHE_DIR/reuse.sqlite, else ~/.cache/batchgen/reuse.sqlite)")  # fmt: skip
    add("--allow-unknown-files", action="store_true", help="write into an output folder that holds images "
        "batchgen has no record of (default: off: refused)")  # fmt: skip
    _add_plan_options(run)
    add("--sidecar", action="store_true", help="write next to each image a JSON file (lamp.json for lamp.png) "
        "with its job id, prompt, options, run id and metadata (default: off)")  # fmt: skip
    add("--skip-url-check", action="store_true", help="do not ask reference image URLs before paying for their "
        "jobs (default: off: each is asked once, and a job with a dead one fails unpaid)")  # fmt: skip
    add("--dry-run", action="store_true", help="print what would be created now and what it would cost; send "
        "nothing, write nothing (default: off)")  # fmt: skip
    add("--max-runs", type=positive_int, metavar="N", help="create at most N runs in this invocation, then "
        "collect them and exit 7 (default: no cap)")  # fmt: skip
    add("--max-credits", type=positive_float, metavar="C", help="spend at most C credits in this invocation "
        "(needs --price), then exit 7 (default: no cap)")  # fmt: skip
    add("--progress", choices=("auto", "bar", "lines", "none"), default="auto", help=argparse.SUPPRESS)
    run.set_defaults(handler=_run)

    check = commands.add_parser(
        "validate",
        help="check a manifest and print what a run would create and cost, without sending anything",
        description="Check a manifest and print its job count and what a run would create and cost, "
        "or every problem with its place (exit 2). Sends nothing.",
    )
    check.add_argument("manifest", type=given_path, help="YAML, CSV or JSONL manifest")
    check.add_argument("--check-urls", action="store_true", help="also ask every distinct reference image URL "
        "once and list the dead ones with the jobs using them (default: off)")  # fmt: skip
    add_location(check)
    _add_plan_options(check)
    check.set_defaults(handler=_validate)


def _add_plan_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--price",
        type=_prices,
        metavar="KEY=CREDITS,...",
        help="credits per run, by quality or model:quality (e.g. high=2,medium=1,default=1), or one number "
        "for every run; "
        "adds to (and overrides) the manifest's pricing (default: the manifest's pricing, if any)",
    )


def _prices(text: str) -> dict[str, float]:
    from ..errors import UsageError
    from ..pricing import parse_prices

    try:
        return dict(parse_prices(text).table)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _run(args: argparse.Namespace) -> int:
    from ..events import Events, Log

    if args.simulate and args.base_url is not None:
        print(
            "batchgen: error: --simulate and --base-url name two different APIs: --simulate uses the built-in "
            "simulator, --base-url a real one; give one of them",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if args.dry_run:
        return _print_plan(args)

    secrets = [os.environ.get("RUNBASE_API_KEY", "").strip()]
    log_file: TextIO | None = None
    if args.log_file is not None:
        try:
            log_file = open(args.log_file, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 - closed below
        except OSError as exc:
            print(f"batchgen: error: cannot open --log-file {args.log_file}: {exc.strerror or exc}", file=sys.stderr)
            return EXIT_USAGE if isinstance(exc, (FileNotFoundError, IsADirectoryError)) else EXIT_LOCAL
    json_lines = args.log_format == "json"
    log = Log(log_file or sys.stderr, json_lines=json_lines, secrets=secrets)
    # With --log-file, standard error still gets the final summary (cron mails it).
    summary_log = Log(sys.stderr, json_lines=json_lines, secrets=secrets) if log_file is not None else None
    events = Events()
    events.output = log
    refused = _Counter(events)
    if not args.quiet:
        kinds = None if json_lines else ("failed", "stopped", "kept")
        events.listen(log.event, kinds)
    progress = "none" if args.no_progress or args.quiet else ("lines" if log_file is not None else args.progress)
    started = time.time()
    if not args.quiet:
        log.line(
            f"running {args.manifest} into {args.output}/ (batchgen {__version__})",
            kind="started",
            manifest=str(args.manifest),
            output_dir=str(args.output),
            pid=os.getpid(),
        )
    try:
        try:
            result = _run_batch(args, progress, events)
        except KeyboardInterrupt:  # before the runner handles signals itself: while its modules load
            result = _interrupted_starting(args)
        finished = time.time()
        summary = _summary(args, result, started, finished, refused.count)
        for target in (log, summary_log):
            if target is not None:
                _print_summary(target, result, summary, quiet=args.quiet)
        from ..lastrun import write_last_run

        write_last_run(args.output, _scrubbed(log, summary))
    finally:
        if log_file is not None:
            log_file.close()
    return result.exit_code


def _run_batch(args: argparse.Namespace, progress: str, events: Events) -> BatchResult:
    with _signals_held() as held:  # KeyboardInterrupt raised inside an import can be swallowed there, and lost
        from ..runner import run_batch
    if held:
        raise KeyboardInterrupt
    return run_batch(
        args.manifest,
        output_dir=args.output,
        ledger_path=args.ledger,
        concurrency=args.concurrency,
        rate=args.rate,
        max_attempts=args.max_attempts,
        retry_failed=args.retry_failed,
        simulate=args.simulate,
        base_url=args.base_url,
        timeout=args.timeout,
        run_timeout=args.run_timeout,
        max_download_bytes=int(args.max_download_mb * 1024 * 1024),
        progress=progress,
        handle_signals=True,
        allow_unknown_files=args.allow_unknown_files,
        reuse=not args.no_reuse,
        reuse_index=args.reuse_index,
        max_runs=args.max_runs,
        max_credits=args.max_credits,
        prices=args.price or {},
        sidecar=args.sidecar,
        check_references=not args.skip_url_check,
        events=events,
    )


@contextmanager
def _signals_held() -> Iterator[list[int]]:
    """SIGINT and SIGTERM noted, not raised, in the block: the list says whether one came."""
    held: list[int] = []
    previous = {signum: signal.signal(signum, lambda signum, frame: held.append(signum)) for signum in SIGNALS}
    try:
        yield held
    finally:
        for signum, handler in previous.items():
            if handler is not None:
                signal.signal(signum, handler)


def _interrupted_starting(args: argparse.Namespace) -> BatchResult:
    from ..models import Outcome
    from ..outcomes import BatchResult

    message = "interrupted while starting, before anything was sent; nothing was lost. Run the same command again."
    return BatchResult(Outcome.INTERRUPTED, ExitCode.INTERRUPTED, message, output_dir=args.output)


class _Counter:
    """Jobs whose create the API refused for their input (400) in this run."""

    def __init__(self, events: Events):
        self.count = 0
        events.listen(self, ("failed",))

    def __call__(self, event: Any) -> None:
        if event.fields.get("error_kind") == "rejected":
            self.count += 1


def _summary(
    args: argparse.Namespace, result: BatchResult, started: float, finished: float, refused: int
) -> dict[str, Any]:
    """What last-run.json holds, and the JSON log's ``finished`` event."""
    from ..events import iso_time

    s, counts = result.stats, result.counts
    output_dir = args.output.absolute()
    return {
        "batchgen": __version__,
        "manifest": str(args.manifest.absolute()),
        "output_dir": str(output_dir),
        "ledger": str((args.ledger or output_dir / "batchgen.sqlite").absolute()),
        "cwd": os.getcwd(),
        "argv": list(getattr(args, "argv", [])),
        "started": iso_time(started),
        "finished": iso_time(finished),
        "elapsed_seconds": round(finished - started, 3),
        "exit_code": int(result.exit_code),
        "outcome": result.outcome.value,
        "message": result.message,
        "jobs": counts,
        "this_run": {
            "succeeded": s.succeeded,
            "failed": s.failed,
            "runs_created": s.created,
            "reused": s.reused,
            "refused": refused,
            "rate_limited": s.rate_limited,
            "retries": s.retries,
            "failed_runs": s.failed_runs,
            "files_saved": s.downloads,
            "possible_double_charges": s.unknown_creates,
        },
        "possible_double_charges": result.unknown_creates_total,
        "notes": list(result.notes),
    }


def _scrubbed(log: Log, summary: dict[str, Any]) -> dict[str, Any]:
    scrubbed = log.scrub.value(summary)
    assert isinstance(scrubbed, dict)
    return scrubbed


def _print_summary(log: Log, result: BatchResult, summary: dict[str, Any], *, quiet: bool) -> None:
    if log.json_lines:
        from ..events import Event

        for note in result.notes if not quiet else ():
            log.line(note)
        fields = {k: v for k, v in summary.items() if k not in ("cwd", "argv", "batchgen")}
        log.event(Event("finished", time.time(), fields))
        return
    if not quiet:
        for note in result.notes:
            log.line(note)
    if result.counts:
        c, s = result.counts, result.stats
        log.line(
            f"{c.get('succeeded', 0)} succeeded, {c.get('failed', 0)} failed, "
            f"{c.get('pending', 0) + c.get('running', 0)} pending — this run: {s.created} {plural(s.created, 'run')} "
            f"created, {s.downloads} {plural(s.downloads, 'file')} saved, {s.reused} reused, {s.retries} "
            f"{plural(s.retries, 'retry', 'retries')}, {s.rate_limited} rate-limited, {s.failed_runs} failed "
            f"{plural(s.failed_runs, 'run')}, in {result.elapsed:.1f} s"
        )
        if result.unknown_creates_total:
            log.line(
                f"{result.unknown_creates_total} {plural(result.unknown_creates_total, 'create')} "
                "never answered (may have been charged "
                "without a result); see `batchgen status`"
            )
        if result.output_dir is not None and c.get("succeeded") and not quiet:
            log.line(f"images in {result.output_dir}/")
    # "error" for what the user must fix; a batch that stopped for a reason is not an error.
    is_error = result.exit_code in (ExitCode.USAGE, ExitCode.UNAUTHORIZED, ExitCode.LOCAL)
    log.line(("error: " if is_error else "") + result.message + f" (exit {int(result.exit_code)})")


# -- validate ------------------------------------------------------------------------


def _validate(args: argparse.Namespace) -> int:
    from ..errors import ManifestError

    try:
        plan = _plan(args)  # one pass: the plan reads, and checks, every job
    except ManifestError as exc:
        return _problems(args, exc)
    if args.check_urls and _print_dead_links(args):
        return EXIT_USAGE
    print(f"{args.manifest}: {plan.jobs} {plural(plan.jobs, 'job')}, valid")
    from ..planning import describe

    print("\n".join(describe(plan)[1:]))
    return 0


def _problems(args: argparse.Namespace, exc: ManifestError) -> int:
    for problem in exc.problems:
        print(problem, file=sys.stderr)
    print(
        f"batchgen: {exc.count} {plural(exc.count, 'problem')} in {args.manifest}; nothing was sent",
        file=sys.stderr,
    )
    return EXIT_USAGE


def _print_dead_links(args: argparse.Namespace) -> int:
    """validate --check-urls: the dead reference URLs, with the jobs that use them; returns how many."""
    import anyio

    from ..api import DEFAULT_BASE_URL, RunbaseClient
    from ..manifest import iter_jobs
    from ..references import check_all

    async def check() -> tuple[dict[str, Any], int]:
        async with RunbaseClient(DEFAULT_BASE_URL, "not-used") as client:  # only its key-less file client
            return await check_all(client, iter_jobs(args.manifest))

    dead, unknown = anyio.run(check)
    if unknown:
        them = plural(unknown, "it", "them")
        print(
            f"batchgen: {unknown} reference image {plural(unknown, 'URL')} could not be checked from here "
            f"(no answer, a timeout or a server error); run will try {them}, as the API may reach {them}",
            file=sys.stderr,
        )
    for url, link in dead.items():
        more = f" and {link.uses - len(link.jobs)} more" if link.uses > len(link.jobs) else ""
        print(f"dead reference image: {url} ({link.reason}); used by {', '.join(link.jobs)}{more}", file=sys.stderr)
    if dead:
        its, that = plural(len(dead), "its", "their"), plural(len(dead), "that URL", "those URLs")
        print(
            f"batchgen: {len(dead)} reference image {plural(len(dead), 'URL')} of {args.manifest} "
            f"{plural(len(dead), 'does', 'do')} not answer: `run` would fail {its} jobs without paying for them; "
            f"fix {that}",
            file=sys.stderr,
        )
    return len(dead)


def _print_plan(args: argparse.Namespace) -> int:
    """What `run` would create now and what it would cost; nothing sent, nothing written."""
    from ..errors import ManifestError
    from ..folder import OutputFolder, mixed_folder
    from ..planning import describe

    if OutputFolder(args.output).made_by_other("simulator" if args.simulate else "api") is not None:
        print(f"batchgen: error: {mixed_folder(args.output, args.simulate)}", file=sys.stderr)
        return EXIT_USAGE
    try:
        plan = _plan(args)
    except ManifestError as exc:
        return _problems(args, exc)
    print(f"{args.manifest}: dry run, nothing is sent")
    print("\n".join(describe(plan)))
    return 0


def _plan(args: argparse.Namespace) -> Plan:
    """The plan of `run` (and `validate`) with these arguments; ManifestError if the manifest has problems."""
    from ..ledger.reuse import ReuseIndex, default_index_path
    from ..manifest import read_manifest
    from ..models import DEFAULT_BASE_URL, LEDGER_NAME
    from ..planning import plan_manifest
    from ..pricing import job_prices

    ledger = args.ledger or args.output / LEDGER_NAME
    index_path = getattr(args, "reuse_index", None) or default_index_path()
    index = None
    if not getattr(args, "no_reuse", False) and index_path.is_file():
        # The same service as `run` would use: a simulator's images never count for the real API.
        base_url = getattr(args, "base_url", None) or os.environ.get("RUNBASE_BASE_URL") or DEFAULT_BASE_URL
        index = ReuseIndex(index_path, "simulator" if getattr(args, "simulate", False) else base_url)
    try:
        return plan_manifest(
            read_manifest(args.manifest),
            ledger_path=ledger,
            reuse_index=index,
            prices=job_prices(args.manifest, args.price or {}),
            retry_failed=getattr(args, "retry_failed", False),
        )
    finally:
        if index is not None:
            index.close()
