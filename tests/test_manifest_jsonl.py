"""JSONL manifests read a batch of lines at a time: the same jobs, spec hashes and problems as line by line."""

from __future__ import annotations

import codecs
import json
import random
from pathlib import Path
from typing import Any

import pytest

from batchgen.errors import ManifestError
from batchgen.manifest import jsonl_reader
from batchgen.manifest.jsonl_reader import BATCH_LINES, read_jsonl
from batchgen.manifest.problems import Problems
from batchgen.manifest.reading import read_jobs
from batchgen.manifest.records import Batch, Requests
from batchgen.models import DEFAULT_MODEL, JobSpec

# Lines of every shape: valid jobs in the common shape and off it, and every kind of bad line.
VALID = [
    '{"prompt": "a ceramic lamp"}',
    '{"id": "lamp-1", "prompt": "a ceramic lamp", "aspect_ratio": "3:2", "quality": "high"}',
    '{"id": "lamp_2", "prompt": "  spaced out  ", "aspect_ratio": null, "quality": null, "metadata": null}',
    '{"prompt": "caf\u00e9 \u2615 \u65e5\u672c \U0001f600", "metadata": {"sku": "\u00e9t\u00e9"}}',
    json.dumps({"prompt": "escaped caf\u00e9 \U0001f600", "metadata": {"emoji": "\U0001f600"}}),  # \\uXXXX escapes
    json.dumps({"prompt": 'line\nbreak\ttab "quoted" back\\slash', "id": "esc.1"}),
    json.dumps({"prompt": "crlf\r\ninside\rtoo", "quality": "medium"}),
    json.dumps({"prompt": "urls", "image_urls": ["https://example.com/a.png", "http://[::1]:8080/b?c=d"]}),
    json.dumps({"prompt": "one url", "image_urls": "https://example.com/a.png"}),
    json.dumps({"prompt": "no urls", "image_urls": []}),
    json.dumps({"prompt": "null urls", "image_urls": None}),
    json.dumps({"prompt": "flat", "metadata": {"n": 3, "ok": True, "none": None, "s": "x"}}),
    json.dumps({"prompt": "float", "metadata": {"price": 12.5}}),
    json.dumps({"prompt": "nested", "metadata": {"a": {"b": [1, {"c": "d"}]}, "list": [1, 2]}}),
    json.dumps({"id": "Mixed.Case-ID_9", "prompt": "p"}),
    json.dumps({"prompt": "dup"}),
    json.dumps({"prompt": "dup"}),  # the same request twice: one run, two jobs
    '{"prompt": "a", "prompt": "last wins"}',
    '   {"prompt": "indented", "quality": "high"}   ',
]
# Valid, but off the common shape: their batch goes through the per-job checks.
VALID_APART = ['{"id": 42, "prompt": "a numeric id"}', '{"prompt": "it says }, { inside"}']
BAD = [
    '{"id": "x"}',  # no prompt
    '{"prompt": null}',
    '{"prompt": 5}',
    '{"prompt": ""}',
    '{"prompt": "   "}',
    json.dumps({"prompt": "nul \u0000 inside"}),
    '{"prompt": "lone \\ud800 surrogate"}',
    '{"prompt": "p", "metadata": {"bad": "\\udc00"}}',
    json.dumps({"prompt": "x" * 32_001}),
    '{"prompt": "p", "sample": 2}',
    '{"prompt": "p", "filename": "out/x"}',
    '{"prompt": "p", "filename": "lamp-1"}',
    '{"prompt": "p", "promt": "typo"}',
    '{"prompt": "p", "input": {"prompt": "q"}}',
    '{"id": true, "prompt": "p"}',
    '{"id": "", "prompt": "p"}',
    '{"id": "last-run", "prompt": "p"}',
    '{"id": "LAST-RUN", "prompt": "p"}',
    '{"id": "con", "prompt": "p"}',
    '{"id": "lpt1.txt", "prompt": "p"}',
    '{"id": "a\\nb", "prompt": "p"}',
    '{"id": "a/b", "prompt": "p"}',
    '{"id": ".hidden", "prompt": "p"}',
    '{"id": "x' + "y" * 200 + '", "prompt": "p"}',
    '{"prompt": "p", "aspect_ratio": 1}',
    '{"prompt": "p", "aspect_ratio": "16x9"}',
    '{"prompt": "p", "aspect_ratio": ""}',
    '{"prompt": "p", "quality": "HIGH"}',
    '{"prompt": "p", "image_urls": ["ftp://example.com/a"]}',
    '{"prompt": "p", "image_urls": 3}',
    '{"prompt": "p", "image_urls": ["https://exa mple.com"]}',
    '{"prompt": "p", "metadata": [1, 2]}',
    '{"prompt": "p", "metadata": "text"}',
    '{"prompt": "p", "metadata": {"x": NaN}}',
    '{"prompt": "p", "metadata": {"x": 1e999}}',
    '{"prompt": "p", "metadata": {"x": -Infinity}}',
    '{"prompt": "p", "metadata": ' + '{"a": ' * 40 + "1" + "}" * 40 + "}",
    "[" * 100_000 + "]" * 100_000,
    "[1, 2]",
    '"just text"',
    "3",
    "null",
    '{"prompt": "x",}',
    '{"prompt": "a"} {"prompt": "b"}',
    '{"prompt": "a"}, {"prompt": "b"}',
    '{"prompt": "a"},{"prompt": "b"}',
    '{"prompt": "a"}\x0c',
    "\x0c",
    '\ufeff{"prompt": "a BOM that is not at the start"}',
    '{"prompt": "p", "n": ' + "9" * 5000 + "}",
]
BLANK = ["", "   ", "\t", " \t "]
# Lines that only make sense together: one object split over two lines, after one line holding two objects.
SPLIT = ['{"prompt": "a"}, {"prompt": "b"}', '{"prompt": "c", "metadata": {"x": [1', "2]}}"]
IDS = ["dup-id", "DUP-ID", "lamp-1", "other"]


