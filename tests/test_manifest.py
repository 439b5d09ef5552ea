"""Tests of batchgen.manifest: parsing, validation, stable ids and problem reporting."""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings, strategies as st

from batchgen.errors import ManifestError, Problem
from batchgen.manifest import iter_jobs, jsonl_reader, load_jobs, validate, yaml_reader
from batchgen.manifest.csv_reader import UNCLOSED_QUOTE
from batchgen.models import DEFAULT_MODEL, MAX_JOB_ID_LENGTH, MAX_PROMPT_LENGTH, JobSpec, image_input

from .manifest_files import problems_of, write

BAD_MANIFESTS = Path(__file__).parent / "bad_manifests"
ID_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")


def only_problem(path: Path) -> Problem:
    problems = problems_of(path)
    assert len(problems) == 1, problems
    return problems[0]


def generated_id(slug: str, spec: JobSpec) -> str:
    return f"{slug}-{spec.spec_hash().removeprefix('v1:')[:10]}"


# --- YAML ---------------------------------------------------------------------------------

EXAMPLE_YAML = """\
model: openai/gpt-image-1.5
defaults:
  quality: high
  metadata: {catalogue: spring}
jobs:
  - id: lamp-1
    prompt: A ceramic lamp
    aspect_ratio: 3:2
    metadata: {sku: L-1, tags: [a, b], size: {w: 3}}
  - id: shirt-2
    prompt: |
      A linen shirt
    quality: medium
    image_urls: https://example.com/shirt.jpg
  - id: 7
    prompt: A mug
    quality: null
"""


def test_yaml_jobs_parse_with_defaults_overrides_and_metadata(tmp_path):
    """A YAML manifest gives specs in order, with defaults applied, overridden and metadata merged."""
    jobs = load_jobs(write(tmp_path, "m.yaml", EXAMPLE_YAML))
    assert [job.job_id for job in jobs] == ["lamp-1", "shirt-2", "7"]
    lamp, shirt, mug = jobs
    assert lamp == JobSpec("lamp-1", image_input("A ceramic lamp", "3:2", "high"), DEFAULT_MODEL)
    assert lamp.metadata == {"catalogue": "spring", "sku": "L-1", "tags": ["a", "b"], "size": {"w": 3}}
    assert shirt.prompt == "A linen shirt" and shirt.input["quality"] == "medium"
    assert shirt.input["image_urls"] == ["https://example.com/shirt.jpg"]
    assert shirt.metadata == {"catalogue": "spring"}
    assert mug.input["quality"] == "high"  # null means "not set", so the default applies
    assert type(lamp.metadata) is dict


def test_yaml_bare_list_of_jobs_is_accepted(tmp_path):
    """A YAML file that is just a list of jobs is a manifest with the default model."""
    jobs = load_jobs(write(tmp_path, "m.yml", "- id: a\n  prompt: One\n- id: b\n  prompt: Two\n"))
    assert [(job.job_id, job.prompt, job.model) for job in jobs] == [
        ("a", "One", DEFAULT_MODEL),
        ("b", "Two", DEFAULT_MODEL),
    ]


def test_yaml_numbers_in_text_fields_are_read_as_written(tmp_path):
    """Unquoted 3:2 / 1:1 (YAML 1.1 sexagesimal) and 0012 (octal) ids keep their written text."""
    text = "jobs:\n  - {id: 0012, prompt: a, aspect_ratio: 3:2}\n  - {id: 12, prompt: b, aspect_ratio: 1:1}\n"
    jobs = load_jobs(write(tmp_path, "m.yaml", text))
    assert [(job.job_id, job.input["aspect_ratio"]) for job in jobs] == [("0012", "3:2"), ("12", "1:1")]


def test_yaml_metadata_must_be_json_compatible(tmp_path):
    """Dates in metadata become ISO strings; binary, sets, NaN and non-text keys are problems."""
    good = "jobs:\n  - prompt: a\n    metadata: {launch: 2025-03-01}\n"
    assert load_jobs(write(tmp_path, "good.yaml", good))[0].metadata == {"launch": "2025-03-01"}
    bad = (
        "jobs:\n"
        "  - {prompt: a, metadata: {blob: !!binary aGVsbG8=}}\n"
        "  - {prompt: b, metadata: {s: !!set {x: null}}}\n"
        "  - {prompt: c, metadata: {n: .nan}}\n"
        "  - {prompt: d, metadata: {1: one}}\n"
    )
    problems = problems_of(write(tmp_path, "bad.yaml", bad))
    assert [(p.line, p.field) for p in problems] == [(line, "metadata") for line in (2, 3, 4, 5)]


