"""The command line: parse arguments, call the library, print, map outcomes to exit codes.

Nothing here that a Python caller could not do with ``batchgen.run_batch``,
``batchgen.manifest`` and ``batchgen.ledger``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__

if TYPE_CHECKING:
    from .ledger import Ledger
    from .runner import BatchResult

LEDGER_NAME = "batchgen.sqlite"  # runner.LEDGER_NAME; repeated so --help needs no heavy import
EXIT_USAGE, EXIT_LOCAL, EXIT_INTERRUPTED = 2, 5, 130


def main(argv: list[str] | None = None) -> int:
    # SIGTERM before the run installs its own handling (while modules load, while the
    # manifest is read) ends the command like Ctrl-C: exit 130, every transaction rolled back.
    try:
        previous = signal.signal(signal.SIGTERM, _interrupt)
        try:
            return _main(argv)
        finally:
            signal.signal(signal.SIGTERM, previous)
    except KeyboardInterrupt:  # a signal landing outside _main's own handling
        print("batchgen: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _main(argv: list[str] | None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    from .errors import BatchgenError

    try:
        return int(args.handler(args))
    except KeyboardInterrupt:
        print("batchgen: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `batchgen export | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except BatchgenError as exc:
        print(f"batchgen: error: {exc}", file=sys.stderr)
        return EXIT_LOCAL


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="batchgen",
        description="Generate a folder of images from a manifest of prompts through the Runbase API.",
    )
    parser.add_argument("--version", action="version", version=f"batchgen {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="generate every job of a manifest (run again to resume)")
    run.add_argument("manifest", type=Path, help="YAML, CSV or JSONL manifest")
    _add_location(run)
    run.add_argument("--concurrency", type=_positive_int, default=8, help="runs in flight at most (default 8)")
    run.add_argument("--rate", type=_positive_float, help="run creations per second at most, if you know your limit")
    run.add_argument("--max-attempts", type=_positive_int, default=3, help="runs tried per job (default 3)")
    run.add_argument("--retry-failed", action="store_true", help="try jobs that failed for good again")
    run.add_argument("--simulate", action="store_true", help="use the built-in simulator: no key, no network")
    run.add_argument("--base-url", help="API base URL (default: $RUNBASE_BASE_URL or https://runbase.net/api/v1)")
    run.add_argument("--timeout", type=_positive_float, default=30.0, help="seconds to wait for an API answer")
    run.add_argument(
        "--run-timeout",
        type=_positive_float,
        default=900.0,
        help="seconds before an unfinished run is tried again",
    )
    run.add_argument("--max-download-mb", type=_positive_float, default=100.0, help="size cap per output file")
    run.add_argument("--no-progress", action="store_true", help="no progress bar or status lines")
    run.add_argument("--progress", choices=("auto", "bar", "lines", "none"), default="auto", help=argparse.SUPPRESS)
    run.set_defaults(handler=_run)

    check = commands.add_parser("validate", help="check a manifest without sending anything")
    check.add_argument("manifest", type=Path)
    check.set_defaults(handler=_validate)

    status = commands.add_parser("status", help="counts by state, attempts and last errors of a batch")
    _add_location(status)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(handler=_status)

    export = commands.add_parser("export", help="one record per job, to standard output")
    _add_location(export)
    export.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    export.set_defaults(handler=_export)

    simulate = commands.add_parser("simulate", help="serve the Runbase simulator on this machine")
    simulate.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    simulate.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    simulate.add_argument("--latency", type=float, default=1.0, help="seconds a generation takes (median)")
    simulate.add_argument("--latency-sigma", type=float, default=0.0, help="lognormal spread of generation time")
    simulate.add_argument("--failure-rate", type=float, default=0.0, help="share of runs that fail")
    simulate.add_argument("--create-rate", type=float, help="creates per second allowed (429 above)")
    simulate.add_argument("--request-rate", type=float, help="API requests per second allowed (429 above)")
    simulate.add_argument("--no-retry-after", action="store_true", help="answer 429 without Retry-After")
    simulate.add_argument("--credits", type=int, help="runs allowed before 402")
    simulate.add_argument("--api-key", help="accept only this key (default: any)")
    simulate.add_argument("--output-ttl", type=float, help="seconds output URLs stay valid")
    simulate.add_argument("--outputs-per-run", type=int, default=1)
    simulate.add_argument("--fault", action="append", default=[], metavar="NAME=P", help="inject a fault")
    simulate.add_argument("--stuck-rate", type=float, default=0.0, help="share of runs that never finish")
    simulate.add_argument("--seed", type=int, default=0)
    simulate.set_defaults(handler=_simulate)
    return parser


def _add_location(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", type=Path, default=Path("output"), help="output folder (default output/)")
    parser.add_argument("--ledger", type=Path, help=f"ledger file (default OUTPUT/{LEDGER_NAME})")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not at least 1")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


# -- run ---------------------------------------------------------------------------


def _run(args: argparse.Namespace) -> int:
    from .runner import run_batch

    result = run_batch(
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
        progress="none" if args.no_progress else args.progress,
        handle_signals=True,
    )
    _print_summary(result)
    return result.exit_code


def _print_summary(result: BatchResult) -> None:
    from .runner import ExitCode

    out = sys.stderr
    if result.counts:
        c, s = result.counts, result.stats
        print(
            f"batchgen: {c.get('succeeded', 0)} succeeded, {c.get('failed', 0)} failed, "
            f"{c.get('pending', 0) + c.get('running', 0)} pending — this run: {s.created} runs created, "
            f"{s.downloads} files saved, {s.retries} retries, {s.rate_limited} rate-limited, "
            f"{s.failed_runs} failed runs, in {result.elapsed:.1f} s",
            file=out,
        )
        if result.unknown_creates_total:
            print(
                f"batchgen: {result.unknown_creates_total} create(s) never answered (may have been charged "
                "without a result); see `batchgen status`",
                file=out,
            )
        if result.output_dir is not None and c.get("succeeded"):
            print(f"batchgen: images in {result.output_dir}/", file=out)
    # "error" for what the user must fix; a batch that stopped for a reason is not an error.
    is_error = result.exit_code in (ExitCode.USAGE, ExitCode.UNAUTHORIZED, ExitCode.LOCAL)
    print(("batchgen: error: " if is_error else "batchgen: ") + result.message, file=out)


# -- validate ------------------------------------------------------------------------


def _validate(args: argparse.Namespace) -> int:
    from .errors import ManifestError
    from .manifest import validate

    try:
        count = validate(args.manifest)
    except ManifestError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"batchgen: {len(exc.problems)} problem(s) in {args.manifest}; nothing was sent", file=sys.stderr)
        return EXIT_USAGE
    print(f"{args.manifest}: {count} job{'s' if count != 1 else ''}, valid")
    return 0


# -- status and export ------------------------------------------------------------------


def _open_existing(args: argparse.Namespace) -> Ledger:
    from .errors import BatchgenError
    from .ledger import Ledger

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
    output_dir = Path(ledger.output_dir) if ledger.output_dir else ledger.path.parent
    for record in ledger.iter_export():
        outputs = record.pop("outputs")
        record["outputs"] = [str(output_dir / o["path"]) for o in outputs]
        record["sha256"] = [o["sha256"] for o in outputs]
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


# -- simulate -----------------------------------------------------------------------------


def _simulate(args: argparse.Namespace) -> int:
    from .simulator import SimConfig, serve

    faults: dict[str, float] = {}
    for item in args.fault:
        name, _, probability = item.partition("=")
        try:
            faults[name.strip()] = float(probability)
        except ValueError:
            print(f"batchgen: error: --fault takes NAME=PROBABILITY, not {item!r}", file=sys.stderr)
            return EXIT_USAGE
    try:
        config = SimConfig(
            latency=args.latency,
            latency_sigma=args.latency_sigma,
            failure_rate=args.failure_rate,
            create_rate=args.create_rate,
            request_rate=args.request_rate,
            retry_after=not args.no_retry_after,
            credits=args.credits,
            api_key=args.api_key,
            output_ttl=args.output_ttl,
            outputs_per_run=args.outputs_per_run,
            faults=faults,
            stuck_rate=args.stuck_rate,
            seed=args.seed,
        )
    except ValueError as exc:
        print(f"batchgen: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    serve(config, host=args.host, port=args.port)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
