"""Catalogue manifests: rows from a product export shaped into jobs by templates."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from pathlib import Path

import openpyxl
import pytest

from batchgen.errors import ManifestError
from batchgen.manifest import load_jobs, read_manifest, validate
from batchgen.manifest.catalogue import MAX_COUNT
from batchgen.manifest.csv_reader import UNCLOSED_QUOTE
from batchgen.manifest.templates import MAX_REPEAT
from batchgen.models import DEFAULT_MODEL

from .conftest import REPO
from .manifest_files import problems_of, write

EXAMPLE = REPO / "manifests" / "catalogue.yaml"
HEADER = "ID,Type,SKU,Name,Categories,Images,Image Src,Short description\n"
ROWS = (
    '1,simple,THR/1005,Merino Throw,"Home > Textiles, Sale","https://e.com/t1.jpg, https://e.com/t2.jpg",'
    'https://e.com/src.jpg,"<p>Chunky <b>oatmeal</b> throw &amp; more</p>"\n'
    "2,variable,SHT/2001,Linen Shirt,Clothing > Shirts,https://e.com/s.jpg,,<p>Sage linen</p>\n"
    "3,variation,SHT/2001-S,Linen Shirt - S,,,,\n"
)


def catalogue(folder: Path, body: str, rows: str = HEADER + ROWS, rows_name: str = "products.csv") -> Path:
    if not (folder / rows_name).exists():
        write(folder, rows_name, rows)
    return write(folder, "catalogue.yaml", f"rows: {rows_name}\n{body}")


# --- rows ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("delimiter", "bom"), [(",", False), (";", True), ("\t", False), (";", False)])
def test_rows_csv_delimiter_is_sniffed_with_or_without_bom(tmp_path, delimiter, bom):
    """Comma, semicolon (European Excel) and tab files read the same, with or without a BOM."""
    buffer = io.StringIO()
    csv.writer(buffer, delimiter=delimiter).writerows(
        [["SKU", "Name", "Price"], ["A/1", "Lamp, red", "1,50"], ["B/2", "Mug", "2"]]
    )
    text = buffer.getvalue()
    write(tmp_path, "p.csv", ("\ufeff" if bom else "") + text)
    path = write(
        tmp_path, "c.yaml", 'rows: p.csv\njob: {id: "{{ SKU | slug }}", prompt: "{{ Name }} at {{ Price }}"}\n'
    )
    assert [(job.job_id, job.prompt) for job in load_jobs(path)] == [("a-1", "Lamp, red at 1,50"), ("b-2", "Mug at 2")]


def test_rows_delimiter_is_named_when_a_row_does_not_fit(tmp_path):
    """A row with more cells than the header says which delimiter split it, at the rows line."""
    path = catalogue(tmp_path, 'job: {prompt: "{{ a }}"}\n', rows="a;b\n1;2\n3;4;5\n")
    (problem,) = problems_of(path)
    assert (problem.line, problem.field) == (1, "rows")
    assert "products.csv row 3" in problem.message and "semicolons" in problem.message


def test_a_rows_cell_whose_quote_never_closes_is_named_not_swallowing_rows(tmp_path):
    """A product export with a quote opened and never closed: the problem names that row, rather than its
    description taking in every later product."""
    rows = 'SKU,Name\nA/1,Lamp\nB/2,"Mug 12"" tall\nC/3,Vase\nD/4,Chair\n'
    path = catalogue(tmp_path, 'job: {id: "{{ SKU | slug }}", prompt: "{{ Name }}"}\n', rows=rows)
    (problem,) = problems_of(path)
    assert (problem.line, problem.field) == (1, "rows")
    assert problem.message == f"products.csv row 3: {UNCLOSED_QUOTE}"


def test_rows_jsonl_and_xlsx(tmp_path):
    """JSONL rows and the first sheet (or a named one) of an .xlsx workbook give the same jobs."""
    write(tmp_path, "p.jsonl", '{"SKU": "A/1", "Name": "Lamp"}\n\n{"SKU": "B/2", "Name": "Mug"}\n')
    jsonl = write(tmp_path, "j.yaml", 'rows: p.jsonl\njob: {id: "{{ SKU|slug }}", prompt: "{{ Name }}"}\n')
    book = openpyxl.Workbook()
    book.active.title = "Notes"
    book.active.append(["nothing here"])
    sheet = book.create_sheet("Products")
    sheet.append(["SKU", "Name", "Stock"])
    sheet.append(["A/1", "Lamp", 3])
    sheet.append([None, None, None])
    sheet.append(["B/2", "Mug", 4.0])
    book.save(tmp_path / "p.xlsx")
    xlsx = write(
        tmp_path, "x.yaml", 'rows: p.xlsx\nsheet: Products\njob: {id: "{{ SKU|slug }}", prompt: "{{ Name }}"}\n'
    )
    expected = [("a-1", "Lamp"), ("b-2", "Mug")]
    assert [(job.job_id, job.prompt) for job in load_jobs(jsonl)] == expected
    assert [(job.job_id, job.prompt) for job in load_jobs(xlsx)] == expected
    stock = write(tmp_path, "s.yaml", 'rows: p.xlsx\nsheet: Products\njob: {prompt: "{{ Name }} x{{ Stock }}"}\n')
    assert [job.prompt for job in load_jobs(stock)] == ["Lamp x3", "Mug x4"]


def test_rows_xlsx_missing_sheet_and_broken_workbook(tmp_path):
    """A sheet that is not there lists the sheets there are; a file that is not a workbook says so."""
    book = openpyxl.Workbook()
    book.active.title = "Products"
    book.save(tmp_path / "p.xlsx")
    path = write(tmp_path, "x.yaml", 'rows: p.xlsx\nsheet: Produkte\njob: {prompt: "{{ Name }}"}\n')
    (problem,) = problems_of(path)
    assert (problem.line, problem.field) == (1, "sheet") and "'Products'" in problem.message
    write(tmp_path, "bad.xlsx", b"not a zip file")
    path = write(tmp_path, "b.yaml", 'rows: bad.xlsx\njob: {prompt: "{{ Name }}"}\n')
    assert "not a readable .xlsx" in problems_of(path)[0].message


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        ("missing.csv", "file not found"),
        ("old.xls", "save it as .xlsx"),
        ("notes.pdf", "must be a .csv"),
    ],
)
def test_rows_file_problems_name_the_rows_line(tmp_path, rows, expected):
    """A rows file that is missing or of a type batchgen cannot read is a problem on the 'rows:' line."""
    path = write(tmp_path, "c.yaml", f'# products\nrows: {rows}\njob: {{prompt: "{{{{ Name }}}}"}}\n')
    (problem,) = problems_of(path)
    assert (problem.line, problem.field) == (2, "rows") and expected in problem.message


def test_rows_in_a_foreign_encoding_say_what_to_do(tmp_path):
    """A Windows-1252 CSV from Excel and a UTF-16 'Unicode Text' file both say to save as CSV UTF-8."""
    write(tmp_path, "p.csv", "Name;Preis\nKäse;3\n".encode("cp1252"))
    path = write(tmp_path, "c.yaml", 'rows: p.csv\njob: {prompt: "{{ Name }}"}\n')
    (problem,) = problems_of(path)
    assert "row 2" in problem.message and "CSV UTF-8" in problem.message
    write(tmp_path, "u.csv", "Name\tPreis\nKäse\t3\n".encode("utf-16"))
    path = write(tmp_path, "u.yaml", 'rows: u.csv\njob: {prompt: "{{ Name }}"}\n')
    assert "UTF-16" in problems_of(path)[0].message


# --- templates ----------------------------------------------------------------------------


def test_templates_see_identifier_columns_row_mapping_and_catalogue_filters(tmp_path):
    """Columns are variables, row[...] reaches any column, and slug/strip_html/first/truncate work."""
    body = (
        "where: {Type: simple}\n"
        "job:\n"
        '  id: "{{ SKU | slug }}"\n'
        "  prompt: \"{{ Name }}: {{ row['Short description'] | strip_html | truncate(20) }}\"\n"
        "  image_urls: \"{{ row['Image Src'] }}\"\n"
        '  metadata: {category: "{{ Categories | first }}", images: "{{ Images | first }}", n: 3}\n'
    )
    (job,) = load_jobs(catalogue(tmp_path, body))
    assert job.job_id == "thr-1005"
    assert job.prompt == "Merino Throw: Chunky oatmeal..."
    assert len(job.prompt.split(": ", 1)[1]) <= 20
    assert job.input["image_urls"] == ["https://e.com/src.jpg"]
    assert job.metadata == {"category": "Home > Textiles", "images": "https://e.com/t1.jpg", "n": 3}


@pytest.mark.parametrize(
    "cell",
    [
        "https://e.com/1.jpg, https://e.com/2.jpg",
        "https://e.com/1.jpg|https://e.com/2.jpg",
        "https://e.com/1.jpg \n https://e.com/2.jpg",
    ],
)
def test_image_urls_cells_split_into_lists(tmp_path, cell):
    """A cell of URLs separated by ', ' (WooCommerce), '|' or whitespace becomes a list of URLs."""
    rows = f'Name,Images\nLamp,"{cell}"\n'
    (job,) = load_jobs(catalogue(tmp_path, 'job: {prompt: "{{ Name }}", image_urls: "{{ Images }}"}\n', rows=rows))
    assert job.input["image_urls"] == ["https://e.com/1.jpg", "https://e.com/2.jpg"]


def test_image_urls_as_a_list_of_templates_and_empty_cells(tmp_path):
    """image_urls may be a list of templates; an empty rendering means no reference images."""
    rows = "Name,A,B\nLamp,https://e.com/a.jpg,https://e.com/b.jpg|https://e.com/c.jpg\nMug,,\n"
    body = 'job: {prompt: "{{ Name }}", image_urls: ["{{ A }}", "{{ B }}"]}\n'
    lamp, mug = load_jobs(catalogue(tmp_path, body, rows=rows))
    assert lamp.input["image_urls"] == ["https://e.com/a.jpg", "https://e.com/b.jpg", "https://e.com/c.jpg"]
    assert "image_urls" not in mug.input


def test_missing_column_names_manifest_line_row_and_column_once(tmp_path):
    """A template naming a missing column: one problem with line, row, column and a suggestion, then a count."""
    body = 'job:\n  id: "{{ SKU | slug }}"\n  prompt: "Photo of {{ Nme }}"\n'
    problems = problems_of(catalogue(tmp_path, body))
    assert [(p.line, p.field) for p in problems] == [(4, "prompt"), (4, "prompt")]
    assert "products.csv row 2" in problems[0].message and "'Nme'" in problems[0].message
    assert "did you mean 'Name'?" in problems[0].message
    assert problems[1].message == "... and the same on 2 more rows"
    problem = problems_of(catalogue(tmp_path, "job: {prompt: \"{{ row['Image src'] }}\"}\n"))[0]
    assert "no column 'Image src'" in problem.message and "did you mean 'Image Src'?" in problem.message


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{ Name", "template syntax error"),
        ("{{ Name | sluggify }}", "unknown filter 'sluggify'; did you mean 'slug'?"),
        ("{% for x in Name %}", "template syntax error"),
        ("{{ Name.__class__.__mro__ }}", "unsafe"),
        ("{{ range(10) }}", "'range' is not a column"),
        ("{{ lipsum() }}", "'lipsum' is not a column"),
        ("{{ Name | random }}", "random"),
        ("{{ 'x' * 1000000000 }}", f"{MAX_REPEAT:,}"),
        ("{{ 10 ** 100000 }}", "exponents"),
        ("{{ Name | center(1000000000) }}", f"above {MAX_REPEAT:,}"),
        ("{{ Name.ljust(1000000000) }}", f"above {MAX_REPEAT:,}"),
        ("{{ Name | int(base=99) }}", ""),
    ],
)
def test_bad_templates_and_the_sandbox_say_where(tmp_path, template, expected):
    """Syntax errors, unknown filters and everything outside the row's values are problems with their line."""
    path = catalogue(tmp_path, f"job:\n  prompt: {json.dumps(template)}\n", rows="Name\nLamp\n")
    try:
        jobs = load_jobs(path)
    except ManifestError as error:
        problem = error.problems[0]
        assert (problem.line, problem.field) == (3, "prompt") and expected in problem.message
    else:  # int(base=99) renders 0 in Jinja: harmless, and still inside the sandbox
        assert expected == "" and jobs[0].prompt == "0"