def test_yaml_unknown_keys_are_errors_with_suggestions(tmp_path):
    """Unknown job keys are errors: '-'/case variants and typos get a 'did you mean'."""
    text = "jobs:\n  - Prompt: a\n    aspect-ratio: '1:1'\n    promt: b\n    sku: X\n"
    problems = problems_of(write(tmp_path, "m.yaml", text))
    by_field = {p.field: p for p in problems}
    assert "did you mean 'prompt'?" in by_field["Prompt"].message
    assert "did you mean 'aspect_ratio'?" in by_field["aspect-ratio"].message
    assert by_field["aspect-ratio"].line == 3
    assert "did you mean 'prompt'?" in by_field["promt"].message
    assert "metadata" in by_field["sku"].message
    assert by_field["prompt"].message == "prompt is missing or empty"


def test_yaml_top_level_keys_are_checked(tmp_path):
    """An unknown top-level key is an error naming the close match."""
    problem = problems_of(write(tmp_path, "m.yaml", "job:\n  - prompt: a\n"))[0]
    assert problem.field == "job" and "did you mean 'jobs'?" in problem.message


def test_yaml_repeated_key_is_a_problem(tmp_path):
    """A key given twice in one job is reported with the line of the first."""
    problem = only_problem(write(tmp_path, "m.yaml", "jobs:\n  - prompt: a\n    prompt: b\n"))
    assert (problem.line, problem.field) == (3, "prompt") and "line 2" in problem.message


def test_yaml_defaults_reject_id_and_prompt_and_report_bad_values_once(tmp_path):
    """Defaults may not set id or prompt, and a bad default is one problem, not one per job."""
    text = "defaults:\n  id: x\n  prompt: y\n  quality: ultra\njobs:\n  - prompt: a\n  - prompt: b\n"
    problems = problems_of(write(tmp_path, "m.yaml", text))
    assert [(p.line, p.field) for p in problems] == [(2, "id"), (3, "prompt"), (4, "quality")]
    assert "cannot have a default" in problems[0].message


def test_yaml_model_must_be_a_model_name(tmp_path):
    """A model that is not an 'owner/name' is a problem on the model line, with an example."""
    problem = only_problem(write(tmp_path, "m.yaml", "model: gpt image\njobs:\n  - prompt: a\n"))
    assert (problem.line, problem.field) == (1, "model") and DEFAULT_MODEL in problem.message


def test_other_models_take_their_input_as_written(tmp_path):
    """For a model other than the default, 'input' is passed through as JSON, with defaults merged in."""
    text = (
        "model: acme/flux-9\n"
        "defaults: {input: {steps: 30, size: 1024x1024}}\n"
        "jobs:\n"
        "  - id: a\n"
        "    input: {prompt: A lamp, steps: 40, extra: {nested: [1, 2.5, true]}}\n"
    )
    (job,) = load_jobs(write(tmp_path, "m.yaml", text))
    assert job.model == "acme/flux-9"
    assert job.input == {"prompt": "A lamp", "steps": 40, "size": "1024x1024", "extra": {"nested": [1, 2.5, True]}}
    assert job.request_body() == {"model": "acme/flux-9", "input": job.input}


def test_other_models_refuse_default_model_fields_and_non_json(tmp_path):
    """'prompt' at job level for another model points to 'input:'; input must be a JSON-able mapping."""
    text = "model: acme/flux-9\njobs:\n  - prompt: a\n  - input: [1]\n  - input: {x: .nan}\n  - id: b\n"
    problems = problems_of(write(tmp_path, "m.yaml", text))
    assert [(p.line, p.field) for p in problems] == [
        (3, "prompt"),
        (3, "input"),
        (4, "input"),
        (5, "input"),
        (6, "input"),
    ]
    assert "under 'input:'" in problems[0].message


def test_yaml_syntax_error_names_its_line(tmp_path):
    """A YAML syntax error becomes a problem on the line of the YAML mark."""
    problem = only_problem(write(tmp_path, "m.yaml", "jobs:\n  - id: a\n    prompt: x\n   quality: high\n"))
    assert problem.line == 4 and problem.message.startswith("YAML syntax error")


def test_yaml_billion_laughs_fails_fast(tmp_path):
    """An alias bomb is refused at its first alias instead of being expanded."""
    started = time.monotonic()
    problem = only_problem(BAD_MANIFESTS / "billion_laughs.yaml")
    assert time.monotonic() - started < 1
    assert problem.line == 2 and "aliases" in problem.message


