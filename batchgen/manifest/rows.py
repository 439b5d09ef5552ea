"""Catalogue rows from a file next to the manifest: CSV, JSONL or XLSX.

Each source yields ``(row number, Row)``: for CSV the record number counting
the header as row 1 (the delimiter sniffed, see ``csv_reader``), for XLSX the
sheet's row number as Excel shows it, for JSONL the file line. Cells are kept
as text (CSV), JSON values (JSONL) or the spreadsheet's numbers and text
(XLSX; dates become ISO text, empty cells ""). Problems with the file itself are
reported at the manifest's ``rows:`` line.
"""

from __future__ import annotations

import csv
import datetime
import json
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from ..words import plural
from .csv_reader import DELIMITER_NAMES, UNCLOSED_QUOTE, line_breaks, open_csv, quote_left_open, undecodable_byte
from .jsonl_reader import MAX_JSONL_LINE_BYTES, bounded_lines
from .problems import Problems, describe, not_utf8
from .templates import Row

ROW_TYPES = (".csv", ".tsv", ".txt", ".jsonl", ".xlsx")


class RowsFile(NamedTuple):
    path: Path
    shown: str  # the name as the manifest gives it, for messages
    line: int  # the manifest's 'rows:' line
    sheet: str | None


def rows_problem(rows: RowsFile) -> str | None:
    """Why the file cannot be read at all, or None."""
    kind = rows.path.suffix.lower()
    if kind == ".xls":
        return f"{rows.shown}: the old .xls format cannot be read; save it as .xlsx or as CSV UTF-8"
    if kind not in ROW_TYPES:
        return f"{rows.shown}: rows must be a .csv, .tsv, .jsonl or .xlsx file"
    if not rows.path.is_file():
        return f"{rows.shown}: file not found (looked in {rows.path.parent})"
    if rows.sheet is not None and kind != ".xlsx":
        return "'sheet:' applies only to .xlsx rows"
    return None


def read_rows(rows: RowsFile, problems: Problems) -> Iterator[tuple[int, Row]]:
    kind = rows.path.suffix.lower()
    try:
        if kind == ".jsonl":
            yield from _jsonl_rows(rows, problems)
        elif kind == ".xlsx":
            yield from _xlsx_rows(rows, problems)
        else:
            yield from _csv_rows(rows, problems)
    except OSError as error:
        problems.add(rows.line, "rows", f"{rows.shown}: cannot read the file: {error.strerror or error}")


def _header(cells: list[str], rows: RowsFile, number: int, problems: Problems) -> list[str]:
    names: list[str] = []
    seen: set[str] = set()
    for index, cell in enumerate(cells):
        name = str(cell if cell is not None else "").replace("\ufeff", "").strip()
        if name in seen:
            problems.add(rows.line, "rows", f"{rows.shown} row {number}: column {name!r} appears twice in the header")
        seen.add(name)
        names.append(name or f"column {index + 1}")
    return names


def _csv_rows(rows: RowsFile, problems: Problems) -> Iterator[tuple[int, Row]]:
    opened = open_csv(str(rows.path), _Prefixed(problems, rows))
    if opened is None:
        return
    with opened.file as file:
        delimiter = "\t" if rows.path.suffix.lower() == ".tsv" else opened.delimiter
        reader = csv.reader(file, delimiter=delimiter)
        header: list[str] | None = None
        number, last = 0, None
        try:
            for cells in reader:
                number, last = number + 1, cells
                if not any(cells):
                    continue
                if not all(map(str.isascii, cells)) and (byte := undecodable_byte(cells)) is not None:
                    problems.add(rows.line, "rows", f"{rows.shown} row {number}: {not_utf8(byte)}")
                    return
                if header is None:
                    header = _header(cells, rows, number, problems)
                    continue
                if len(cells) > len(header) and any(cells[len(header) :]):
                    problems.add(
                        rows.line,
                        "rows",
                        f"{rows.shown} row {number}: the row has {len(cells)} cells but the header has "
                        f"{len(header)} {plural(len(header), 'column')} (cells split at {DELIMITER_NAMES[delimiter]}"
                        f"{'; a quoted cell may span lines' if line_breaks(cells) else ''})",
                    )
                    continue
                yield number, Row(zip(header, cells + [""] * (len(header) - len(cells)), strict=False))
        except csv.Error as error:
            problems.add(rows.line, "rows", f"{rows.shown} row {number + 1}: cannot read the CSV: {error}")
        else:
            if last is not None and line_breaks(last) and quote_left_open(str(rows.path), delimiter):
                problems.add(rows.line, "rows", f"{rows.shown} row {number}: {UNCLOSED_QUOTE}")
        if header is None:
            problems.add(rows.line, "rows", f"{rows.shown}: the file has no header row")


