"""export's two formats, byte for byte, on a ledger of awkward values: each line checked against what the
csv and json modules write from the ledger's own records (``Ledger.iter_export``, which parses everything)."""

from __future__ import annotations

import csv
import io
import itertools
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from batchgen.exporting import FIXED_COLUMNS, INPUT_COLUMNS, parsed_input, plain_input
from batchgen.ledger import Ledger
from batchgen.models import AttemptStatus, JobSpec, SavedOutput, image_input

from .conftest import cli_environment

AWKWARD = 'a "lamp", on\nwhite\r\tété ☀ 😀 back\\slash ","model":"x" "quality":"q"'
METADATA: dict[str, Any] = {
    "sku": "S-1,2",
    "tags": ["a", "b,c"],
    "count": 3,
    "ratio": 1.5,
    "flag": False,
    "none": None,
    "obj": {"k": "v, w", "é": [1, None]},
    "text": "line\nbreak",
    "prompt": "a metadata key named like a column",
    "state": "another",
}


def awkward_jobs() -> list[JobSpec]:
    """Specs of every shape the ledger may hold: escapes, non-string fields, fields missing, other keys, nesting."""
    return [
        JobSpec("plain", image_input("a chair on white", quality="high")),
        JobSpec("ratio", image_input("a chair", aspect_ratio="3:2", quality="medium")),
        JobSpec('id,with "quote"', image_input(AWKWARD, aspect_ratio="2:3"), metadata=METADATA),
        JobSpec("urls", image_input("a, b", image_urls=["https://e.example/a.png", "https://e.example/b,|.png"])),
        JobSpec("urls-odd", {"prompt": "p", "image_urls": [1, {"a": "b"}, None, "x"]}, "m/one", sample=2),
        JobSpec("brackets", {"image_urls": ["x],[y", "]", ","], "prompt": "p] },{", "quality": "q,"}, sample=3),
        JobSpec("urls-text", {"prompt": "p", "image_urls": "https://e.example/one.png"}),
        JobSpec("urls-empty", {"prompt": "p", "image_urls": []}, metadata={"sku": "S-3"}),
        JobSpec("types", {"prompt": 42, "aspect_ratio": 1.5, "quality": True, "image_urls": None}),
        JobSpec("objects", {"prompt": {"text": "p"}, "quality": ["a", "b"], "seed": 7}),
        JobSpec("no-prompt", {"seed": 7, "nested": {"prompt": "inner", "quality": "inner"}}),
        JobSpec("empty", {}),
        JobSpec("empty-text", {"prompt": "", "quality": ""}, metadata={"clé": "vä"}),
        JobSpec("others", {"aspect_ratio": "1:1", "prompt": "p", "quality": "low", "seed": 3, "style": "x"}),
        JobSpec("between", {"a": [1], "image_urls": ["u"], "n": 1, "prompt": "p", "q": None, "quality": "high"}),
        JobSpec("named", image_input("été"), 'm"q', filename='sub/name,"x'),
        JobSpec("backslash", image_input("C:\\dir\\file"), metadata={"path": "C:\\x"}),
        JobSpec("unicode", image_input("日本語の プロンプト", quality="高")),
        JobSpec("failed", image_input("a, failed one")),
        JobSpec("failed-plain", image_input("failed plain")),
        JobSpec("pending", image_input("waits")),
        JobSpec("pending-error", image_input("waits again")),
        JobSpec("running", image_input("on its way")),
        JobSpec("several", image_input("four files")),
        JobSpec("gone", image_input("files gone")),
        JobSpec("reused", image_input("a chair on white", quality="high")),
    ]