def test_yaml_deep_nesting_and_unsafe_tags_are_problems(tmp_path):
    """Pathological nesting and python/* tags give problems, not crashes or object construction."""
    assert only_problem(write(tmp_path, "open.yaml", "[" * 100_000)).line == 1
    deep = "jobs:\n  - prompt: a\n    metadata: {x: " + "[" * 40 + "]" * 40 + "}\n"
    problem = only_problem(write(tmp_path, "deep.yaml", deep))
    assert problem.line == 3 and "nested more than 32 levels" in problem.message
    text = "jobs:\n  - prompt: !!python/object/apply:os.system [echo hi]\n"
    problem = only_problem(write(tmp_path, "tag.yaml", text))
    assert (problem.line, problem.field) == (2, "prompt") and "cannot read this value" in problem.message


def test_yaml_shape_errors(tmp_path):
    """A non-list 'jobs', a non-mapping job, a scalar document and two documents are problems."""
    assert only_problem(write(tmp_path, "a.yaml", "jobs: 3\n")).field == "jobs"
    problem = only_problem(write(tmp_path, "b.yaml", "jobs:\n  - just a prompt\n"))
    assert problem.line == 2 and "mapping" in problem.message
    assert "list of jobs" in only_problem(write(tmp_path, "c.yaml", "hello\n")).message
    assert only_problem(write(tmp_path, "d.yaml", "- prompt: a\n---\n- prompt: b\n")).line == 2


def test_yaml_with_bom_and_crlf_parses(tmp_path):
    """A UTF-8 BOM and CRLF line ends are fine in YAML, and lines are still counted right."""
    path = write(tmp_path, "m.yaml", "\ufeffjobs:\r\n  - prompt: Été 🌞\r\n  - prompt: 5\r\n")
    assert only_problem(path).line == 3
    assert load_jobs(write(tmp_path, "ok.yaml", "\ufeffjobs:\r\n  - prompt: Été 🌞\r\n"))[0].prompt == "Été 🌞"


def test_size_caps_give_problems(tmp_path, monkeypatch):
    """Over-large YAML (bytes or values) and over-long JSONL lines are problems, not memory hogs."""
    monkeypatch.setattr(yaml_reader, "MAX_YAML_EVENTS", 20)
    problem = only_problem(write(tmp_path, "many.yaml", "- prompt: a\n" * 20))
    assert "over 20 values" in problem.message
    monkeypatch.setattr(yaml_reader, "MAX_YAML_BYTES", 100)
    assert "limited to" in only_problem(write(tmp_path, "big.yaml", "- prompt: a\n" * 20)).message
    monkeypatch.setattr(jsonl_reader, "MAX_JSONL_LINE_BYTES", 100)
    text = '{"prompt": "a"}\n{"prompt": "' + "b" * 300 + '"}\n{"prompt": 3}\n'
    problems = problems_of(write(tmp_path, "m.jsonl", text))
    assert [(p.line, p.field) for p in problems] == [(2, None), (3, "prompt")]


# --- CSV ----------------------------------------------------------------------------------


def test_csv_rows_parse_with_metadata_in_column_order(tmp_path):
    """CSV known columns set fields; every other column is string metadata in column order."""
    text = (
        "sku,id,prompt,aspect_ratio,quality,image_urls,category\n"
        "L-1,lamp-1,A lamp,3:2,high,https://e.com/a.jpg|https://e.com/b.jpg,lighting\n"
        "M-2,mug-2,A mug,,,,\n"
    )
    lamp, mug = load_jobs(write(tmp_path, "m.csv", text))
    assert lamp == JobSpec(
        "lamp-1", image_input("A lamp", "3:2", "high", ("https://e.com/a.jpg", "https://e.com/b.jpg")), DEFAULT_MODEL
    )
    assert list(lamp.metadata.items()) == [("sku", "L-1"), ("category", "lighting")]
    assert mug.input == {"prompt": "A mug"}
    assert mug.metadata == {"sku": "M-2", "category": ""}


def test_csv_image_urls_split_on_commas_whitespace_and_pipes(tmp_path):
    """Several URLs in one cell may be separated by commas, whitespace or '|'."""
    text = 'prompt,image_urls\na,"https://e.com/1, https://e.com/2 |https://e.com/3\nhttps://e.com/4"\n'
    (job,) = load_jobs(write(tmp_path, "m.csv", text))
    assert job.input["image_urls"] == [f"https://e.com/{n}" for n in range(1, 5)]