def test_rendered_values_go_through_the_field_rules(tmp_path):
    """A rendered aspect ratio, quality, URL or id that breaks a field rule is reported with line and row."""
    rows = "Name,Ratio,Url\nLamp,4:3,ftp://x/y.jpg\n"
    body = (
        'job:\n  id: "{{ Name }}/x"\n  prompt: "{{ Name }}"\n  aspect_ratio: "{{ Ratio }}"\n  image_urls: "{{ Url }}"\n'
    )
    problems = problems_of(catalogue(tmp_path, body, rows=rows))
    assert [(p.line, p.field) for p in problems] == [(3, "id"), (5, "aspect_ratio"), (6, "image_urls")]
    assert all(p.message.startswith("products.csv row 2: ") for p in problems)


# --- selecting rows -----------------------------------------------------------------------


def test_where_unique_and_fill_down(tmp_path):
    """fill_down carries values into blank cells, where keeps matching rows, unique keeps the first per key."""
    rows = (
        "SKU,Name,Category,Type,Published,Images\n"
        "A,Lamp,Lighting,simple,1,https://e.com/a.jpg\n"
        "B,Shade,,simple,1,\n"
        "C,Bulb,,variation,1,https://e.com/c.jpg\n"
        "A,Lamp again,,simple,1,https://e.com/a2.jpg\n"
        "D,Desk,Furniture,simple,0,https://e.com/d.jpg\n"
        "E,Chair,,variable,1,https://e.com/e.jpg\n"
    )
    body = (
        "fill_down: [Category]\n"
        "where:\n  Type: [simple, variable]\n  Published: 1\n  Images: {not_empty: true}\n"
        'unique: "{{ SKU }}"\n'
        'job: {id: "{{ SKU }}", prompt: "{{ Name }} in {{ Category }}"}\n'
    )
    jobs = load_jobs(catalogue(tmp_path, body, rows=rows))
    assert [(job.job_id, job.prompt) for job in jobs] == [("A", "Lamp in Lighting"), ("E", "Chair in Furniture")]


