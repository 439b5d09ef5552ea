"""The command line: parse arguments, call the library, print, map outcomes to exit codes.

Nothing here that a Python caller could not do with ``batchgen.run_batch``,
``batchgen.manifest`` and ``batchgen.ledger``. Each command lives in a module of
this package that adds its own parser (``add_parser``) and handler; this module
only builds the parser and turns what escapes a handler into an exit code.
Heavy modules (httpx, anyio, the runner) are imported by handlers, so that
``--help`` and signal handling are in place at once.
"""

from __future__ import annotations

import argparse
import io
import os
import signal
import sys
from pathlib import Path

from .. import __version__

LEDGER_NAME = "batchgen.sqlite"  # models.LEDGER_NAME; repeated so --help imports nothing more
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
    if isinstance(sys.stdout, io.TextIOWrapper):
        # A terminal or locale that cannot show a character (an ASCII or Latin-1 one) gets it escaped, as
        # standard error does, instead of a traceback. `export` writes UTF-8 whatever the locale (see there).
        sys.stdout.reconfigure(errors="backslashreplace")
    parser = build_parser()
    typed = sys.argv[1:] if argv is None else argv
    if not typed:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if typed[0] in commands.choices:  # a misspelt option first: argparse would complain of a missing one
        before = typed[1 : typed.index("--")] if "--" in typed else typed[1:]  # after "--", no options
        options = [word for word in before if word.startswith("--")]
        _unknown_arguments(commands.choices[typed[0]], options, prefixes=True)
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        _unknown_arguments(commands.choices[args.command], unknown)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # as typed: last-run.json records it
    from ..errors import BatchgenError

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


def _unknown_arguments(sub: argparse.ArgumentParser, words: list[str], *, prefixes: bool = False) -> None:
    """Exit 2 with the usage of the command typed (not the top level's) and the option a typo was meant to be.
    ``prefixes``: ``words`` are the options typed, and those that begin a known option (argparse takes unique
    prefixes) pass; nothing happens when all do."""
    import difflib

    known = [option for action in sub._actions for option in action.option_strings if option.startswith("--")]
    if prefixes:
        words = [word for word in words if not any(o.startswith(word.split("=", 1)[0]) for o in known)]
        if not words:
            return
    hint = ""
    for word in words:
        close = difflib.get_close_matches(word.split("=", 1)[0], known, n=1) if word.startswith("-") else []
        if close:
            hint = f"; did you mean {close[0]}?"
            break
    sub.error(f"unrecognized arguments: {' '.join(words)}{hint}")


def build_parser() -> argparse.ArgumentParser:
    from . import inspect, report, retry, run, simulate

    parser = argparse.ArgumentParser(
        prog="batchgen",
        description="Generate a folder of images from a manifest of prompts through the Runbase API.",
    )
    parser.add_argument("--version", action="version", version=f"batchgen {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run.add_parsers(commands)
    inspect.add_parsers(commands)
    retry.add_parsers(commands)
    report.add_parsers(commands)
    simulate.add_parsers(commands)
    return parser


def add_location(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--output", type=given_path, default=Path("output"), metavar="DIR", help="output folder (default: output)"
    )
    parser.add_argument("--ledger", type=given_path, metavar="PATH", help=f"ledger file (default: DIR/{LEDGER_NAME})")


def given_path(text: str) -> Path:
    """A path from the command line. An empty one (a script's unset variable: ``--output "$OUT"``) is refused:
    taken as it is, it would mean the current folder, and a night's images would land wherever cron started."""
    if not text.strip():
        raise argparse.ArgumentTypeError("the path is empty (an unset variable in a script?)")
    return Path(text)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not at least 1")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value