def test_csv_bom_crlf_multiline_and_unicode(tmp_path):
    """UTF-8 with BOM, CRLF and quoted multi-line cells parse; CRLF inside a cell becomes LF."""
    text = '\ufeff id , prompt \r\na,"Line one\r\nline two"\r\nb,東京の夜景 🌃 مرحبا\r\n'
    jobs = load_jobs(write(tmp_path, "m.csv", text))
    assert [(job.job_id, job.prompt) for job in jobs] == [
        ("a", "Line one\nline two"),
        ("b", "東京の夜景 🌃 مرحبا"),
    ]
    lf = load_jobs(write(tmp_path, "lf.csv", 'id,prompt\na,"Line one\nline two"\n'))
    assert lf[0].spec_hash() == jobs[0].spec_hash()


def test_csv_rows_are_record_numbers_not_lines(tmp_path):
    """Row numbers count CSV records (header = row 1, skipped blank rows included), not file lines."""
    text = 'id,prompt,quality\na,"three\nline\nprompt",high\n\n,,\n  , ,\t\nb,x,ultra\n'
    problem = only_problem(write(tmp_path, "m.csv", text))
    assert (problem.where_kind, problem.line, problem.field) == ("row", 6, "quality")
    text = 'id,prompt,quality\na,"two\nlines",ultra\n'
    problem = only_problem(write(tmp_path, "n.csv", text))
    assert problem.line == 2 and "(row 2 is lines 2-3)" in problem.message


def test_csv_missing_prompt_column_is_one_header_problem(tmp_path):
    """Without a 'prompt' column there is one problem, on row 1, not one per row."""
    rows = "".join(f"job-{n},something\n" for n in range(50))
    problem = only_problem(write(tmp_path, "m.csv", "id,description\n" + rows))
    assert (problem.line, problem.field, problem.where_kind) == (1, "prompt", "row")


def test_csv_misspelt_columns_are_errors_but_other_columns_are_metadata(tmp_path):
    """Columns like 'promt' or 'Aspect-Ratio' are errors; 'quantity' or 'ids' stay metadata."""
    text = "id,promt,Aspect-Ratio,ID\na,b,1:1,c\n"
    problems = problems_of(write(tmp_path, "bad.csv", text))
    assert [(p.line, p.field) for p in problems] == [(1, "promt"), (1, "Aspect-Ratio"), (1, "ID")]
    assert "'aspect_ratio'" in problems[1].message
    (job,) = load_jobs(write(tmp_path, "ok.csv", "prompt,quantity,ids,notes\na,3,x,y\n"))
    assert job.metadata == {"quantity": "3", "ids": "x", "notes": "y"}


def test_csv_extra_cells_and_duplicate_columns(tmp_path):
    """More cells than columns, a value under an unnamed column and a repeated column are problems."""
    problem = only_problem(write(tmp_path, "a.csv", "id,prompt\na,b,c\n"))
    assert (problem.line, problem.field) == (2, None) and "3 cells" in problem.message
    assert load_jobs(write(tmp_path, "b.csv", "id,prompt,\na,b,\n"))[0].metadata == {}
    assert only_problem(write(tmp_path, "c.csv", "id,prompt,\na,b,c\n")).line == 2
    assert only_problem(write(tmp_path, "d.csv", "prompt,sku,sku\na,1,2\n")).field == "sku"


def test_csv_invalid_utf8_names_the_row(tmp_path):
    """Undecodable bytes mid-file are reported once, with the record number of the first."""
    data = b'id,prompt\na,"multi\nline"\nb,ok\n' + "c,caf\xe9\nd,cr\xe8me\n".encode("latin-1")
    problem = only_problem(write(tmp_path, "m.csv", data))
    assert (problem.line, problem.where_kind) == (4, "row") and "0xe9" in problem.message


def test_csv_cell_beyond_the_field_limit_is_a_problem(tmp_path):
    """A cell too big for the CSV reader is a problem on its row, not an exception."""
    problem = only_problem(write(tmp_path, "m.csv", "id,prompt\na,b\nc," + "x" * (5 * 2**20) + "\n"))
    assert problem.line == 3 and "cannot read the CSV" in problem.message


# --- JSONL --------------------------------------------------------------------------------


