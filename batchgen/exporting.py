"""``batchgen export``: one record per job of the ledger, JSON lines or CSV, streamed in manifest order.

Built for a million jobs: one streamed statement a format (``ledger.export_chunks``, and
``ledger.csv_export_chunks`` with only the columns CSV shows: a row per file, plain columns,
no JSON function in sqlite), and each line assembled from the JSON text the ledger already
holds: the spec is stored as sorted, compact JSON (``{"input":{...},"model":"..."}``), so
JSONL cuts its ``input`` and ``model`` out as they are, and CSV takes the four input fields
it shows out of it with one regular expression (``plain_input``), parsing only specs of
another shape. A file that is not there with its recorded size is listed under
``missing_outputs``, never under ``outputs``.

Where the time goes at a million jobs (bench/scale.py): reading the rows out of
sqlite, then one ``stat`` per file, then the text of each line.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Iterator
from itertools import islice
from json.encoder import encode_basestring
from operator import itemgetter
from typing import Any, TextIO

from .ledger import Ledger
from .outputs import lookup_below

BATCH = 2000  # lines written per write call

FIXED_COLUMNS = ["job_id", "state", "run_id", "outputs", "error", "attempts", "unknown_creates"]
INPUT_COLUMNS = ["prompt", "aspect_ratio", "quality", "image_urls"]

WIDTH, CSV_WIDTH = 10, 8  # a job's columns in a row of export_chunks / csv_export_chunks; then n, bytes, path
_INPUT, _MODEL = '{"input":', ',"model":"'
_TEXT, _IN_TEXT = r'"[^"]*"', r'"([^"]*)"'  # a JSON string in a text without backslashes (and its text)
_PLAIN_INPUT = re.compile(
    rf'\{{"input":\{{(?:"aspect_ratio":{_IN_TEXT},)?(?:"image_urls":\[((?:{_TEXT}(?:,{_TEXT})*)?)\],)?'
    rf'"prompt":{_IN_TEXT}(?:,"quality":{_IN_TEXT})?\}}'
)
Row = tuple[Any, ...]  # a row of Ledger.export_chunks or Ledger.csv_export_chunks: a job and one of its files
PATH, SHA256, CSV_PATH = WIDTH + 2, WIDTH + 3, CSV_WIDTH + 2


def _base(ledger: Ledger) -> str:
    folder = ledger.output_dir or os.fspath(ledger.path.parent)
    return folder.rstrip(os.sep) + os.sep


def _jobs(chunks: Iterator[list[Row]], base: str, width: int) -> Iterator[tuple[Row, list[Row], list[Row]]]:
    """Group the rows (one per file, in lists) by job: (the row of its first file, the rows of its present
    files, those of its missing files), in order of n; a job's columns are the first ``width`` of a row,
    then its file's n, bytes and path. A file is present when it is there with the bytes recorded."""
    stat = os.stat
    job: tuple[Any, ...] | None = None
    present: list[Row] = []
    missing: list[Row] = []
    several = False  # the job has more than one file: sort them by n
    by_n, size_at, path_at = itemgetter(width), width + 1, width + 2
    with lookup_below(base) as (prefix, fd):
        for rows in chunks:
            for row in rows:
                if job is None or row[0] != job[0]:
                    if job is not None:
                        if several:
                            present.sort(key=by_n)
                            missing.sort(key=by_n)
                            several = False
                        yield job, present, missing
                    job, present, missing = row, [], []
                else:
                    several = True
                if row[width] is None:
                    continue
                try:
                    here = stat(prefix + row[path_at], dir_fd=fd).st_size == row[size_at]
                except OSError:
                    here = False
                (present if here else missing).append(row)
    if job is not None:
        if several:
            present.sort(key=by_n)
            missing.sort(key=by_n)
        yield job, present, missing


def split_spec(spec_json: str) -> tuple[str, str]:
    """(model, input) of a stored spec, each as the JSON text it is in the spec.

    The spec is sorted, compact JSON: ``{"input":{...},"model":"..."}`` (then ``sample`` or
    ``filename``, when set). ``,"`` cannot occur inside a JSON string (its quote would be
    escaped), so the last ``,"model":"`` is the top-level key, after everything the input
    holds, and when no ``,"`` follows it the model's string runs to the closing brace."""
    at = spec_json.rfind(_MODEL)
    if at > 0 and spec_json.startswith(_INPUT) and spec_json.endswith('"}') and spec_json.find(',"', at + 1) < 0:
        return spec_json[at + len(_MODEL) - 1 : -1], spec_json[len(_INPUT) : at]
    spec = json.loads(spec_json)  # with sample or filename, or not written by this batchgen
    dump = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    return dump(spec.get("model")), dump(spec.get("input"))


def write_jsonl(ledger: Ledger, out: TextIO) -> int:
    return _write(_jsonl_lines(ledger), out)


