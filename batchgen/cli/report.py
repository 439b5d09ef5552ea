"""``batchgen report``: write the gallery, one HTML page to review a batch. Reads the ledger, changes nothing."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Any

from ..words import plural
from . import LEDGER_NAME, given_path

DEFAULT_OUTPUT = Path("output")
REPORT_NAME = "report.html"  # batchgen.report.REPORT_NAME; repeated so --help needs no heavy import


def add_parsers(commands: Any) -> None:
    report = commands.add_parser(
        "report",
        help="write report.html: every job's image, error and fix, to review in a browser",
        description=(
            "Write one self-contained HTML page (no network, images linked relatively) with the batch's figures and "
            "a card per job: its image, or its error and the command that fixes it. Filter by state, search, open a "
            "large view (arrow keys, Escape), copy ids for `batchgen retry --ids`. Exit 0 on success, 5 when the "
            "ledger is missing or unreadable or the page cannot be written."
        ),
    )
    report.add_argument(
        "--output",
        type=given_path,
        metavar="DIR",
        help="output folder: its ledger and images are shown (default output/)",
    )
    report.add_argument(
        "--ledger",
        type=given_path,
        metavar="PATH",
        help=f"ledger file (default OUTPUT/{LEDGER_NAME}); without --output, images are looked for in the folder "
        "the ledger recorded, else beside the ledger",
    )
    report.add_argument(
        "--out",
        type=given_path,
        metavar="FILE",
        help=f"where to write the page (default OUTPUT/{REPORT_NAME}; inside the output folder it can be zipped "
        "with the images)",
    )
    report.add_argument(
        "--verify",
        action="store_true",
        help="also hash every file and compare it with the sha256 the ledger saved (reads every image; default: "
        "compare sizes only)",
    )
    report.set_defaults(handler=_report)


def _report(args: argparse.Namespace) -> int:
    from ..errors import BatchgenError
    from ..ledger import Ledger
    from ..report import build_report_data, write_html

    ledger_path = args.ledger or (args.output or DEFAULT_OUTPUT) / LEDGER_NAME
    if not ledger_path.is_file():
        raise BatchgenError(
            f"no ledger at {ledger_path}: run `batchgen run MANIFEST` first (or pass --output/--ledger)"
        )
    with Ledger(ledger_path, readonly=True) as ledger:
        images = _images_folder(args, ledger.output_dir, ledger_path)
        if not images.is_dir():
            raise BatchgenError(f"the output folder {images} does not exist (pass --output with the images' folder)")
        out = args.out or images / REPORT_NAME
        if out.is_dir():
            out = out / REPORT_NAME
        if not out.parent.is_dir():
            raise BatchgenError(f"cannot write the report {out}: the folder {out.parent} does not exist")
        data = build_report_data(ledger, images, verify=args.verify, location_args=_location_args(args, images))
    try:
        write_html(data, out)
    except OSError as exc:
        raise BatchgenError(
            f"cannot write the report {out}: {exc.strerror or exc} (--out FILE writes it elsewhere)"
        ) from exc
    counts = data.card_counts()
    print(
        f"{out}: {len(data.jobs)} {plural(len(data.jobs), 'job')}, {counts['succeeded']} succeeded, "
        f"{counts['failed']} failed, {counts['pending']} pending, {counts['missing']} with missing or changed files"
    )
    return 0


def _images_folder(args: argparse.Namespace, recorded: str | None, ledger_path: Path) -> Path:
    if args.output is not None:
        return Path(args.output)
    if args.ledger is None:
        return DEFAULT_OUTPUT
    if recorded and Path(recorded).is_dir():
        return Path(recorded)
    return Path(ledger_path).parent


def _location_args(args: argparse.Namespace, images: Path) -> str:
    """The ``--output``/``--ledger`` words the fix commands need to find this batch, shell-quoted."""
    words: list[str] = []
    if images != DEFAULT_OUTPUT:
        words += ["--output", str(images)]
    if args.ledger is not None:
        words += ["--ledger", str(args.ledger)]
    return shlex.join(words)
