"""``batchgen export``: one record per job of the ledger, JSON lines or CSV, streamed in manifest order.

Built for a million jobs: one streamed statement (ledger.export_rows: a row per
file), and each line assembled from the JSON the ledger already holds, without
parsing it again. A file that is not there with its recorded size is listed
under ``missing_outputs``, never under ``outputs``.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from json.encoder import encode_basestring
from typing import Any, TextIO

from .ledger import Ledger

BATCH = 2000  # lines written per write call

FIXED_COLUMNS = ["job_id", "state", "run_id", "outputs", "error", "attempts", "unknown_creates"]
INPUT_COLUMNS = ["prompt", "aspect_ratio", "quality", "image_urls"]


def _base(ledger: Ledger) -> str:
    folder = ledger.output_dir or os.fspath(ledger.path.parent)
    return folder.rstrip(os.sep) + os.sep


def _jobs(rows: Iterator[tuple[Any, ...]], width: int, base: str) -> Iterator[tuple[tuple[Any, ...], list[Any]]]:
    """Group the rows (one per file) by job: (the job's columns, [(path, sha256, present), ...])."""
    stat = os.stat
    job: tuple[Any, ...] | None = None
    files: list[tuple[str, str, bool]] = []
    for row in rows:
        if job is None or row[0] != job[0]:
            if job is not None:
                yield job, files
            job, files = row[:width], []
        if row[width] is not None:
            path = base + row[width + 3]
            try:
                present = stat(path).st_size == row[width + 1]
            except OSError:
                present = False
            files.append((path, row[width + 2], present))
    if job is not None:
        yield job, files


def write_jsonl(ledger: Ledger, out: TextIO) -> int:
    q, lines, written = encode_basestring, [], 0
    dump = json.JSONEncoder(ensure_ascii=False).encode
    for job, files in _jobs(ledger.export_rows(), 11, _base(ledger)):
        job_id, state, run_id, error, kind, attempts, unknown, source, model, given, metadata = job
        present = [f for f in files if f[2]]
        line = (
            f'{{"job_id":{q(job_id)},"state":"{state}","run_id":{dump(run_id)},"error":{dump(error)},'
            f'"error_kind":{dump(kind)},"attempts":{attempts},"unknown_creates":{unknown},"source":{dump(source)},'
            f'"model":{q(model)},"input":{given},"metadata":{metadata},'
            f'"outputs":[{",".join(q(f[0]) for f in present)}],"sha256":[{",".join(q(f[1]) for f in present)}]'
        )
        if len(present) < len(files):
            line += f',"missing_outputs":[{",".join(q(f[0]) for f in files if not f[2])}]'
        lines.append(line + "}\n")
        if len(lines) >= BATCH:
            out.write("".join(lines))
            written += len(lines)
            lines = []
    out.write("".join(lines))
    return written + len(lines)


def write_csv(ledger: Ledger, out: TextIO) -> int:
    """Known columns, then every metadata key (in the order they first appear) as a column of its own."""
    keys = [k for k in ledger.metadata_keys() if k not in FIXED_COLUMNS and k not in INPUT_COLUMNS]
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(FIXED_COLUMNS + INPUT_COLUMNS + keys)
    written = 0
    rows: list[list[Any]] = []
    for job, files in _jobs(ledger.export_table(), 11, _base(ledger)):
        job_id, state, run_id, error, attempts, unknown, prompt, ratio, quality, urls, metadata = job
        outputs = "|".join(f[0] for f in files if f[2])
        row = [job_id, state, run_id, outputs, error, attempts, unknown, prompt, ratio, quality, urls]
        if keys:
            values = json.loads(metadata) if metadata != "{}" else {}
            row += [_cell(values.get(key)) for key in keys]
        rows.append(["" if value is None else value for value in row])
        if len(rows) >= BATCH:
            writer.writerows(rows)
            written += len(rows)
            rows = []
    writer.writerows(rows)
    return written + len(rows)


def _cell(value: Any) -> Any:
    return json.dumps(value, ensure_ascii=False) if isinstance(value, (dict, list)) else value