def test_jsonl_lines_parse_and_blank_lines_are_ignored(tmp_path):
    """JSONL gives one job per object line; line numbers count blank lines too."""
    text = (
        '\ufeff{"id": "a", "prompt": "A lamp", "image_urls": ["https://e.com/a.jpg"], "metadata": {"k": 1}}\n'
        "\n"
        '{"id": 5, "prompt": "A mug", "quality": "high", "aspect_ratio": null}\n'
        '{"prompt": "A vase", "quality": "best"}\n'
    )
    path = write(tmp_path, "m.jsonl", text)
    problem = only_problem(path)
    assert (problem.line, problem.field, problem.where_kind) == (4, "quality", "line")
    jobs = list(load_jobs(write(tmp_path, "ok.jsonl", text.rsplit("\n", 2)[0] + "\n")))
    assert [(j.job_id, j.input.get("quality"), j.metadata) for j in jobs] == [("a", None, {"k": 1}), ("5", "high", {})]


def test_jsonl_bad_lines_are_problems(tmp_path):
    """Invalid JSON, non-objects, unknown keys and lone surrogates are reported with their lines."""
    text = (
        '{"prompt": "ok"}\n'
        '{"prompt": "a",}\n'
        '"just a string"\n'
        '{"prompt": "b", "aspect-ratio": "1:1"}\n'
        '{"prompt": "bad \\ud800 surrogate"}\n'
        '{"prompt": "deep", "metadata": {"x": ' + "[" * 40 + "]" * 40 + "}}\n"
        '{"prompt": "deeper", "metadata": ' + "[" * 100_000 + "\n"
    )
    problems = problems_of(write(tmp_path, "m.jsonl", text))
    assert [(p.line, p.field) for p in problems] == [
        (2, None),
        (3, None),
        (4, "aspect-ratio"),
        (5, "prompt"),
        (6, "metadata"),
        (7, None),
    ]
    assert "not valid JSON" in problems[0].message
    assert "did you mean 'aspect_ratio'?" in problems[2].message


# --- field rules --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("   ", "prompt is missing or empty"),  # CSV drops blank cells
        ("a\x00b", "NUL"),
        ("x" * (MAX_PROMPT_LENGTH + 1), f"prompt is {MAX_PROMPT_LENGTH + 1} characters; the limit is"),
    ],
)
def test_bad_prompts_are_problems(tmp_path, prompt, expected):
    """Blank, NUL-containing and over-long prompts are problems on the prompt field."""
    problem = only_problem(write(tmp_path, "m.csv", f'id,prompt\na,"{prompt}"\n'))
    assert (problem.line, problem.field) == (2, "prompt") and expected in problem.message


def test_prompt_at_the_limit_and_unicode_are_accepted(tmp_path):
    """A prompt of exactly the limit is fine, and any Unicode text is kept (outer blanks stripped)."""
    lines = [
        json.dumps({"prompt": "x" * MAX_PROMPT_LENGTH}),
        json.dumps({"prompt": "  Ünïcödé 🎨 日本語 עברית  "}, ensure_ascii=False),
    ]
    jobs = load_jobs(write(tmp_path, "m.jsonl", "\n".join(lines)))
    assert len(jobs[0].prompt) == MAX_PROMPT_LENGTH and jobs[1].prompt == "Ünïcödé 🎨 日本語 עברית"


def test_wrong_value_types_are_problems(tmp_path):
    """Numbers, lists and booleans where text is expected are problems on the right line."""
    problems = problems_of(BAD_MANIFESTS / "wrong_types.yaml")
    assert [(p.line, p.field) for p in problems] == [
        (2, "id"),
        (3, "prompt"),
        (4, "id"),
        (5, "prompt"),
        (8, "image_urls"),
        (9, "metadata"),
    ]


def test_enum_problems_list_allowed_values_and_suggest(tmp_path):
    """Bad aspect ratios and qualities list the allowed values and suggest an obvious fix."""
    problems = problems_of(BAD_MANIFESTS / "bad_enums.yaml")
    assert [(p.line, p.field) for p in problems] == [
        (4, "aspect_ratio"),
        (5, "quality"),
        (8, "aspect_ratio"),
        (9, "quality"),
    ]
    assert "1:1, 3:2, 2:3" in problems[0].message and "medium, high" in problems[1].message
    assert "did you mean '1:1'?" in problems[2].message
    assert "did you mean 'high'?" in problems[3].message


