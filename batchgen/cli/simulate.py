"""``batchgen simulate``: serve the Runbase API simulator on this machine.

Serving over sockets needs uvicorn, the optional extra: ``pip install 'batchgen[sim]'``
(``batchgen run --simulate`` runs the simulator in-process and needs nothing more). A busy
port, a bad address or a missing uvicorn is one line on standard error and exit 2.

Options (rates are per API key; times in seconds):

``--host ADDR`` (127.0.0.1), ``--port N`` (8000; 0 picks a free one; 0-65535)
    where to listen; the first line printed is the base URL for RUNBASE_BASE_URL.
``--latency S`` (1.0), ``--latency-sigma X`` (0), ``--failure-rate P`` (0), ``--stuck-rate P`` (0)
    generation time (median; lognormal spread X), share of runs failed, share never finishing.
``--create-rate SCHEDULE``, ``--request-rate SCHEDULE`` (unlimited)
    creates / API requests per second: ``30``, or a schedule ``30,15@6,30@12`` (30/s, then
    15/s from second 6, then 30/s from second 12, counted from the server's start).
``--create-burst N``, ``--request-burst N`` (a tenth of the rate in force, at least 1)
    the token bucket's size; ``--create-burst`` equal to the rate gives a bucket of one second.
``--polls-count`` (off)
    polls take a token from the create bucket too: one limit shared by creates and polls.
``--max-running N`` (unlimited)
    a create is answered 429 while the key has N runs created and not finished.
``--retry-after MODE`` (precise)
    precise: whole seconds until a token, rounded up; precise-ms: that and ``retry-after-ms``;
    fixed:N: always N seconds; date: an HTTP-date; none: no header. ``--no-retry-after`` = none.
``--violation-grace S`` (0)
    requests arriving within S seconds after a 429 count as already in flight, not as violations.
``--credits N`` (unlimited), ``--api-key KEY`` (any key), ``--output-ttl S`` (never expire),
``--outputs-per-run N|MIN-MAX`` (1), ``--seed N`` (0)
``--fault NAME=P`` (none; repeatable), ``--not-found-seconds S`` (2), ``--huge-body-mb M`` (256),
``--slow-seconds S`` (30): faults and their sizes; ``--help`` lists every fault.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from . import EXIT_USAGE, positive_float, positive_int


def add_parsers(commands: Any) -> None:
    from ..simulator.catalogue import CATALOGUE

    width = max(len(name) for name in CATALOGUE)
    faults = "\n".join(f"  {name:<{width}}  {text}" for name, text in CATALOGUE.items())
    simulate = commands.add_parser(
        "simulate",
        help="serve the Runbase simulator on this machine",
        description="Serve a simulated Runbase API over HTTP (needs uvicorn: pip install 'batchgen[sim]'). "
        "Rates are per API key; times are seconds.",
        epilog=f"faults (--fault NAME=PROBABILITY, repeatable):\n{faults}\n\n"
        "Example: batchgen simulate --port 0 --create-rate 30,15@6,30@12 --create-burst 3 "
        "--retry-after date --fault not_found_after_create=0.2",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = simulate.add_argument
    add("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    add("--port", type=int, default=8000, help="TCP port, 0-65535 (default 8000; 0 picks a free one)")
    add("--latency", type=_seconds, default=1.0, metavar="S", help="median generation time in seconds (default 1.0)")
    add("--latency-sigma", type=_seconds, default=0.0, metavar="X", help="lognormal spread of it (default 0: fixed)")
    add("--failure-rate", type=_share, default=0.0, metavar="P", help="share of runs that fail, 0-1 (default 0)")
    add("--stuck-rate", type=_share, default=0.0, metavar="P", help="share of runs never finishing, 0-1 (default 0)")
    add("--create-rate", type=_schedule, metavar="SCHEDULE", help="creates per second per key, e.g. 30 or "
        "30,15@6,30@12 (30/s, 15/s from second 6, 30/s from second 12) (default unlimited)")  # fmt: skip
    add("--create-burst", type=positive_int, metavar="N", help="create bucket size in requests "
        "(default a tenth of the rate in force, at least 1)")  # fmt: skip
    add("--request-rate", type=_schedule, metavar="SCHEDULE", help="API requests (creates and polls) per second "
        "per key, same syntax (default unlimited)")  # fmt: skip
    add("--request-burst", type=positive_int, metavar="N", help="request bucket size (default as --create-burst)")
    add("--polls-count", action="store_true", help="polls take create tokens too: one limit (default off)")
    add("--max-running", type=positive_int, metavar="N", help="unfinished runs per key before creates get 429 "
        "(default unlimited)")  # fmt: skip
    add("--retry-after", default="precise", metavar="MODE", help="Retry-After on 429: precise (seconds, rounded "
        "up), precise-ms (also retry-after-ms), fixed:N, date, none (default precise)")  # fmt: skip
    add("--no-retry-after", action="store_true", help="same as --retry-after none")
    add("--violation-grace", type=_seconds, default=0.0, metavar="S", help="seconds after a 429 during which a "
        "request counts as already in flight, not as a Retry-After violation (default 0)")  # fmt: skip
    add("--credits", type=int, metavar="N", help="runs that can be created before 402 (default unlimited)")
    add("--api-key", metavar="KEY", help="accept only this bearer key (default any non-empty key)")
    add("--output-ttl", type=positive_float, metavar="S", help="seconds an output URL stays valid (default forever)")
    add("--outputs-per-run", default="1", metavar="N|MIN-MAX", help="images per run, or a range drawn per run "
        "(default 1)")  # fmt: skip
    add("--fault", action="append", default=[], metavar="NAME=P", help="inject a fault with probability P, "
        "repeatable; names below (default none)")  # fmt: skip
    add("--not-found-seconds", type=_seconds, default=2.0, metavar="S", help="how long not_found_after_create "
        "answers 404, in seconds (default 2)")  # fmt: skip
    add("--huge-body-mb", type=positive_float, default=256.0, metavar="M", help="size of the body_huge fault's body "
        "in MiB (default 256)")  # fmt: skip
    add("--slow-seconds", type=_seconds, default=30.0, metavar="S", help="delay of the slow fault (default 30)")
    add("--seed", type=int, default=0, metavar="N", help="seed of outcomes, faults, ids and images (default 0)")
    simulate.set_defaults(handler=_simulate)


def _simulate(args: argparse.Namespace) -> int:
    from ..simulator.config import SimConfig

    faults: dict[str, float] = {}
    for item in args.fault:
        name, equals, probability = item.partition("=")
        try:
            faults[name.strip()] = float(probability) if equals else 1.0
        except ValueError:
            return _usage(f"--fault takes NAME=PROBABILITY, not {item!r}")
    try:
        config = SimConfig(
            latency=args.latency,
            latency_sigma=args.latency_sigma,
            failure_rate=args.failure_rate,
            stuck_rate=args.stuck_rate,
            create_rate=args.create_rate,
            create_burst=args.create_burst,
            request_rate=args.request_rate,
            request_burst=args.request_burst,
            polls_count=args.polls_count,
            max_running=args.max_running,
            retry_after="none" if args.no_retry_after else args.retry_after,
            violation_grace=args.violation_grace,
            credits=args.credits,
            api_key=args.api_key,
            output_ttl=args.output_ttl,
            outputs_per_run=args.outputs_per_run,
            faults=faults,
            not_found_seconds=args.not_found_seconds,
            huge_body_bytes=max(1, round(args.huge_body_mb * 1024 * 1024)),
            slow_seconds=args.slow_seconds,
            seed=args.seed,
        )
    except ValueError as exc:
        return _usage(str(exc))
    from ..simulator.app import Simulator
    from ..simulator.server import ServerError, serve

    try:
        serve(Simulator(config), host=args.host, port=args.port)
    except ServerError as exc:
        return _usage(str(exc))
    return 0


def _usage(message: str) -> int:
    print(f"batchgen: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _schedule(text: str) -> str:
    from ..simulator.limits import RateSchedule

    try:
        RateSchedule.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("rate: ")) from None
    return text


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text} is not a number of seconds >= 0")
    return value


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number between 0 and 1") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text} is not between 0 and 1")
    return value