def test_where_operator_forms(tmp_path):
    """{equals: V} and {one_of: [...]} mean the same as a value and a list."""
    body = 'where: {Type: {one_of: [simple]}, ID: {equals: 1}}\njob: {prompt: "{{ Name }}"}\n'
    assert [job.prompt for job in load_jobs(catalogue(tmp_path, body))] == ["Merino Throw"]


@pytest.mark.parametrize(
    ("body", "line", "field", "expected"),
    [
        ('where: {Typ: simple}\njob: {prompt: "{{ Name }}"}\n', 2, "where", "did you mean 'Type'?"),
        ('fill_down: [Categorie]\njob: {prompt: "{{ Name }}"}\n', 2, "fill_down", "did you mean 'Categories'?"),
        ('where: {Type: {greater: 3}}\njob: {prompt: "{{ Name }}"}\n', 2, "where", "not_empty"),
        ('unique: "{{ Sku }}"\njob: {prompt: "{{ Name }}"}\n', 2, "unique", "did you mean 'SKU'?"),
        ('count: 0\njob: {prompt: "{{ Name }}"}\n', 2, "count", f"1 to {MAX_COUNT}"),
        ('variants: {aspect_ratio: ["1:1", "16:9"]}\njob: {prompt: "{{ Name }}"}\n', 2, "aspect_ratio", "16:9"),
        ('variants: {size: ["A b", "a-b"]}\njob: {prompt: "{{ Name }}"}\n', 2, "size", "suffix 'a-b'"),
        ('variants: {quality: [high]}\njob: {prompt: "{{ Name }}", quality: medium}\n', 2, "variants", "both"),
        ("job: {id: x}\n", 2, "prompt", "prompt is missing"),
    ],
)
def test_bad_conditions_and_steps_say_where(tmp_path, body, line, field, expected):
    """Each bad condition, step or variant is a problem at its manifest line, naming what is wrong."""
    problems = problems_of(catalogue(tmp_path, body))
    assert (problems[0].line, problems[0].field) == (line, field), problems
    assert expected in problems[0].message