def test_image_urls_must_be_absolute_http_urls(tmp_path):
    """ftp, relative, host-less, spaced, javascript: and non-text URLs are each a problem."""
    problems = problems_of(BAD_MANIFESTS / "bad_image_urls.jsonl")
    assert [(p.line, p.field) for p in problems] == [(n, "image_urls") for n in range(1, 7)]
    ok = '{"prompt": "a", "image_urls": ["http://e.com/a.jpg", "HTTPS://[::1]:8080/b?c=d"]}\n'
    assert load_jobs(write(tmp_path, "ok.jsonl", ok))[0].input["image_urls"][1] == "HTTPS://[::1]:8080/b?c=d"
    bad = '{"prompt": "a", "image_urls": ["http://[::1/x", "http://e.com:99999/", "http://e.com/\\u0007"]}\n'
    assert only_problem(write(tmp_path, "bad.jsonl", bad)).message.count(";") == 2


@pytest.mark.parametrize(
    "bad_id",
    [
        "../x",
        "/etc/passwd",
        "a/b",
        "a\\b",
        ".hidden",
        "-rf",
        ".",
        "..",
        "a b",
        "a\x00b",
        "café",
        "CON",
        "lpt1.txt",
    ]
    + ["x" * (MAX_JOB_ID_LENGTH + 1)],
)
def test_unsafe_ids_are_rejected(tmp_path, bad_id):
    """Ids that could escape the output folder or misbehave as file names are problems, in JSONL and CSV."""
    problem = only_problem(write(tmp_path, "m.jsonl", json.dumps({"id": bad_id, "prompt": "p"})))
    assert (problem.line, problem.field) == (1, "id")
    if "\x00" not in bad_id:  # a CSV cell cannot hold NUL as written by csv.writer; the JSONL case covers it
        rows = "".join(f"ok-{n},p\n" for n in range(10)) + f'"{bad_id}",p\n'
        problem = only_problem(write(tmp_path, "m.csv", "id,prompt\n" + rows))
        assert (problem.line, problem.field) == (12, "id")


def test_safe_ids_are_accepted(tmp_path):
    """Ids of letters, digits, '.', '_', '-' up to the length limit are accepted."""
    ids = ["a", "A.b_c-1", "_x", "9", "x" * MAX_JOB_ID_LENGTH, "console"]
    lines = [json.dumps({"id": job_id, "prompt": "p"}) for job_id in ids]
    assert [job.job_id for job in load_jobs(write(tmp_path, "m.jsonl", "\n".join(lines)))] == ids


def test_duplicate_ids_name_the_first_occurrence(tmp_path):
    """A repeated id is a problem naming the row of its first use; case-only differences too."""
    problem = only_problem(BAD_MANIFESTS / "duplicate_ids.csv")
    assert (problem.line, problem.field) == (4, "id") and "row 2" in problem.message
    problem = only_problem(BAD_MANIFESTS / "case_insensitive_duplicate_ids.yaml")
    assert problem.line == 4 and "line 2" in problem.message and "case" in problem.message


# --- generated ids ------------------------------------------------------------------------


def test_generated_ids_are_slug_plus_spec_hash(tmp_path):
    """A job without id gets '<first five words>-<10 hex of its spec hash>', defaults included."""
    text = 'defaults: {quality: high}\njobs:\n  - prompt: "  A Red, hand-made lamp: on oak desk, at dusk"\n'
    (job,) = load_jobs(write(tmp_path, "m.yaml", text))
    expected = JobSpec("", image_input("A Red, hand-made lamp: on oak desk, at dusk", quality="high"))
    assert job.job_id == generated_id("a-red-handmade-lamp-on", expected)


def test_generated_ids_fall_back_to_job_and_cap_the_slug(tmp_path):
    """A prompt with no ASCII words gives slug 'job'; long words are cut to 40 characters."""
    lines = [json.dumps({"prompt": "日本語 🎨"}), json.dumps({"prompt": "x" * 60 + " y"})]
    first, second = load_jobs(write(tmp_path, "m.jsonl", "\n".join(lines)))
    assert first.job_id == generated_id("job", JobSpec("", image_input("日本語 🎨")))
    assert second.job_id == generated_id("x" * 40, JobSpec("", image_input("x" * 60 + " y")))


def test_generated_ids_are_stable_and_the_same_in_every_format(tmp_path):
    """The same job gets the same id from YAML, CSV and JSONL, run after run."""
    yaml_path = write(tmp_path, "m.yaml", "- {prompt: A lamp, quality: high}\n")
    csv_path = write(tmp_path, "m.csv", "prompt,quality\nA lamp,high\n")
    jsonl_path = write(tmp_path, "m.jsonl", '{"prompt": "A lamp", "quality": "high"}\n')
    ids = {load_jobs(path)[0].job_id for path in (yaml_path, csv_path, jsonl_path, yaml_path)}
    assert ids == {generated_id("a-lamp", JobSpec("", image_input("A lamp", quality="high")))}