def outcome(path: Path, batch_lines: int, mode: str = "jobs") -> tuple[list[Any], list[Any] | None]:
    """What reading ``path`` gives: each job (id, spec hash, record, file name, metadata), or the count, or the
    requests; and every problem with its place."""
    problems = Problems(str(path), "line")

    def source(found: Problems) -> Any:
        return read_jsonl(str(path), found, batch_lines=batch_lines)

    build, requests = mode != "count", mode == "requests"
    items: list[Any] = []
    try:
        for item in read_jobs(source, problems, DEFAULT_MODEL, build=build, requests=requests):
            items.extend(_flat(item))
    except ManifestError as error:
        return items, [(p.path, p.line, p.field, p.message, p.where_kind) for p in error.problems]
    return items, None


def _flat(item: JobSpec | Requests | int) -> list[Any]:
    if isinstance(item, int):
        return [item]
    if isinstance(item, JobSpec):
        given = item.input
        request = (item.model, given["prompt"], given.get("aspect_ratio", ""), given.get("quality", ""))
        return [(item.job_id, item.spec_hash(), item.to_record(), item.filename, item.metadata, item.sample, request)]
    urls = item.image_urls or [()] * len(item.prompts)
    return [
        ("request", item.model, *row)
        for row in zip(item.prompts, item.aspect_ratios, item.qualities, urls, strict=True)
    ]


def _as_requests(items: list[Any]) -> list[Any]:
    """Jobs as the plan sees them, so that a batch's Requests compare with the per-job path's specs."""
    flat = []
    for item in items:
        if item[0] == "request":
            flat.append(item)
        else:
            record = json.loads(item[2][0])
            urls = tuple(record["input"].get("image_urls", ()))
            flat.append(("request", *item[6], urls))
    return flat


def _batches(path: Path, batch_lines: int) -> int:
    return sum(
        isinstance(item, Batch) for item in read_jsonl(str(path), Problems(str(path), "line"), batch_lines=batch_lines)
    )


def write_lines(path: Path, lines: list[str], *, crlf: bool = False, bom: bool = False, end: bool = True) -> Path:
    text = ("\r\n" if crlf else "\n").join(lines) + (("\r\n" if crlf else "\n") if end else "")
    path.write_bytes((codecs.BOM_UTF8 if bom else b"") + text.encode("utf-8", "surrogatepass"))
    return path