def test_catalogue_and_jobs_are_exclusive_and_both_halves_are_needed(tmp_path):
    """jobs: with rows:, rows: without job:, and a job: list meant as jobs: are each explained."""
    write(tmp_path, "products.csv", HEADER + ROWS)
    cases = {
        "rows: products.csv\njob: {prompt: a}\njobs: [{prompt: b}]\n": "either 'jobs:'",
        "rows: products.csv\n": "needs both",
        "job:\n  - prompt: a\n": "did you mean 'jobs'?",
    }
    for number, (text, expected) in enumerate(cases.items()):
        problems = problems_of(write(tmp_path, f"c{number}.yaml", text))
        assert any(expected in p.message for p in problems), problems


# --- variants, copies, file names ---------------------------------------------------------


def test_variants_of_one_row_given_one_file_name_are_told_so(tmp_path):
    """A filename: template without the variant gives a row's variants one file: the problem says they are
    variants of the same row, rather than naming the row as its own earlier user."""
    body = (
        "where: {Type: simple}\n"
        'variants: {aspect_ratio: ["1:1", "3:2"]}\n'
        'job: {id: "{{ SKU | slug }}", prompt: "{{ Name }}", filename: "{{ SKU | slug }}"}\n'
    )
    (problem,) = problems_of(catalogue(tmp_path, body))
    assert problem.field == "filename"
    assert problem.message == (
        "products.csv row 2: file name 'thr-1005' is already used on products.csv row 2 "
        "(another variant or copy of this same row: make filename differ by variant)"
    )


