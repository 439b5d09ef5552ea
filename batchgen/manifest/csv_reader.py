"""CSV files: the delimiter, and plain CSV manifests (one job per row).

``open_csv`` is shared with catalogue rows: UTF-8 with or without a BOM, the
delimiter (comma, semicolon or tab) chosen from the first rows: the one that
splits the header into most columns and the following rows into as many. A
European Excel's semicolon file therefore reads as it is, and messages about
cells name the delimiter that was used.

A plain CSV manifest has a header row, then one job per row. Columns ``id``,
``prompt``, ``aspect_ratio``, ``quality`` and ``image_urls`` (in any letter case)
set fields; any other column is metadata, kept as strings. Empty cells mean
"not set". Problems name the *row*: the CSV record number counting the header as
row 1, which differs from the file line once a quoted cell spans lines.

Rows are read in chunks. A chunk is first checked as a whole with a few C-speed
operations (joins, sets, one regular expression over all its ids); only a chunk
where that finds something goes through the row-by-row checks that say what and
where. That keeps a million-row validate within a few seconds.
"""

from __future__ import annotations

import codecs
import csv
import io
import itertools
import re
from collections.abc import Iterator
from operator import itemgetter
from typing import IO, Any, NamedTuple

from ..models import ASPECT_RATIOS, DEFAULT_MODEL, JOB_FIELDS, QUALITIES, JobSpec
from ..words import plural
from .columns import ids_are_plain, prompts_are_plain, spec_prompts, specs_from_columns
from .fields import SURROGATE_RE, split_urls, url_problem
from .problems import Problems, closest, not_utf8
from .records import REPORTED, Batch, Record, Requests

CSV_FIELD_LIMIT = 4 * 2**20  # generous: an over-long prompt gets the clearer length message
DELIMITERS = (",", ";", "\t")
DELIMITER_NAMES = {",": "commas", ";": "semicolons", "\t": "tabs"}
SAMPLE_CHARS = 64 * 1024
CHUNK_ROWS = 2048

_ASPECT_RATIO_CELLS = frozenset(("", *ASPECT_RATIOS))
_QUALITY_CELLS = frozenset(("", *QUALITIES))


class CsvFile(NamedTuple):
    file: IO[str]
    delimiter: str


def open_csv(path: str, problems: Problems, strict: bool = False) -> CsvFile | None:
    """The file opened for csv.reader, with its delimiter; None (and a problem) when it is UTF-16.

    ``strict``: undecodable bytes raise UnicodeDecodeError; otherwise they are kept as lone surrogates.
    """
    if csv.field_size_limit() < CSV_FIELD_LIMIT:
        csv.field_size_limit(CSV_FIELD_LIMIT)
    with open(path, "rb") as raw:
        head = raw.read(4)
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        problems.add(None, None, "the file is UTF-16 (Excel's 'Unicode Text'); save it as 'CSV UTF-8' instead")
        return None
    # surrogateescape keeps undecodable bytes, so they can be reported with their row
    file = open(path, encoding="utf-8-sig", errors="strict" if strict else "surrogateescape", newline="")  # noqa: SIM115
    try:
        sample = file.read(SAMPLE_CHARS)
    except UnicodeDecodeError:  # the strict reader meets it again, at its row
        with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as lenient:
            sample = lenient.read(SAMPLE_CHARS)
    if (hint := _EXCEL_SEP_RE.match(sample)) is not None:
        file.close()
        problems.add(
            1,
            None,
            f"the first line {hint.group(1)!r} is Excel's hint of the delimiter, not the header: delete that line "
            "(batchgen finds the delimiter itself)",
        )
        return None
    file.seek(0)
    return CsvFile(file, sniff_delimiter(sample, complete=len(sample) < SAMPLE_CHARS))


_EXCEL_SEP_RE = re.compile(r"(sep=.)\s*(?:\r\n|\n|\r|$)", re.IGNORECASE)


