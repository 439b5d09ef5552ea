"""``batchgen export``: one record per job of the ledger, JSON lines or CSV, streamed in manifest order.

Built for a million jobs: one streamed statement (``ledger.export_rows``: a row per
file, plain columns, no JSON function in sqlite), and each line assembled from
the JSON text the ledger already holds, without parsing it again: the spec is
stored as sorted, compact JSON (``{"input":{...},"model":"..."}``), so its
``input`` and ``model`` are cut out of it as they are. A file that is not there
with its recorded size is listed under ``missing_outputs``, never under ``outputs``.

Where the time goes at a million jobs (bench/scale.py): reading the rows out of
sqlite, then one ``stat`` per file, then the text of each line.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator
from json.encoder import encode_basestring
from typing import Any, TextIO

from .ledger import Ledger

BATCH = 2000  # lines written per write call

FIXED_COLUMNS = ["job_id", "state", "run_id", "outputs", "error", "attempts", "unknown_creates"]
INPUT_COLUMNS = ["prompt", "aspect_ratio", "quality", "image_urls"]

WIDTH = 10  # the job's columns of an export row; then n, bytes, sha256, path of one file
_INPUT, _MODEL = '{"input":', ',"model":"'
File = tuple[str, str]  # (absolute path, sha256)


def _base(ledger: Ledger) -> str:
    folder = ledger.output_dir or os.fspath(ledger.path.parent)
    return folder.rstrip(os.sep) + os.sep


def _jobs(rows: Iterator[tuple[Any, ...]]) -> Iterator[tuple[tuple[Any, ...], list[tuple[Any, ...]]]]:
    """Group the rows (one per file) by job: (the row of its first file, [(n, bytes, sha256, path), ...])."""
    job: tuple[Any, ...] | None = None
    files: list[tuple[Any, ...]] = []
    for row in rows:
        if job is not None and row[0] == job[0]:
            files.append(row[WIDTH:])
            continue
        if job is not None:
            yield job, files
        job = row
        files = [] if row[WIDTH] is None else [row[WIDTH:]]
    if job is not None:
        yield job, files


def _check(files: list[tuple[Any, ...]], base: str) -> tuple[list[File], list[File]]:
    """(present, missing): a file is present when it is there with the bytes recorded."""
    if len(files) > 1:
        files.sort()  # by n
    present: list[File] = []
    missing: list[File] = []
    for _, size, sha256, path in files:
        full = base + path
        try:
            here = os.stat(full).st_size == size
        except OSError:
            here = False
        (present if here else missing).append((full, sha256))
    return present, missing


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
    q, lines, written, base = encode_basestring, [], 0, _base(ledger)
    for job, files in _jobs(ledger.export_rows()):
        job_id, state, run_id, error, kind, attempts, unknown, source, spec, metadata = job[:WIDTH]
        if state == "succeeded":
            said = '"error":null,"error_kind":null,"attempts":'
            source = "null" if source is None else q(source)
        else:
            error = "null" if error is None else q(error)
            said = f'"error":{error},"error_kind":{"null" if kind is None else q(kind)},"attempts":'
            source = "null"
            state = "pending" if state == "running" else state
        model, given = split_spec(spec)
        present, missing = _check(files, base) if files else ([], [])
        if len(present) == 1:
            saved = f'[{q(present[0][0])}],"sha256":[{q(present[0][1])}]'
        else:
            saved = f'[{",".join(q(f[0]) for f in present)}],"sha256":[{",".join(q(f[1]) for f in present)}]'
        line = (
            f'{{"job_id":{q(job_id)},"state":"{state}","run_id":{"null" if run_id is None else q(run_id)},{said}'
            f'{attempts},"unknown_creates":{unknown},"source":{source},"model":{model},"input":{given},'
            f'"metadata":{metadata},"outputs":{saved}'
        )
        if missing:
            line += f',"missing_outputs":[{",".join(q(f[0]) for f in missing)}]'
        lines.append(line + "}\n")
        if len(lines) >= BATCH:
            out.write("".join(lines))
            written += len(lines)
            lines = []
    out.write("".join(lines))
    return written + len(lines)


def write_csv(ledger: Ledger, out: TextIO) -> int:
    """Known columns, then every metadata key (in the order they first appear) as a column of its own.

    Written as the csv module writes (minimal quoting, ``\\n`` line ends), one line at a time
    without it: a line whose fields hold no comma, quote or line break needs no quoting at all,
    and only the others are quoted field by field."""
    keys = [k for k in ledger.metadata_keys() if k not in FIXED_COLUMNS and k not in INPUT_COLUMNS]
    header = FIXED_COLUMNS + INPUT_COLUMNS + keys
    width, lines, written, base, loads = len(header), [_csv_line(header) + "\n"], 0, _base(ledger), json.loads
    for job, files in _jobs(ledger.export_rows()):
        job_id, state, run_id, error, _, attempts, unknown, _, spec, metadata = job[:WIDTH]
        if state == "succeeded":
            error = None
        elif state == "running":
            state = "pending"
        given = loads(spec).get("input") or {}
        urls = given.get("image_urls")
        fields = [
            job_id,
            state,
            run_id,
            "|".join(f[0] for f in _check(files, base)[0]) if files else "",
            error,
            attempts,
            unknown,
            given.get("prompt"),
            given.get("aspect_ratio"),
            given.get("quality"),
            "|".join(map(str, urls)) if isinstance(urls, list) else urls,
        ]
        if keys:
            values = loads(metadata) if metadata != "{}" else {}
            fields += [values.get(key) for key in keys]
        text = [_text(value) for value in fields]
        line = ",".join(text)
        if line.count(",") != width - 1 or '"' in line or "\n" in line or "\r" in line:
            line = _csv_line(text)
        lines.append(line + "\n")
        if len(lines) >= BATCH:
            out.write("".join(lines))
            written += len(lines)
            lines = []
    out.write("".join(lines))
    return written + len(lines) - 1


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
    """The line the csv module writes for these fields (its default dialect, minimal quoting)."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow(fields)
    return buffer.getvalue()
