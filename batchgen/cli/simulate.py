"""``batchgen simulate``: serve the API simulator on this machine."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from . import EXIT_USAGE


def add_parsers(commands: Any) -> None:
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


def _simulate(args: argparse.Namespace) -> int:
    from ..simulator import SimConfig, serve

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