def test_variants_and_count_give_stable_suffixes_and_distinct_specs(tmp_path):
    """Each variant combination and copy gets a suffix from its values; copies differ only by sample."""
    body = (
        "where: {Type: simple}\n"
        'variants: {aspect_ratio: ["1:1", "3:2"], style: [studio]}\n'
        "count: 2\n"
        'job: {id: "{{ SKU | slug }}", prompt: "{{ variant.style }} photo of {{ Name }}", quality: high}\n'
    )
    jobs = load_jobs(catalogue(tmp_path, body))
    assert [(job.job_id, job.input["aspect_ratio"], job.sample) for job in jobs] == [
        ("thr-1005-1x1-studio", "1:1", 1),
        ("thr-1005-1x1-studio-2", "1:1", 2),
        ("thr-1005-3x2-studio", "3:2", 1),
        ("thr-1005-3x2-studio-2", "3:2", 2),
    ]
    assert jobs[0].prompt == "studio photo of Merino Throw"
    assert jobs[0].input == jobs[1].input and jobs[0].spec_hash() != jobs[1].spec_hash()


def test_adding_a_variant_value_keeps_every_earlier_job(tmp_path):
    """Adding '2:3' to the aspect ratios adds jobs and leaves the earlier ids and specs as they were."""
    body = 'variants: {aspect_ratio: [%s]}\njob: {id: "{{ SKU | slug }}", prompt: "{{ Name }}"}\n'
    before = {job.job_id: job.spec_hash() for job in load_jobs(catalogue(tmp_path, body % '"1:1", "3:2"'))}
    after = {job.job_id: job.spec_hash() for job in load_jobs(catalogue(tmp_path, body % '"1:1", "2:3", "3:2"'))}
    assert before.items() <= after.items() and len(after) == len(before) * 3 // 2


def test_generated_ids_differ_per_variant_and_copy(tmp_path):
    """Without an id template, every variant and copy still gets its own stable generated id."""
    body = 'where: {Type: simple}\nvariants: {quality: [medium, high]}\ncount: 2\njob: {prompt: "{{ Name }}"}\n'
    path = catalogue(tmp_path, body)
    ids = [job.job_id for job in load_jobs(path)]
    assert len(set(ids)) == 4 and ids == [job.job_id for job in load_jobs(path)]


def test_filenames_are_made_from_templates_and_stay_inside(tmp_path):
    """filename: renders folders and names from the row; {{ id }} is the job's final id."""
    body = (
        "where: {Type: [simple, variable]}\n"
        'variants: {aspect_ratio: ["1:1"]}\n'
        'job: {id: "{{ SKU | slug }}", prompt: "{{ Name }}", filename: "{{ Categories | first | slug }}/{{ id }}"}\n'
    )
    jobs = load_jobs(catalogue(tmp_path, body))
    assert [job.filename for job in jobs] == ["home-textiles/thr-1005-1x1", "clothing-shirts/sht-2001-1x1"]
    assert [job.stem for job in jobs] == [job.filename for job in jobs]


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("../{{ SKU | slug }}", "'..' part"),
        ("/tmp/{{ SKU | slug }}", "relative"),
        ("{{ Categories }}/x", "may hold only"),
        ("a\\\\{{ ID }}", "relative"),
        ("x~{{ ID }}", "may hold only"),
        ("{{ SKU | slug }}.png/x", "named like an image"),
        ("con/{{ ID }}", "reserved device name"),
    ],
)
def test_unsafe_filenames_are_refused(tmp_path, template, expected):
    """A file name that could leave the output folder, or clash with a run's further images, is a problem."""
    body = f'where: {{Type: simple}}\njob: {{prompt: "{{{{ Name }}}}", filename: "{template}"}}\n'
    (problem,) = problems_of(catalogue(tmp_path, body))
    assert (problem.line, problem.field) == (3, "filename") and expected in problem.message