def test_identical_jobs_get_numbered_suffixes(tmp_path):
    """The second and third identical id-less jobs get '-2' and '-3', in manifest order."""
    jobs = load_jobs(write(tmp_path, "m.csv", "prompt\nA lamp\nA mug\nA lamp\nA lamp\n"))
    base = generated_id("a-lamp", JobSpec("", image_input("A lamp")))
    assert [job.job_id for job in jobs] == [base, jobs[1].job_id, f"{base}-2", f"{base}-3"]


@pytest.mark.parametrize("explicit_first", [True, False])
def test_generated_ids_avoid_explicit_ids_anywhere_in_the_file(tmp_path, explicit_first):
    """A generated id that an explicit id (before or after it, any case) already uses gets a suffix."""
    base = generated_id("a-lamp", JobSpec("", image_input("A lamp")))
    rows = [f"{base.upper()},Another lamp", f"{base}-2,Yet another lamp", ",A lamp"]
    if not explicit_first:
        rows.reverse()
    jobs = load_jobs(write(tmp_path, "m.csv", "id,prompt\n" + "\n".join(rows) + "\n"))
    assert {job.job_id for job in jobs} == {base.upper(), f"{base}-2", f"{base}-3"}


@settings(max_examples=60, deadline=None)
@given(st.text(min_size=1, max_size=80).filter(lambda t: t.strip() and "\x00" not in t))
def test_generated_ids_are_always_valid_and_deterministic(prompt):
    """Whatever the prompt, the generated id is a valid, repeatable id."""
    line = json.dumps({"prompt": prompt})
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder, "m.jsonl")
        path.write_text(line + "\n" + line + "\n", encoding="utf-8")
        try:
            first, second = load_jobs(path)
        except ManifestError as error:  # lone surrogates are the only text left to refuse
            assert all("surrogate" in p.message for p in error.problems)
            return
    assert ID_RE.fullmatch(first.job_id) and len(second.job_id) <= MAX_JOB_ID_LENGTH
    assert second.job_id == first.job_id + "-2"


# --- reporting, files and streaming -------------------------------------------------------


def test_every_problem_is_reported_at_once_with_line_and_field(tmp_path):
    """One pass reports all problems in order, each with its line and field."""
    text = (
        "jobs:\n"
        "  - id: ../a\n"  # 2
        "    prompt: ''\n"  # 3
        "  - prompt: ok\n"  # 4
        "    quality: low\n"  # 5
        "    image_urls: [ftp://x]\n"  # 6
        "  - id: a\n"  # 7
        "    prompt: fine\n"
    )
    problems = problems_of(write(tmp_path, "m.yaml", text))
    assert [(p.line, p.field) for p in problems] == [
        (2, "id"),
        (3, "prompt"),
        (5, "quality"),
        (6, "image_urls"),
    ]
    assert all(p.path == str(tmp_path / "m.yaml") and p.where_kind == "line" for p in problems)


def test_valid_jobs_are_yielded_before_the_error(tmp_path):
    """iter_jobs yields the valid jobs as it goes and raises ManifestError after the last row."""
    path = write(tmp_path, "m.csv", "id,prompt\na,x\nb,\nc,y\n")
    seen = []
    with pytest.raises(ManifestError) as info:
        for job in iter_jobs(path):
            seen.append(job.job_id)
    assert seen == ["a", "c"] and [p.line for p in info.value.problems] == [3]


def test_problems_are_capped_with_a_count_of_the_rest(tmp_path):
    """Past 1,000 problems only a count is kept, reported as a final problem."""
    path = write(tmp_path, "m.csv", "id,prompt\n" + "../x,p\n" * 1500)
    problems = problems_of(path)
    assert len(problems) == 1001 and problems[-1].message == "... and 500 more problems not listed"


def test_validate_counts_jobs_and_reports_the_same_problems(tmp_path):
    """validate() returns the job count, and raises with exactly the problems load_jobs finds."""
    assert validate(write(tmp_path, "ok.csv", "prompt\na\nb\na\n")) == 3
    for path in sorted(BAD_MANIFESTS.iterdir()):
        if path.name != "README.md":
            with pytest.raises(ManifestError) as info:
                validate(path)
            assert info.value.problems == problems_of(path), path.name