def awkward_ledger(out: Path) -> None:
    """A ledger holding the jobs of ``awkward_jobs`` in every state, with their files (some of them gone)."""
    out.mkdir()
    jobs = awkward_jobs()
    with Ledger(out / "batchgen.sqlite") as ledger:
        old = [JobSpec("dropped", image_input("no longer in the manifest"), metadata={"old": "key"})]
        ledger.sync_manifest("old.yaml", old, output_dir=str(out))
        ledger.sync_manifest("m.yaml", jobs, output_dir=str(out))
        for job in jobs:
            name = job.job_id
            if name == "pending":
                continue
            attempt = ledger.begin_attempt(job)
            if name == "running":
                ledger.run_created(attempt, "run,running", job)
            elif name.startswith("failed"):
                ledger.run_created(attempt, f"run-{name}", job)
                error = 'it broke, "badly"\nsecond line' if name == "failed" else "refused"
                ledger.attempt_ended(attempt, name, AttemptStatus.FAILED, error, job_failed=True, kind="content")
            elif name == "pending-error":
                ledger.attempt_ended(attempt, name, AttemptStatus.UNKNOWN, "timed out, maybe", job_failed=False)
            elif name == "reused":
                ledger.not_created(attempt, name)
                saved = [SavedOutput(0, "reused.png", 3, "sha-reused", "image/png")]
                ledger.job_satisfied(
                    name, job.spec_hash(), saved, status=AttemptStatus.REUSED, run_id="run-plain", note="same"
                )
            else:
                ledger.run_created(attempt, f"run-{name}", job)
                count = 4 if name == "several" else 1
                stem = "file" if name.startswith("id,") else job.stem.replace("/", "-")
                saved = [SavedOutput(n, f"{stem}~{n}.png", 3, f"sha-{stem}-{n}", "image/png") for n in range(count)]
                ledger.job_succeeded(attempt, name, saved[::-1])  # recorded out of order: exported by n
                for output in saved:
                    if name != "gone" and output.path != "several~2.png":
                        (out / output.path).write_bytes(b"png")
        (out / "reused.png").write_bytes(b"png")
        ledger.flush()