def sniff_delimiter(sample: str, complete: bool = False) -> str:
    """The delimiter that splits the header into most columns and the next rows consistently; ',' by default."""
    if not complete and "\n" in sample:
        sample = sample[: sample.rindex("\n") + 1]  # a cut record would look inconsistent
    best, best_score = ",", (0.0, 1)
    for delimiter in DELIMITERS:
        try:
            rows = [row for row in csv.reader(io.StringIO(sample), delimiter=delimiter) if any(row)][:50]
        except csv.Error:
            continue
        if not rows or len(rows[0]) < 2:
            continue
        width = len(rows[0])
        consistent = sum(len(row) == width for row in rows[1:]) / max(1, len(rows) - 1)
        if (consistent, width) > best_score:
            best, best_score = delimiter, (consistent, width)
    return best


def undecodable_byte(cells: list[str]) -> int | None:
    for cell in cells:
        if not cell.isascii() and (match := SURROGATE_RE.search(cell)):
            return ord(match.group()) - 0xDC00
    return None


def line_breaks(row: list[str]) -> int:
    """File lines a record spans beyond its first: csv counts '\\n', '\\r' and '\\r\\n' each as one."""
    return sum(cell.count("\n") + cell.count("\r") - cell.count("\r\n") for cell in row)


class _Layout(NamedTuple):
    width: int
    fields: dict[str, int]
    metadata: list[tuple[str, int]]
    unnamed: list[int]


class _Progress:
    """Where the pass over a CSV stands, so it can reopen the file and go on."""

    def __init__(self) -> None:
        self.layout: _Layout | None = None
        self.records = 0  # CSV records handled (header and blank rows included)
        self.last_line = 0
        self.last_row: list[str] | None = None  # the file's last record, once read
        self.reported = [False]  # undecodable bytes are reported once, at their first row


def read_csv(path: str, problems: Problems) -> Iterator[Record | Batch]:
    """The jobs of a plain CSV manifest.

    The fast way reads chunks of rows at C speed from a strictly decoded file (no cell can then hold an
    undecodable byte). If the CSV reader or the decoder fails, the file is reopened and read row by row
    from the last chunk handled: keeping undecodable bytes (as lone surrogates) when that was the
    failure, so each problem is reported with its row.
    """
    progress = _Progress()
    strict, careful = True, False
    while True:
        opened = open_csv(path, problems if progress.records == 0 and strict else _Ignored(), strict=strict)
        if opened is None:
            return
        try:
            with opened.file as file:
                yield from _read_csv(file, opened.delimiter, progress, problems, strict, careful)
            last = progress.last_row
            if last is not None and line_breaks(last) and quote_left_open(path, opened.delimiter):
                problems.add(progress.records, None, UNCLOSED_QUOTE)
            return
        except UnicodeDecodeError:
            strict, careful = False, True
        except csv.Error:
            careful = True


UNCLOSED_QUOTE = (
    "a quoted cell is never closed: it runs to the end of the file, taking every later line in; "
    'close its quote ("), or double each quote inside it ("")'
)


def quote_left_open(path: str, delimiter: str) -> bool:
    """True when the file ends inside a quoted cell: the csv module ends such a cell silently at the end of the
    file, so a quote opened by mistake takes every later row into one cell. Read again strictly, only when the
    last record spans lines; another fault a strict reading meets first is left as it was."""
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as file:
        try:
            for _ in csv.reader(file, delimiter=delimiter, strict=True):
                pass
        except csv.Error as error:
            return "unexpected end of data" in str(error)
    return False


class _Ignored(Problems):
    def __init__(self) -> None:
        super().__init__("", "row", limit=0)


