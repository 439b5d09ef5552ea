"""JSONL manifests: one JSON object per line with the keys of a YAML job; blank lines are ignored."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import BinaryIO

from ..models import JOB_FIELDS
from .problems import Problems, describe, not_utf8, unknown_key, utf16
from .records import Record

MAX_JSONL_LINE_BYTES = 4 * 2**20
JOB_KEYS = (*JOB_FIELDS, "metadata")


def read_jsonl(path: str, problems: Problems) -> Iterator[Record]:
    undecodable_reported = False
    with open(path, "rb") as file:
        for number, data in _bounded_lines(file):
            if data is None:
                problems.add(number, None, f"the line is longer than {MAX_JSONL_LINE_BYTES >> 20} MiB")
                continue
            if number == 1 and (wide := utf16(data)) is not None:
                problems.add(None, None, wide)
                return
            try:
                text = data.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as error:
                if not undecodable_reported:
                    undecodable_reported = True
                    problems.add(number, None, not_utf8(data[error.start], spreadsheet=False))
                continue
            if not text.strip():
                continue
            try:
                job = json.loads(text)
            except json.JSONDecodeError as error:
                problems.add(number, None, f"not valid JSON: {error.msg} (column {error.colno})")
                continue
            except (ValueError, RecursionError):
                problems.add(number, None, "not valid JSON (too deeply nested?)")
                continue
            if not isinstance(job, dict):
                problems.add(number, None, f"each line must be a JSON object (a job), not {describe(job)}")
                continue
            for key in job:
                if key not in JOB_KEYS:
                    problems.add(number, key, unknown_key(key, JOB_KEYS))
            yield Record(number, job, None)


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


def _bounded_lines(file: BinaryIO) -> Iterator[tuple[int, bytes | None]]:
    return bounded_lines(file, MAX_JSONL_LINE_BYTES)