def assert_same(path: Path, batch_lines: int) -> None:
    for mode in ("jobs", "count", "requests"):
        fast, slow = outcome(path, batch_lines, mode), outcome(path, 0, mode)
        if mode == "requests":
            fast, slow = (_as_requests(fast[0]), fast[1]), (_as_requests(slow[0]), slow[1])
        if mode == "count":  # a batch counts its jobs at once
            fast, slow = ([sum(fast[0])], fast[1]), ([sum(slow[0])], slow[1])
        assert fast == slow, (mode, path.read_bytes()[:2000])


def test_valid_lines_take_the_fast_path_with_the_same_jobs_and_hashes(tmp_path):
    """Every valid shape, batched, gives the jobs, spec hashes and records the per-job path gives, and is batched
    (a batch where every job has an id, and one where none has)."""
    lines = [line.replace('"dup"', f'"dup {index}"') for index, line in enumerate(VALID)] * 3
    numbers = iter(range(10**6))
    with_ids = [
        line.replace('"id": "', f'"id": "n{next(numbers)}-', 1)
        if '"id"' in line
        else line.replace("{", f'{{"id": "n{next(numbers)}", ', 1)
        for line in lines
    ]
    without_ids = [json.dumps({k: v for k, v in json.loads(line).items() if k != "id"}) for line in lines]
    for crlf in (False, True):
        for name, shaped in (("ids", with_ids), ("no-ids", without_ids)):
            path = write_lines(tmp_path / f"{name}-{crlf}.jsonl", shaped, crlf=crlf, bom=crlf)
            for batch_lines in (1, 4, BATCH_LINES):
                assert_same(path, batch_lines)
            assert _batches(path, BATCH_LINES) == 1
            jobs, problems = outcome(path, BATCH_LINES)
            assert problems is None and len(jobs) == len(lines)
        apart = write_lines(tmp_path / f"apart-{crlf}.jsonl", [*lines, *VALID_APART], crlf=crlf)
        assert_same(apart, BATCH_LINES)
        assert _batches(apart, BATCH_LINES) == 0


def test_common_shape_in_bulk_is_batched(tmp_path):
    """A large manifest of the common shape goes through as batches: several thousand lines, a Batch per 2,048."""
    lines = [
        json.dumps({"id": f"job-{i:06d}", "prompt": f"photo {i}", "quality": "high", "metadata": {"sku": str(i)}})
        for i in range(5000)
    ]
    path = write_lines(tmp_path / "bulk.jsonl", lines + [""])
    assert _batches(path, BATCH_LINES) == 3
    assert_same(path, BATCH_LINES)


@pytest.mark.parametrize("seed", range(60))
def test_mixed_manifests_give_the_same_jobs_and_problems_batched_or_not(tmp_path, seed):
    """Random mixes of valid, bad and blank lines (bad lines mid-batch and last, repeated ids, CRLF, BOM, no final
    newline) give the same jobs, spec hashes, counts, requests and problems (line, field, message) either way."""
    rng = random.Random(seed)
    lines = []
    for _ in range(rng.randint(1, 40)):
        pick = rng.random()
        if pick < 0.55:
            line = rng.choice(VALID + VALID_APART)
            if rng.random() < 0.4:
                line = line.replace("{", '{"id": "' + rng.choice(IDS) + '", ', 1) if '"id"' not in line else line
            lines.append(line)
        elif pick < 0.8:
            lines.append(rng.choice(BAD))
        elif pick < 0.9:
            lines.append(rng.choice(BLANK))
        else:
            lines += SPLIT
    if rng.random() < 0.3:
        lines.append(rng.choice(BAD))  # a bad line at the very end
    path = write_lines(
        tmp_path / "m.jsonl", lines, crlf=rng.random() < 0.3, bom=rng.random() < 0.3, end=rng.random() < 0.8
    )
    for batch_lines in (1, 3, 7, BATCH_LINES):
        assert_same(path, batch_lines)