def _read_csv(
    file: IO[str], delimiter_char: str, progress: _Progress, problems: Problems, decoded: bool, careful: bool
) -> Iterator[Record | Batch]:
    reader = csv.reader(file, delimiter=delimiter_char)
    delimiter = DELIMITER_NAMES[delimiter_char]
    for _ in itertools.islice(reader, progress.records):
        pass
    if progress.layout is None:
        for row in reader:
            progress.records += 1
            progress.last_line = reader.line_num
            if not any(row):
                continue
            if (byte := undecodable_byte(row)) is not None:
                problems.add(progress.records, None, not_utf8(byte))
                return
            progress.layout = _layout(row, progress.records, delimiter, problems)
            break
    if not careful:
        while chunk := list(itertools.islice(reader, CHUNK_ROWS)):
            progress.last_row = chunk[-1]
            yield from _chunk(chunk, progress, delimiter, problems, decoded)
            progress.last_line = reader.line_num
        return
    chunk = []
    try:
        for row in reader:
            chunk.append(row)
            progress.last_row = row
            if len(chunk) == CHUNK_ROWS:
                yield from _chunk(chunk, progress, delimiter, problems, decoded)
                progress.last_line = reader.line_num
                chunk = []
    except csv.Error as error:
        yield from _chunk(chunk, progress, delimiter, problems, decoded)
        problems.add(progress.records + 1, None, f"cannot read the CSV: {error}")
        return
    except UnicodeDecodeError:
        yield from _chunk(chunk, progress, delimiter, problems, decoded)
        raise
    yield from _chunk(chunk, progress, delimiter, problems, decoded)


def _chunk(
    rows: list[list[str]], progress: _Progress, delimiter: str, problems: Problems, decoded: bool
) -> Iterator[Record | Batch]:
    layout = progress.layout
    if layout is None or not rows:
        return
    first_row, line = progress.records + 1, progress.last_line
    progress.records += len(rows)
    batch = _checked_batch(rows, first_row, layout, decoded)
    if batch is not None:
        yield batch
        return
    for offset, row in enumerate(rows):
        first_line = line + 1
        line += 1 + line_breaks(row)
        note = f" (row {first_row + offset} is lines {first_line}-{line})" if line > first_line else ""
        record = _row_record(row, first_row + offset, note, layout, delimiter, problems, progress.reported)
        if record is not None:
            yield record


def _checked_batch(rows: list[list[str]], first_row: int, layout: _Layout, decoded: bool) -> Batch | None:
    """The chunk as a Batch when every cell is valid; None when some row needs a closer look.

    ``decoded``: the file was decoded strictly, so no cell can hold an undecodable byte.
    """
    width, fields = layout.width, layout.fields
    if "prompt" not in fields or set(map(len, rows)) != {width}:
        return None
    if not decoded:
        text = "\x1e".join(map("\x1e".join, rows))
        if not text.isascii() and SURROGATE_RE.search(text):
            return None
    prompts = list(map(itemgetter(fields["prompt"]), rows))
    if not prompts_are_plain(prompts):
        return None
    ids: list[str] | None = None
    if "id" in fields:
        ids = list(map(itemgetter(fields["id"]), rows))
        if not ids_are_plain(ids):
            return None
    if "aspect_ratio" in fields and not set(map(itemgetter(fields["aspect_ratio"]), rows)) <= _ASPECT_RATIO_CELLS:
        return None
    if "quality" in fields and not set(map(itemgetter(fields["quality"]), rows)) <= _QUALITY_CELLS:
        return None
    urls: list[tuple[str, ...]] | None = None
    if "image_urls" in fields:
        cells = list(map(itemgetter(fields["image_urls"]), rows))
        if any(cells):
            urls = list(map(split_urls, cells))
            if any(url_problem(url) for cell in urls for url in cell):
                return None
    for index in layout.unnamed:
        if any(map(str.strip, map(itemgetter(index), rows))):
            return None
    lines = range(first_row, first_row + len(rows))
    return Batch(
        lines, ids, lambda: _specs(rows, prompts, ids, urls, layout), lambda: _requests(rows, prompts, urls, layout)
    )


def _column(rows: list[list[str]], layout: _Layout, field: str) -> list[str] | None:
    return list(map(itemgetter(layout.fields[field]), rows)) if field in layout.fields else None