def test_two_jobs_with_one_file_name_are_named_both(tmp_path):
    """Two jobs that would write the same file (ignoring case) are an error naming both rows."""
    rows = "SKU,Name\nA,Lamp\nB,lamp\nC,Mug\n"
    body = 'job: {id: "{{ SKU }}", prompt: "{{ Name }}", filename: "all/{{ Name }}"}\n'
    (problem,) = problems_of(catalogue(tmp_path, body, rows=rows))
    assert (problem.line, problem.field) == (2, "filename")
    assert "'all/lamp'" in problem.message and "'all/Lamp'" in problem.message
    assert "products.csv row 3" in problem.message and "row 2" in problem.message


def test_repeated_ids_from_rows_name_both_rows(tmp_path):
    """Two rows whose ids render the same are an error naming the first row."""
    rows = "SKU,Name\nTHR/1005,Throw\nthr 1005,Other throw\n"
    (problem,) = problems_of(catalogue(tmp_path, 'job: {id: "{{ SKU | slug }}", prompt: "{{ Name }}"}\n', rows=rows))
    assert problem.field == "id" and "products.csv row 3" in problem.message and "row 2" in problem.message


# --- other models, pricing, the Manifest --------------------------------------------------


def test_other_model_catalogue_renders_input(tmp_path):
    """For another model the input mapping is rendered per row and passed through."""
    body = 'model: acme/flux-9\njob: {id: "{{ SKU|slug }}", input: {prompt: "{{ Name }}", steps: 30}}\n'
    path = catalogue(tmp_path, body, rows="SKU,Name\nA,Lamp\n")
    (job,) = load_jobs(path)
    assert (job.model, job.input) == ("acme/flux-9", {"prompt": "Lamp", "steps": 30})


def test_read_manifest_gives_model_pricing_and_sources(tmp_path):
    """read_manifest reads the top at once; its jobs stream and its count matches validate()."""
    path = catalogue(tmp_path, 'pricing: {medium: 1, high: 2.5}\njob: {prompt: "{{ Name }}", quality: high}\n')
    manifest = read_manifest(path)
    assert manifest.model == DEFAULT_MODEL and manifest.sources == (path, tmp_path / "products.csv")
    jobs = list(manifest.jobs())
    assert manifest.pricing is not None and [manifest.pricing.credits(job) for job in jobs] == [2.5] * 3
    assert manifest.count() == validate(path) == 3


def test_read_manifest_never_raises_and_reports_later(tmp_path):
    """A missing file or bad pricing is raised by jobs()/count(), together with every other problem."""
    missing = read_manifest(tmp_path / "nope.yaml")
    with pytest.raises(ManifestError, match="file not found"):
        missing.count()
    path = write(tmp_path, "m.yaml", "pricing: {hgh: 2}\njobs:\n  - prompt: a\n    quality: best\n")
    manifest = read_manifest(path)
    assert manifest.pricing is None
    with pytest.raises(ManifestError) as info:
        list(manifest.jobs())
    assert [(p.line, p.field) for p in info.value.problems] == [(1, "pricing"), (4, "quality")]


def test_catalogue_example_runs_end_to_end(tmp_path, run, sim):
    """manifests/catalogue.yaml: 12 jobs, files in category folders, each the bytes the server sent."""
    result = run(EXAMPLE)
    assert result.exit_code == 0, result.message
    files = {f["sha256"] for r in sim.stats()["runs"] for f in r["files"]}
    saved = sorted(p for p in (tmp_path / "out").rglob("*.png"))
    assert len(saved) == 12 and {p.parent.name for p in saved} >= {"home-textiles", "clothing-shirts"}
    assert {hashlib.sha256(p.read_bytes()).hexdigest() for p in saved} == files