@pytest.mark.parametrize(
    ("name", "setup", "expected"),
    [
        ("missing.csv", None, "file not found"),
        ("folder.yaml", "dir", "directory"),
        ("notes.txt", "file", "unsupported manifest type '.txt'"),
        ("noext", "file", "unsupported manifest type '(no extension)'"),
        ("empty.jsonl", "file", "the manifest has no jobs"),
    ],
)
def test_file_level_problems(tmp_path, name, setup, expected):
    """Missing files, directories, unknown types and empty files are problems without a line."""
    path = tmp_path / name
    if setup == "dir":
        path.mkdir()
    elif setup == "file":
        path.write_text("")
    problem = only_problem(path)
    assert problem.line is None and expected in problem.message and str(path) in str(problem)


def test_a_quote_never_closed_is_a_problem_at_its_row_not_rows_swallowed_into_a_prompt():
    """A CSV cell whose quote is never closed would take every later row into its prompt (the csv module
    ends it silently at the end of the file): it is a problem at the row that opened it."""
    unclosed = only_problem(BAD_MANIFESTS / "csv_unclosed_quote.csv")
    assert (unclosed.line, unclosed.message) == (3, UNCLOSED_QUOTE)


def test_binary_garbage_and_bad_encodings_name_the_line(tmp_path):
    """Random bytes and Latin-1 files are 'not valid UTF-8' problems at the first bad line/row."""
    assert "not valid UTF-8" in only_problem(BAD_MANIFESTS / "binary.yaml").message
    assert only_problem(BAD_MANIFESTS / "latin1.csv").line == 2
    assert only_problem(BAD_MANIFESTS / "mixed_encoding.csv").line == 4
    assert only_problem(write(tmp_path, "m.yaml", b"jobs:\n  - prompt: caf\xe9\n")).line == 2


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_special_files_are_refused_without_blocking(tmp_path):
    """A FIFO is refused instead of blocking on open."""
    path = tmp_path / "pipe.csv"
    os.mkfifo(path)
    assert "not a regular file" in only_problem(path).message


# --- the checked-in corpus of bad manifests -----------------------------------------------

CORPUS = sorted(path.name for path in BAD_MANIFESTS.iterdir() if path.name != "README.md")


@pytest.mark.parametrize("name", CORPUS)
def test_bad_manifest_corpus_is_rejected(name):
    """Every corpus file raises ManifestError with non-empty messages, and its str() names the file."""
    path = BAD_MANIFESTS / name
    with pytest.raises(ManifestError) as info:
        load_jobs(path)
    assert info.value.problems and all(problem.message.strip() for problem in info.value.problems)
    assert str(path) in str(info.value)


def test_bad_manifest_corpus_readme_lists_every_file():
    """The corpus README has one line for each file, so the CLI tests can rely on it."""
    readme = (BAD_MANIFESTS / "README.md").read_text(encoding="utf-8")
    listed = re.findall(r"^\| `([^`]+)` \|", readme, flags=re.MULTILINE)
    assert listed == CORPUS


def test_example_manifests_are_valid():
    """The example manifests shipped in manifests/ load cleanly."""
    examples = Path(__file__).parent.parent / "manifests"
    assert len(load_jobs(examples / "example.yaml")) == 8
    csv_jobs = load_jobs(examples / "example.csv")
    assert len(csv_jobs) == 6 and any(len(job.input.get("image_urls", ())) == 2 for job in csv_jobs)
    assert any("\n" in job.prompt for job in csv_jobs)


def test_pure_python_yaml_loader_behaves_the_same(tmp_path, monkeypatch):
    """Without libyaml the same jobs, lines and refusals come out of the pure-Python loader."""
    if not hasattr(yaml, "CSafeLoader"):  # the comparison would be the pure-Python loader with itself
        pytest.skip("PyYAML is built without libyaml here")
    samples = {
        "ok.yaml": EXAMPLE_YAML,
        "syntax.yaml": "jobs:\n  - id: a\n    prompt: x\n   quality: high\n",
        "char.yaml": "jobs:\n  - prompt: é\x01\n",
        "deep.yaml": "[" * 1000,
    }
    paths = [write(tmp_path, name, text) for name, text in samples.items()]
    paths.append(BAD_MANIFESTS / "billion_laughs.yaml")

    def outcome(path):
        try:
            return load_jobs(path)
        except ManifestError as error:
            return [(p.line, p.field) for p in error.problems]

    monkeypatch.setattr(yaml_reader, "YAML_LOADER", yaml.CSafeLoader)
    with_libyaml = [outcome(path) for path in paths]
    monkeypatch.setattr(yaml_reader, "YAML_LOADER", yaml.SafeLoader)
    assert [outcome(path) for path in paths] == with_libyaml
    assert with_libyaml[2] == [(2, None)]