def _requests(
    rows: list[list[str]], prompts: list[str], urls: list[tuple[str, ...]] | None, layout: _Layout
) -> Requests:
    """The chunk's requests, column by column: what the plan reads instead of specs."""
    unset = [""] * len(rows)
    aspects, qualities = _column(rows, layout, "aspect_ratio"), _column(rows, layout, "quality")
    return Requests(DEFAULT_MODEL, spec_prompts(prompts), aspects or unset, qualities or unset, urls)


def _specs(
    rows: list[list[str]],
    prompts: list[str],
    ids: list[str] | None,
    urls: list[tuple[str, ...]] | None,
    layout: _Layout,
) -> list[JobSpec]:
    """The chunk's jobs, built column by column where it can be (this is what ``run`` reads per row)."""
    aspects, qualities = _column(rows, layout, "aspect_ratio"), _column(rows, layout, "quality")
    names = [name for name, _index in layout.metadata]
    if len(names) > 1:
        pick = itemgetter(*(index for _name, index in layout.metadata))
        metadata = [dict(zip(names, values, strict=True)) for values in map(pick, rows)]
    elif names:
        metadata = [{names[0]: row[layout.metadata[0][1]]} for row in rows]
    else:
        metadata = [{} for _ in rows]
    return specs_from_columns(ids, spec_prompts(prompts), aspects, qualities, urls, metadata)


def _layout(header: list[str], row_number: int, delimiter: str, problems: Problems) -> _Layout:
    fields: dict[str, int] = {}
    metadata: dict[str, int] = {}
    unnamed: list[int] = []
    misspelt: set[str] = set()
    for index, cell in enumerate(header):
        name = cell.replace("\ufeff", "").strip()
        field = name.lower()
        if not name:
            unnamed.append(index)
        elif field in fields or name in metadata:
            problems.add(row_number, name, f"column {name!r} appears twice in the header (ignoring case)")
        elif field in JOB_FIELDS:
            fields[field] = index
        elif guess := closest(name, JOB_FIELDS, cutoff=0.85):
            # Other columns become metadata, so a typo would silently drop the field.
            misspelt.add(guess)
            problems.add(row_number, name, f"column {name!r} looks like a misspelt {guess!r}; rename it")
        else:
            metadata[name] = index
    if "prompt" not in fields and "prompt" not in misspelt:
        columns = ", ".join(repr(cell.strip()) for cell in header[:12]) + (", ..." if len(header) > 12 else "")
        message = f"the header has no 'prompt' column (read with {delimiter} between cells, it has {columns})"
        if len(header) > 3:
            message += (
                "; to make prompts from a product export's columns, write a YAML manifest with "
                "'rows: FILE' and a 'job:' template"
            )
        problems.add(row_number, "prompt", message)
    return _Layout(len(header), fields, list(metadata.items()), unnamed)


def _row_record(
    row: list[str],
    row_number: int,
    note: str,
    layout: _Layout,
    delimiter: str,
    problems: Problems,
    reported: list[bool],
) -> Record | None:
    """The row's job, or None for a row of blank cells or one that is not UTF-8."""
    if not any(row):
        return None
    if not all(map(str.isascii, row)) and (byte := undecodable_byte(row)) is not None:
        if not reported[0]:
            reported[0] = True
            problems.add(row_number, None, not_utf8(byte))
        return None
    width = layout.width
    if len(row) < width:
        row = row + [""] * (width - len(row))
    values: dict[str, Any] = {field: row[index] for field, index in layout.fields.items() if row[index].strip()}
    if not values and not "".join(row).strip():
        return None
    if len(row) > width and any(row[width:]):
        message = (
            f"the row has {len(row)} cells but the header has {width} {plural(width, 'column')} "
            f"(cells split at {delimiter})"
        )
        problems.add(row_number, None, message + note)
    if "prompt" not in layout.fields:
        values["prompt"] = REPORTED
    urls = values.get("image_urls")
    if urls:
        values["image_urls"] = split_urls(urls)
    for index in layout.unnamed:
        if row[index].strip():
            problems.add(row_number, None, f"cell {index + 1} has a value but its column has no name" + note)
    return Record(row_number, values, None, note, {name: row[index] for name, index in layout.metadata})