def test_undecodable_utf16_and_overlong_lines_match(tmp_path, monkeypatch):
    """Bytes that are not UTF-8 (reported once), a UTF-16 file and over-long lines give the same problems either way."""
    good = b'{"prompt": "a"}\n'
    for name, data in {
        "latin1.jsonl": good + b'{"prompt": "caf\xe9"}\n' + good + b'{"prompt": "\xff"}\n' + good,
        "utf16.jsonl": codecs.BOM_UTF16_LE + '{"prompt": "a"}\n'.encode("utf-16-le"),
        "bom-only.jsonl": codecs.BOM_UTF8 + b"\n" + good,
        "empty.jsonl": b"",
        "blank.jsonl": b"\n \n\r\n",
    }.items():
        path = tmp_path / name
        path.write_bytes(data)
        for batch_lines in (1, 2, BATCH_LINES):
            assert_same(path, batch_lines)
    monkeypatch.setattr(jsonl_reader, "MAX_JSONL_LINE_BYTES", 100)
    monkeypatch.setattr(jsonl_reader, "BLOCK_BYTES", 64)  # lines span blocks, and a long one several
    monkeypatch.setattr(jsonl_reader, "BATCH_BYTES", 150)  # and batches are cut short by their bytes
    long_line = '{"prompt": "' + "b" * 300 + '"}'
    edge = '{"prompt": "' + "c" * (100 - 14) + '"}'  # exactly the limit
    for ending in ("\n", ""):
        for lines in ([long_line, '{"prompt": "a"}', edge, '{"prompt": 3}'], ['{"prompt": "a"}', long_line]):
            path = tmp_path / "long.jsonl"
            path.write_text("\n".join(lines) + ending)
            for batch_lines in (1, 2, BATCH_LINES):
                assert_same(path, batch_lines)
    _, problems = outcome(path, BATCH_LINES)
    assert problems is not None and [(line, field) for _, line, field, _, _ in problems] == [(2, None)]


def test_a_later_file_name_meets_ids_claimed_by_batches(tmp_path):
    """A job naming its file like an earlier or later batched job's id is reported as the per-job path reports it."""
    lines = [json.dumps({"id": f"job-{i}", "prompt": f"p {i}"}) for i in range(10)]
    lines.insert(6, '{"prompt": "named", "filename": "JOB-2"}')
    lines.insert(7, '{"prompt": "named too", "filename": "job-9"}')
    path = write_lines(tmp_path / "names.jsonl", lines)
    for batch_lines in (1, 3, 4, BATCH_LINES):
        assert_same(path, batch_lines)
    _, problems = outcome(path, 3)
    assert problems is not None and any("file name" in message for *_, message, _ in problems)


@pytest.mark.parametrize("seed", range(20))
def test_line_batches_give_the_lines_readline_gives(tmp_path, monkeypatch, seed):
    """Lines read a block at a time, in batches cut by count and by bytes, are the lines (and over-long lines)
    bounded_lines reads one readline at a time, with the same numbers."""
    rng = random.Random(seed)
    data = b"".join(rng.choice([b"\n", b"\r\n", b"ab", b"x" * 40, b"{}", b" "]) for _ in range(rng.randint(0, 400)))
    path = tmp_path / "lines.jsonl"
    path.write_bytes(data)
    limit = rng.choice([10, 50, 1000])
    monkeypatch.setattr(jsonl_reader, "BLOCK_BYTES", rng.choice([1, 7, 64, 4096]))
    monkeypatch.setattr(jsonl_reader, "BATCH_BYTES", rng.choice([1, 100, 1 << 20]))
    with open(path, "rb") as file:
        expected = [(number, line if line is None else line.removesuffix(b"\n")) for number, line in
                    jsonl_reader.bounded_lines(file, limit)]  # fmt: skip
    with open(path, "rb") as file:
        batches = list(jsonl_reader.line_batches(file, limit, rng.choice([1, 3, 100])))
    got = [(first + offset, line) for first, lines, _ended in batches for offset, line in enumerate(lines)]
    assert got == expected
    assert all(ended for *_, ended in batches[:-1])
    if expected and expected[-1][1] is not None:  # whether the last line ended with a newline
        assert batches[-1][2] == data.endswith(b"\n")