def test_changed_rows_file_is_picked_up_and_only_new_jobs_run(tmp_path, run, sim):
    """A new variant value or a new row in the rows file creates only the new jobs on the next run."""
    rows = tmp_path / "products.csv"
    write(tmp_path, "products.csv", "SKU,Name\nA/1,Lamp\n")
    body = 'variants: {aspect_ratio: [%s]}\njob: {id: "{{ SKU|slug }}", prompt: "{{ Name }}"}\n'
    path = write(tmp_path, "catalogue.yaml", "rows: products.csv\n" + body % '"1:1"')

    def created() -> list[tuple[str, str]]:
        return sorted((r["prompt"], r["input"]["aspect_ratio"]) for r in sim.stats()["runs"])

    assert run(path).exit_code == 0
    assert created() == [("Lamp", "1:1")]
    rows.write_text("SKU,Name\nA/1,Lamp\nB/2,Mug\n", encoding="utf-8")  # same manifest bytes, new row
    assert run(path).exit_code == 0
    assert created() == [("Lamp", "1:1"), ("Mug", "1:1")]
    write(tmp_path, "catalogue.yaml", "rows: products.csv\n" + body % '"1:1", "3:2"')
    assert run(path).exit_code == 0
    assert created() == [("Lamp", "1:1"), ("Lamp", "3:2"), ("Mug", "1:1"), ("Mug", "3:2")]


@pytest.mark.parametrize(
    ("pricing", "job", "credits"),
    [
        ("2", {"quality": "high"}, 2.0),
        ("{medium: 1, high: 2.5}", {"quality": "high"}, 2.5),
        ("{medium: 1, high: 2.5}", {}, None),
        ("{medium: 1, default: 1.5}", {}, 1.5),
        ("{openai/gpt-image-1.5: {high: 3}, acme/flux-9: 4}", {"quality": "high"}, 3.0),
    ],
)
def test_pricing_forms(tmp_path, pricing, job, credits):
    """A flat price, prices by quality (with a default) and by model give each run's credits, or None."""
    path = write(tmp_path, "m.yaml", f"pricing: {pricing}\njobs:\n  - {json.dumps({'prompt': 'a', **job})}\n")
    manifest = read_manifest(path)
    (spec,) = manifest.jobs()
    assert manifest.pricing is not None and manifest.pricing.credits(spec) == credits
    table = manifest.pricing.as_table()  # flat keys: model:quality, or the model for its default
    flat = table.get(f"{spec.model}:{spec.input.get('quality')}", table.get(spec.model))
    assert flat == credits


@pytest.mark.parametrize(
    ("pricing", "expected"),
    [
        ("-1", "0 or more"),
        ("{}", "empty"),
        ("{ultra: 2}", "'ultra' is not a quality"),
        ("{hihg: 2}", "did you mean 'high'?"),
        ("{high: x}", "number"),
    ],
)
def test_bad_pricing_is_a_problem_on_its_line(tmp_path, pricing, expected):
    """A negative, empty, unknown-quality or non-numeric price is a problem at the 'pricing:' line."""
    path = write(tmp_path, "m.yaml", f"jobs: [{{prompt: a}}]\npricing: {pricing}\n")
    (problem,) = problems_of(path)
    assert (problem.line, problem.field) == (2, "pricing") and expected in problem.message


def test_catalogue_jobs_stream_before_a_later_problem(tmp_path):
    """iter_jobs yields the jobs of good rows as they are read, then raises for the bad row at the end."""
    from batchgen.manifest import iter_jobs

    rows = "Name,Ratio\n" + "".join(f"Item {n},1:1\n" for n in range(5)) + "Bad,4:3\n"
    path = catalogue(tmp_path, 'job: {prompt: "{{ Name }}", aspect_ratio: "{{ Ratio }}"}\n', rows=rows)
    seen = []
    with pytest.raises(ManifestError) as info:
        for job in iter_jobs(path):
            seen.append(job.prompt)
    assert seen == [f"Item {n}" for n in range(5)]
    assert [p.field for p in info.value.problems] == ["aspect_ratio"] and "row 7" in info.value.problems[0].message
