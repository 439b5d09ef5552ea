"""JSONL manifests: one JSON object per line with the keys of a YAML job; blank lines are ignored.

Lines are read in batches of ``BATCH_LINES``. A batch is first decoded and checked as a whole
(see ``jsonl_batch``); only a batch where that finds something unusual goes line by line through
the checks that say what is wrong and where, so every problem names its line as if each line
had been read on its own.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import BinaryIO

from ..models import JOB_FIELDS
from .jsonl_batch import checked_batch
from .problems import Problems, describe, not_utf8, unknown_key, utf16
from .records import Batch, Record

MAX_JSONL_LINE_BYTES = 4 * 2**20
JOB_KEYS = (*JOB_FIELDS, "metadata")
BATCH_LINES = 2048
BLOCK_BYTES = 1 << 20  # read at a time; a line may span blocks
BATCH_BYTES = 16 << 20  # a batch of long lines is cut short, so memory stays bounded


def read_jsonl(path: str, problems: Problems, *, batch_lines: int = BATCH_LINES) -> Iterator[Record | Batch]:
    """The jobs of a JSONL manifest: a Batch for each batch of lines that passes as a whole, else a Record a line.

    ``batch_lines=0`` reads every line on its own, through the per-job checks only."""
    lines = _Lines()
    with open(path, "rb") as file:
        for first, batch, ended in line_batches(file, MAX_JSONL_LINE_BYTES, batch_lines or BATCH_LINES):
            checked = checked_batch(first, batch) if batch_lines else None
            if checked is not None:
                yield checked
                continue
            for number, data in enumerate(batch, first):
                if data is not None and (number != first + len(batch) - 1 or ended):
                    data += b"\n"  # as readline gives it: a JSON error's position counts it
                record = lines.record(number, data, problems)
                if lines.stopped:
                    return
                if record is not None:
                    yield record


class _Lines:
    """The per-line checks, and what they remember from line to line."""

    def __init__(self) -> None:
        self.undecodable_reported = False
        self.stopped = False  # the file is UTF-16: one problem, nothing more read

    def record(self, number: int, data: bytes | None, problems: Problems) -> Record | None:
        if data is None:
            problems.add(number, None, f"the line is longer than {MAX_JSONL_LINE_BYTES >> 20} MiB")
            return None
        if number == 1 and (wide := utf16(data)) is not None:
            problems.add(None, None, wide)
            self.stopped = True
            return None
        try:
            text = data.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as error:
            if not self.undecodable_reported:
                self.undecodable_reported = True
                problems.add(number, None, not_utf8(data[error.start], spreadsheet=False))
            return None
        if not text.strip():
            return None
        try:
            job = json.loads(text)
        except json.JSONDecodeError as error:
            problems.add(number, None, f"not valid JSON: {error.msg} (column {error.colno})")
            return None
        except (ValueError, RecursionError):
            problems.add(number, None, "not valid JSON (too deeply nested?)")
            return None
        if not isinstance(job, dict):
            problems.add(number, None, f"each line must be a JSON object (a job), not {describe(job)}")
            return None
        for key in job:
            if key not in JOB_KEYS:
                problems.add(number, key, unknown_key(key, JOB_KEYS))
        return Record(number, job, None)


def line_batches(file: BinaryIO, limit: int, size: int) -> Iterator[tuple[int, list[bytes | None], bool]]:
    """``(first line's number, up to size lines, whether the last of them ended with a newline)``.

    Lines come without their '\\n'; None stands for a line longer than ``limit`` bytes, which is skipped
    without being held, so memory stays bounded (as ``bounded_lines`` does, a block at a time); a batch
    holds about ``BATCH_BYTES`` at most."""
    first, lines, held = 1, [], 0
    pending, too_long = b"", False  # the start of a line not ended yet; or that line is already too long
    while block := file.read(BLOCK_BYTES):
        split = block.split(b"\n")
        tail = split.pop()
        parts: list[bytes | None] = list(split)
        if parts:
            parts[0] = None if too_long else pending + split[0]
            if max(map(len, filter(None, parts)), default=0) > limit:
                parts = [None if part is None or len(part) > limit else part for part in parts]
            pending, too_long = tail, False
        elif not too_long:
            pending += tail
        if len(pending) > limit:
            pending, too_long = b"", True
        lines += parts
        held += len(block)
        while len(lines) >= size or (lines and held > BATCH_BYTES):
            batch, lines = lines[:size], lines[size:]
            yield first, batch, True
            first += len(batch)
        if not lines:
            held = 0
    if too_long or pending:
        lines.append(None if too_long else pending)
    if lines:
        yield first, lines, not (too_long or pending)


def bounded_lines(file: BinaryIO, limit: int) -> Iterator[tuple[int, bytes | None]]:
    """Numbered lines, with None for one too long to hold, so memory stays bounded."""
    number = 0
    while line := file.readline(limit + 1):
        number += 1
        if len(line) > limit and not line.endswith(b"\n"):
            while line and not line.endswith(b"\n"):
                line = file.readline(limit)
            yield number, None
        else:
            yield number, line