def exported(out: Path, *format_args: str) -> str:
    """The bytes of ``batchgen export`` on standard output, decoded without translating line ends."""
    result = subprocess.run(
        [sys.executable, "-m", "batchgen", "export", "--output", str(out), *format_args],
        capture_output=True,
        env=cli_environment(None),
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.decode("utf-8")


def json_line(record: dict[str, Any], out: Path) -> str:
    """A JSONL line as export writes it: compact, non-ASCII as is, metadata as the ledger stores it."""
    dump = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    present = [o for o in record["outputs"] if (out / o["path"]).is_file()]
    missing = [o for o in record["outputs"] if o not in present]
    fields = {key: record[key] for key in ("job_id", "state", "run_id", "error", "error_kind", "attempts")}
    fields |= {"unknown_creates": record["unknown_creates"], "source": record["source"], "model": record["model"]}
    text = dump(fields)[:-1] + ',"input":' + json.dumps(record["input"], sort_keys=True, separators=(",", ":"),
                                                      ensure_ascii=False)  # fmt: skip
    text += ',"metadata":' + json.dumps(record["metadata"], ensure_ascii=False)
    text += ',"outputs":' + dump([str(out / o["path"]) for o in present])
    text += ',"sha256":' + dump([o["sha256"] for o in present])
    if missing:
        text += ',"missing_outputs":' + dump([str(out / o["path"]) for o in missing])
    return text + "}\n"


def cell(value: Any) -> str:
    """A CSV field: nothing for None, JSON for a list or an object, the text of anything else."""
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def csv_text(records: list[dict[str, Any]]) -> str:
    """The CSV the csv module writes (its default dialect, lines ending in ``\\n``) from the JSONL records."""
    keys = list(dict.fromkeys(key for record in records for key in record["metadata"]))
    keys = [key for key in keys if key not in FIXED_COLUMNS and key not in INPUT_COLUMNS]
    lines = [FIXED_COLUMNS + INPUT_COLUMNS + keys]
    for record in records:
        given = record["input"]
        urls = given.get("image_urls")
        lines.append(
            [record["job_id"], record["state"], record["run_id"], "|".join(record["outputs"]), record["error"]]
            + [record["attempts"], record["unknown_creates"], given.get("prompt"), given.get("aspect_ratio")]
            + [given.get("quality"), "|".join(map(str, urls)) if isinstance(urls, list) else urls]
            + [record["metadata"].get(key) for key in keys]
        )
    text = io.StringIO()
    for line in lines:
        row = io.StringIO()
        csv.writer(row).writerow([cell(value) for value in line])
        text.write(row.getvalue().removesuffix("\r\n") + "\n")
    return text.getvalue()


def test_jsonl_export_is_the_ledger_records_byte_for_byte(tmp_path):
    """Each JSONL line is the ledger's record of the job (states, errors, model, input, metadata, files present
    and missing, in order of n) exactly as the json module writes it, whatever the spec and metadata hold."""
    out = tmp_path / "out"
    awkward_ledger(out)
    with Ledger(out / "batchgen.sqlite") as ledger:
        records = list(ledger.iter_export())
    assert [r["job_id"] for r in records] == [job.job_id for job in awkward_jobs()]
    for record in records:
        if record["state"] == "running":
            record["state"] = "pending"
    text = exported(out)
    assert text.splitlines(keepends=True) == [json_line(record, out) for record in records]


def test_csv_export_holds_the_jsonl_content_byte_for_byte(tmp_path):
    """The CSV export is, byte for byte, the csv module's rendering of the JSONL export's content: the same jobs,
    states, run ids, present files, errors and input fields, then every metadata key, with commas, quotes,
    line breaks, unicode, missing fields, non-text values and several files per job."""
    out = tmp_path / "out"
    awkward_ledger(out)
    records = [json.loads(line) for line in exported(out).splitlines()]
    assert {r["state"] for r in records} == {"succeeded", "failed", "pending"}
    assert any(r["missing_outputs"] for r in records if "missing_outputs" in r)
    table = exported(out, "--format", "csv")
    assert table == csv_text(records)
    rows = list(csv.DictReader(io.StringIO(table, newline="")))
    assert [row["job_id"] for row in rows] == [r["job_id"] for r in records]
    (awkward,) = [row for row in rows if row["prompt"] == AWKWARD]
    assert awkward["text"] == METADATA["text"] and awkward["sku"] == METADATA["sku"]


def test_csv_fields_with_line_breaks_are_quoted_and_read_back(tmp_path):
    """A prompt, error or metadata value holding a line break (and nothing else to quote) is quoted in the CSV,
    so a CSV reader gets each job back as one row with the text as it was."""
    out = tmp_path / "out"
    out.mkdir()
    jobs = [JobSpec("lf", image_input("two\nlines"), metadata={"note": "a\nb"}), JobSpec("cr", image_input("x\ry"))]
    with Ledger(out / "batchgen.sqlite") as ledger:
        ledger.sync_manifest("m.yaml", jobs, output_dir=str(out))
        attempt = ledger.begin_attempt(jobs[1])
        ledger.attempt_ended(attempt, "cr", AttemptStatus.FAILED, "first\nsecond", job_failed=True)
        ledger.flush()
    rows = list(csv.DictReader(io.StringIO(exported(out, "--format", "csv"), newline="")))
    assert [(r["job_id"], r["prompt"], r["note"]) for r in rows] == [("lf", "two\nlines", "a\nb"), ("cr", "x\ry", "")]
    assert rows[1]["error"] == "first\nsecond"


def test_input_fields_cut_from_the_spec_text_are_those_of_the_parsed_spec():
    """The CSV's input fields cut out of a stored spec's text are those of the parsed spec, for every shape the
    cut takes; any other shape (escapes, other keys or types, no prompt) is left to the parser."""
    taken = 0
    values = ["", "a b", "x],[y", "p] },{", "é ☀", ",", "a\\b", 'q"t', 1, None, ["u"]]
    plain_urls = ([], ["a", "b,c]"], ["a"])
    for prompt, ratio, quality in itertools.product(values, repeat=3):
        named = (("prompt", prompt), ("aspect_ratio", ratio), ("quality", quality))
        fields = {key: value for key, value in named if value is not None}
        texts = "prompt" in fields and all(type(v) is str and "\\" not in v and '"' not in v for v in fields.values())
        for urls in (None, *plain_urls, ["a\\"], [1], "u"):
            stored = JobSpec("j", fields if urls is None else fields | {"image_urls": urls}, "m/x", sample=2)
            cut = plain_input(stored.to_record()[0])
            assert cut is None or cut == parsed_input(stored.input), stored
            assert (cut is not None) == (texts and (urls is None or urls in plain_urls)), stored
            taken += cut is not None
    assert taken > 100