def _jsonl_lines(ledger: Ledger) -> Iterator[str]:
    q = encode_basestring
    tail, model = "", ""  # the end of the last spec cut by split_spec, and its model: most jobs share them
    base = _base(ledger)
    for job, present, missing in _jobs(ledger.export_chunks(), base, WIDTH):
        job_id, state, run_id, error, kind, attempts, unknown, source, spec, metadata = job[:WIDTH]
        if state == "succeeded":
            said = '"error":null,"error_kind":null,"attempts":'
            source = "null" if source is None else q(source)
        else:
            error = "null" if error is None else q(error)
            said = f'"error":{error},"error_kind":{"null" if kind is None else q(kind)},"attempts":'
            source = "null"
            state = "pending" if state == "running" else state
        if tail and spec.endswith(tail) and spec.startswith(_INPUT):  # as split_spec would cut it
            given = spec[len(_INPUT) : -len(tail)]
        else:
            model, given = split_spec(spec)
            tail = f"{_MODEL[:-1]}{model}}}"
        if len(present) == 1:
            saved = f'[{q(base + present[0][PATH])}],"sha256":[{q(present[0][SHA256])}]'
        else:
            paths, hashes = ",".join([q(base + f[PATH]) for f in present]), ",".join([q(f[SHA256]) for f in present])
            saved = f'[{paths}],"sha256":[{hashes}]'
        line = (
            f'{{"job_id":{q(job_id)},"state":"{state}","run_id":{"null" if run_id is None else q(run_id)},{said}'
            f'{attempts},"unknown_creates":{unknown},"source":{source},"model":{model},"input":{given},'
            f'"metadata":{metadata},"outputs":{saved}'
        )
        if missing:
            line += f',"missing_outputs":[{",".join([q(base + f[PATH]) for f in missing])}]'
        yield line + "}"


def write_csv(ledger: Ledger, out: TextIO) -> int:
    """Known columns, then every metadata key (in the order they first appear) as a column of its own.

    Written as the csv module writes (its default dialect's minimal quoting, ``\\n`` line ends), one
    line at a time without it: a line whose fields hold no comma, quote or line break needs no
    quoting at all, and only the others are quoted field by field."""
    keys = [k for k in ledger.metadata_keys() if k not in FIXED_COLUMNS and k not in INPUT_COLUMNS]
    header = FIXED_COLUMNS + INPUT_COLUMNS + keys
    out.write(_csv_line(header) + "\n")
    return _write(_csv_lines(ledger, keys, len(header)), out)


def _csv_lines(ledger: Ledger, keys: list[str], width: int) -> Iterator[str]:
    base = _base(ledger)
    loads = json.JSONDecoder().raw_decode  # json.loads less its checks for surrounding whitespace
    for job, present, _ in _jobs(ledger.csv_export_chunks(metadata=bool(keys)), base, CSV_WIDTH):
        job_id, state, run_id, error, attempts, unknown, spec, metadata = job[:CSV_WIDTH]
        if state == "succeeded":
            error = None
        elif state == "running":
            state = "pending"
        given = plain_input(spec) or parsed_input(loads(spec)[0].get("input") or {})
        outputs = base + present[0][CSV_PATH] if len(present) == 1 else "|".join([base + f[CSV_PATH] for f in present])
        line = (
            f"{job_id},{state},{'' if run_id is None else run_id},{outputs},{'' if error is None else error},"
            f"{attempts},{unknown},{given[0]},{given[1]},{given[2]},{given[3]}"
        )
        extra: list[str] = []
        if keys:
            values = loads(metadata)[0] if metadata != "{}" else {}
            extra = [_text(values.get(key)) for key in keys]
            line += "," + ",".join(extra)
        if line.count(",") != width - 1 or '"' in line or "\n" in line or "\r" in line:
            fields = [job_id, state, run_id, outputs, error, attempts, unknown, *given, *extra]
            line = _csv_line([_text(value) for value in fields])
        yield line


def plain_input(spec: str) -> tuple[str, str, str, str] | None:
    """The CSV fields (prompt, aspect_ratio, quality, image_urls) of a stored spec, cut out of its text by
    one regular expression; None when the spec holds a backslash (an escape) or its input holds anything
    but those keys, each a string (image_urls a list of strings). A third of the time of parsing the spec.

    The ledger stores the spec sorted and compact (``{"input":{"aspect_ratio":..,"image_urls":[..],
    "prompt":..,"quality":..},...``). With no escape, a string holds no quote, so each quote the
    expression meets opens or closes a string, as in the JSON, and the string is its text."""
    found = None if "\\" in spec else _PLAIN_INPUT.match(spec)
    if found is None:
        return None
    ratio, urls, prompt, quality = found.groups("")
    return prompt, ratio, quality, urls[1:-1].replace('","', "|")


def parsed_input(given: dict[str, Any]) -> tuple[str, str, str, str]:
    """The CSV fields (prompt, aspect_ratio, quality, image_urls) of a job's parsed input."""
    urls = given.get("image_urls")
    if type(urls) is list:
        urls = "|".join(map(str, urls))
    return _text(given.get("prompt")), _text(given.get("aspect_ratio")), _text(given.get("quality")), _text(urls)


def _write(lines: Iterator[str], out: TextIO) -> int:
    """Write the lines (given without their line end) BATCH at a time; how many there were."""
    written = 0
    while batch := list(islice(lines, BATCH)):
        out.write("\n".join(batch) + "\n")
        written += len(batch)
    return written


def _text(value: Any) -> str:
    """A CSV field's text: nothing for None, JSON for a list or an object."""
    if type(value) is str:
        return value
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _csv_line(fields: list[str]) -> str:
    """The line the csv module writes for these fields (its default dialect, minimal quoting), without its
    line end. That dialect's line end is what makes the module quote a field holding a line break: written
    with none, such a field would end the CSV's row in the middle."""
    buffer = io.StringIO()
    csv.writer(buffer).writerow(fields)
    return buffer.getvalue()[: -len(csv.excel.lineterminator)]
