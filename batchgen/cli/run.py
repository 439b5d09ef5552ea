"""``batchgen run`` and ``batchgen validate``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import EXIT_USAGE, add_location, positive_float, positive_int

if TYPE_CHECKING:
    from ..runner import BatchResult


def add_parsers(commands: Any) -> None:
    run = commands.add_parser("run", help="generate every job of a manifest (run again to resume)")
    run.add_argument("manifest", type=Path, help="YAML, CSV or JSONL manifest")
    add_location(run)
    run.add_argument("--concurrency", type=positive_int, default=8, help="runs in flight at most (default 8)")
    run.add_argument("--rate", type=positive_float, help="run creations per second at most, if you know your limit")
    run.add_argument("--max-attempts", type=positive_int, default=3, help="runs tried per job (default 3)")
    run.add_argument("--retry-failed", action="store_true", help="try jobs that failed for good again")
    run.add_argument("--simulate", action="store_true", help="use the built-in simulator: no key, no network")
    run.add_argument("--base-url", help="API base URL (default: $RUNBASE_BASE_URL or https://runbase.net/api/v1)")
    run.add_argument("--timeout", type=positive_float, default=30.0, help="seconds to wait for an API answer")
    run.add_argument(
        "--run-timeout",
        type=positive_float,
        default=900.0,
        help="seconds before an unfinished run is tried again",
    )
    run.add_argument("--max-download-mb", type=positive_float, default=100.0, help="size cap per output file")
    run.add_argument("--no-progress", action="store_true", help="no progress bar or status lines")
    _add_plan_options(run)
    run.add_argument(
        "--sidecar",
        action="store_true",
        help="write next to each image a JSON file (lamp.json for lamp.png) with its job id, prompt, options, "
        "run id and metadata",
    )
    run.add_argument(
        "--skip-url-check",
        action="store_true",
        help="do not ask reference image URLs before paying for their jobs (by default each is asked once, "
        "and a job with a dead one fails unpaid)",
    )
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="print what would be created now and what it would cost; send nothing, write nothing",
    )
    run.add_argument(
        "--max-runs",
        type=positive_int,
        metavar="N",
        help="create at most N runs in this invocation, then collect them and exit 7 (default: no cap)",
    )
    run.add_argument(
        "--max-credits",
        type=positive_float,
        metavar="C",
        help="spend at most C credits in this invocation (needs --price), then exit 7 (default: no cap)",
    )
    run.add_argument(
        "--no-reuse",
        action="store_true",
        help="pay for every job's own run, even when an identical request's image is at hand",
    )
    run.add_argument(
        "--reuse-index",
        type=Path,
        metavar="PATH",
        help="the index of images by request shared by your batches "
        "(default: $BATCHGEN_CACHE_DIR/reuse.sqlite, else ~/.cache/batchgen/reuse.sqlite)",
    )
    run.add_argument(
        "--allow-unknown-files",
        action="store_true",
        help="write into an output folder that holds images batchgen has no record of (refused by default)",
    )
    run.add_argument("--progress", choices=("auto", "bar", "lines", "none"), default="auto", help=argparse.SUPPRESS)
    run.set_defaults(handler=_run)

    check = commands.add_parser(
        "validate", help="check a manifest and print what a run would create and cost, without sending anything"
    )
    check.add_argument("manifest", type=Path)
    check.add_argument(
        "--check-urls",
        action="store_true",
        help="also ask every distinct reference image URL once and list the dead ones with the jobs using them",
    )
    add_location(check)
    _add_plan_options(check)
    check.set_defaults(handler=_validate)


def _add_plan_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--price",
        type=_prices,
        metavar="KEY=CREDITS,...",
        help="credits per run, by quality or model:quality (e.g. high=2,medium=1,default=1); "
        "adds to (and overrides) the manifest's pricing",
    )


def _prices(text: str) -> dict[str, float]:
    from ..errors import UsageError
    from ..pricing import parse_prices

    try:
        return dict(parse_prices(text).table)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _run(args: argparse.Namespace) -> int:
    from ..runner import run_batch

    if args.dry_run:
        return _print_plan(args)
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
        allow_unknown_files=args.allow_unknown_files,
        reuse=not args.no_reuse,
        reuse_index=args.reuse_index,
        max_runs=args.max_runs,
        max_credits=args.max_credits,
        prices=args.price or {},
        sidecar=args.sidecar,
        check_references=not args.skip_url_check,
    )
    _print_summary(result)
    return result.exit_code


def _print_summary(result: BatchResult) -> None:
    from ..runner import ExitCode

    out = sys.stderr
    for note in result.notes:
        print(f"batchgen: {note}", file=out)
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
    from ..errors import ManifestError
    from ..manifest import validate

    try:
        count = validate(args.manifest)
    except ManifestError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"batchgen: {len(exc.problems)} problem(s) in {args.manifest}; nothing was sent", file=sys.stderr)
        return EXIT_USAGE
    print(f"{args.manifest}: {count} job{'s' if count != 1 else ''}, valid")
    if args.check_urls and _print_dead_links(args):
        return EXIT_USAGE
    return _print_plan(args, header=False)


def _print_dead_links(args: argparse.Namespace) -> int:
    """validate --check-urls: the dead reference URLs, with the jobs that use them; returns how many."""
    import anyio

    from ..api import DEFAULT_BASE_URL, RunbaseClient
    from ..manifest import iter_jobs
    from ..references import check_all

    async def check() -> dict[str, Any]:
        async with RunbaseClient(DEFAULT_BASE_URL, "not-used") as client:  # only its key-less file client
            return await check_all(client, iter_jobs(args.manifest))

    dead = anyio.run(check)
    for url, link in dead.items():
        more = f" and {link.uses - len(link.jobs)} more" if link.uses > len(link.jobs) else ""
        print(f"dead reference image: {url} ({link.reason}); used by {', '.join(link.jobs)}{more}", file=sys.stderr)
    if dead:
        print(
            f"batchgen: {len(dead)} reference image URL(s) do not answer: their jobs would be paid for and fail",
            file=sys.stderr,
        )
    return len(dead)


def _print_plan(args: argparse.Namespace, *, header: bool = True) -> int:
    """What `run` would create now and what it would cost; nothing sent, nothing written."""
    from ..api import DEFAULT_BASE_URL
    from ..errors import ManifestError
    from ..ledger.reuse import ReuseIndex, default_index_path
    from ..manifest import iter_jobs
    from ..planning import describe, plan
    from ..runner import LEDGER_NAME, job_prices

    ledger = args.ledger or args.output / LEDGER_NAME
    index_path = getattr(args, "reuse_index", None) or default_index_path()
    index = None
    if not getattr(args, "no_reuse", False) and index_path.is_file():
        # The same service as `run` would use: a simulator's images never count for the real API.
        base_url = getattr(args, "base_url", None) or os.environ.get("RUNBASE_BASE_URL") or DEFAULT_BASE_URL
        index = ReuseIndex(index_path, "simulator" if getattr(args, "simulate", False) else base_url)
    try:
        result = plan(
            iter_jobs(args.manifest),
            ledger_path=ledger,
            reuse_index=index,
            prices=job_prices(args.manifest, args.price or {}),
            retry_failed=getattr(args, "retry_failed", False),
        )
    except ManifestError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"batchgen: {len(exc.problems)} problem(s) in {args.manifest}; nothing was sent", file=sys.stderr)
        return EXIT_USAGE
    finally:
        if index is not None:
            index.close()
    lines = describe(result)
    if header:
        print(f"{args.manifest}: dry run, nothing is sent")
    print("\n".join(lines[1:] if not header else lines))
    return 0