class _Prefixed(Problems):
    """Problems about the rows file itself, reported at the manifest's 'rows:' line."""

    def __init__(self, problems: Problems, rows: RowsFile):
        super().__init__(problems.path, problems.where_kind, limit=0)
        self._problems, self._rows = problems, rows

    def add(self, line: int | None, field: str | None, message: str, where_kind: str | None = None) -> None:
        self._problems.add(self._rows.line, "rows", f"{self._rows.shown}: {message}")


def _jsonl_rows(rows: RowsFile, problems: Problems) -> Iterator[tuple[int, Row]]:
    with open(rows.path, "rb") as file:
        for number, data in bounded_lines(file, MAX_JSONL_LINE_BYTES):
            where = f"{rows.shown} line {number}"
            try:
                text = data.decode("utf-8-sig") if data is not None else None
                value = json.loads(text) if text and text.strip() else None
            except UnicodeDecodeError as error:
                assert data is not None
                problems.add(rows.line, "rows", f"{where}: {not_utf8(data[error.start])}")
                return
            except (ValueError, RecursionError) as error:
                problems.add(rows.line, "rows", f"{where}: not valid JSON ({error})")
                continue
            if data is None:
                problems.add(rows.line, "rows", f"{where}: the line is longer than {MAX_JSONL_LINE_BYTES >> 20} MiB")
            elif value is None:
                continue
            elif not isinstance(value, dict):
                problems.add(rows.line, "rows", f"{where}: each line must be a JSON object, not {describe(value)}")
            else:
                yield number, Row(value)


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


def _xlsx_rows(rows: RowsFile, problems: Problems) -> Iterator[tuple[int, Row]]:
    import openpyxl  # type: ignore[import-untyped]  # only catalogues read spreadsheets

    try:
        workbook = openpyxl.load_workbook(rows.path, read_only=True, data_only=True)
    except (zipfile.BadZipFile, KeyError, ValueError, TypeError) as error:
        problems.add(rows.line, "rows", f"{rows.shown}: not a readable .xlsx workbook ({error})")
        return
    try:
        if rows.sheet is None:
            sheet = workbook.worksheets[0]
        elif rows.sheet in workbook.sheetnames:
            sheet = workbook[rows.sheet]
        else:
            names = ", ".join(repr(name) for name in workbook.sheetnames)
            problems.add(rows.line, "sheet", f"{rows.shown} has no sheet {rows.sheet!r}; its sheets are {names}")
            return
        header: list[str] | None = None
        for number, values in enumerate(sheet.iter_rows(values_only=True), 1):
            cells = [_cell(value) for value in values]
            if not any(cell != "" for cell in cells):
                continue
            if header is None:
                header = _header([str(cell) for cell in cells], rows, number, problems)
                continue
            yield number, Row(zip(header, cells + [""] * (len(header) - len(cells)), strict=False))
        if header is None:
            problems.add(rows.line, "rows", f"{rows.shown}: the sheet {sheet.title!r} is empty")
    finally:
        workbook.close()


def resolve_rows_path(manifest: str, value: str) -> Path:
    """``value`` relative to the manifest's folder (or absolute, or starting with ~)."""
    path = Path(os.path.expanduser(value))
    return path if path.is_absolute() else Path(manifest).parent / path
