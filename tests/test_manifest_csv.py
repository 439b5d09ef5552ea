"""Plain CSV manifests as spreadsheets write them, and id uniqueness at scale."""

from __future__ import annotations

import pytest

from batchgen.errors import ManifestError
from batchgen.manifest import iter_jobs, load_jobs, validate
from batchgen.manifest.csv_reader import CHUNK_ROWS
from batchgen.manifest.ids import Claims, FingerprintSet
from batchgen.models import JobSpec, image_input

from .manifest_files import problems_of, write


def test_known_columns_in_any_letter_case(tmp_path):
    """'ID', 'Prompt', 'Aspect_Ratio', 'QUALITY' are the fields; a column given twice ignoring case is an error."""
    (job,) = load_jobs(write(tmp_path, "m.csv", "ID,Prompt,Aspect_Ratio,QUALITY,Notes\nlamp-1,A lamp,3:2,high,x\n"))
    assert job == JobSpec("lamp-1", image_input("A lamp", "3:2", "high"))
    assert job.metadata == {"Notes": "x"}
    (problem,) = problems_of(write(tmp_path, "twice.csv", "id,ID,prompt\na,b,c\n"))
    assert (problem.line, problem.field) == (1, "ID") and "twice" in problem.message


def test_semicolon_csv_from_a_european_excel_reads_as_it_is(tmp_path):
    """A ';'-separated file (decimal commas in the cells) gives the same jobs as a ','-separated one."""
    semicolon = write(tmp_path, "s.csv", "\ufeffid;prompt;price\r\nlamp-1;A lamp, red;12,50\r\n")
    comma = write(tmp_path, "c.csv", 'id,prompt,price\nlamp-1,"A lamp, red","12,50"\n')
    assert load_jobs(semicolon) == load_jobs(comma)
    assert load_jobs(semicolon)[0].metadata == {"price": "12,50"}


def test_tab_separated_and_the_delimiter_named_in_errors(tmp_path):
    """A tab file reads too; a row that does not fit its header says which delimiter split it."""
    assert validate(write(tmp_path, "t.csv", "id\tprompt\na\tA lamp\n")) == 1
    (problem,) = problems_of(write(tmp_path, "s.csv", "id;prompt\na;A lamp;extra\n"))
    assert problem.line == 2 and "semicolons" in problem.message
    (problem,) = problems_of(write(tmp_path, "n.csv", "name;description\nx;y\n"))
    assert "read with semicolons between cells" in problem.message


def test_windows_1252_and_utf16_files_say_how_to_save_them(tmp_path):
    """Excel's default CSV and its 'Unicode Text' both get the exact Save As to use."""
    (problem,) = problems_of(write(tmp_path, "w.csv", "id;prompt\na;Crème brûlée\n".encode("cp1252")))
    assert problem.line == 2 and "CSV UTF-8" in problem.message
    (problem,) = problems_of(write(tmp_path, "u.csv", "id\tprompt\na\tA lamp\n".encode("utf-16")))
    assert "UTF-16" in problem.message and "CSV UTF-8" in problem.message


def test_real_skus_as_ids_get_a_hint(tmp_path):
    """An id such as THR/1005 is refused with the way to use it: a catalogue manifest with the slug filter."""
    (problem,) = problems_of(write(tmp_path, "m.csv", "id,prompt\nTHR/1005,A throw\n"))
    assert problem.field == "id" and "{{ SKU | slug }}" in problem.message and "rows:" in problem.message


@pytest.mark.parametrize(
    ("cell", "said"), [('"a\nb"', "is not allowed"), ("last-run", "its --sidecar file would be last-run.json")]
)
def test_ids_the_row_checks_refuse_are_refused_in_a_clean_chunk_too(tmp_path, cell, said):
    """A quoted id holding a line break (it ended in a traceback) and the name of batchgen's own file (it was
    let through) are refused as the row-by-row checks refuse them, on the row that holds them."""
    (problem,) = problems_of(write(tmp_path, "m.csv", f"id,prompt\n{cell},hello\nb,x\n"))
    assert (problem.line, problem.field) == (2, "id") and said in problem.message


def test_a_product_export_as_a_manifest_points_to_catalogues(tmp_path):
    """A header of a product export (no prompt column) says how to make prompts from its columns."""
    (problem,) = problems_of(write(tmp_path, "m.csv", "ID,Type,SKU,Name,Images\n1,simple,A,Lamp,\n"))
    assert problem.field == "prompt" and "'rows: FILE'" in problem.message and "'job:'" in problem.message


def test_duplicates_across_chunks_and_in_clean_chunks_name_the_first_row(tmp_path):
    """Repeats far apart (another chunk) or within one fast-checked chunk are each reported with the first row."""
    rows = [f"job-{n},prompt {n}" for n in range(CHUNK_ROWS * 2 + 10)]
    rows[CHUNK_ROWS + 5] = "JOB-3,prompt again"  # row CHUNK_ROWS + 7, repeats row 5 ignoring case
    rows[20] = "job-10,prompt again"  # row 22, repeats row 12
    path = write(tmp_path, "m.csv", "id,prompt\n" + "\n".join(rows) + "\n")
    problems = problems_of(path)
    assert [(p.line, p.field) for p in problems] == [(22, "id"), (CHUNK_ROWS + 7, "id")]
    assert "already used on row 12" in problems[0].message
    assert "differs only in letter case from 'job-3' on row 5" in problems[1].message
    seen = []
    with pytest.raises(ManifestError):
        for job in iter_jobs(path):
            seen.append(job.job_id)
    assert len(seen) == len(rows) - 2 and "JOB-3" not in seen


def test_clean_and_checked_chunks_give_the_same_jobs(tmp_path):
    """A chunk checked as a whole and one checked row by row (a blank row forces it) give equal specs."""
    lines = [f"job-{n},A lamp {n},3:2,high,https://e.com/{n}.jpg|https://e.com/x.jpg,m{n}" for n in range(50)]
    fast = load_jobs(write(tmp_path, "f.csv", "id,prompt,aspect_ratio,quality,image_urls,sku\n" + "\n".join(lines)))
    slow = load_jobs(write(tmp_path, "s.csv", "id,prompt,aspect_ratio,quality,image_urls,sku\n\n" + "\n".join(lines)))
    assert fast == slow and [job.metadata for job in fast] == [job.metadata for job in slow]
    assert fast[3].input["image_urls"] == ["https://e.com/3.jpg", "https://e.com/x.jpg"]


def test_fingerprint_collisions_are_cleared_and_repeats_confirmed():
    """With every key on one fingerprint, only true repeats (ignoring case) are reported; the rest are cleared."""
    claims = Claims(fingerprint=lambda key: 7)
    assert claims.claim("a", 1, "job a")
    assert not claims.claim("b", 2, "job b")
    assert not claims.claim("A", 3, "job A")
    held = claims.claim_many(["c", "a"], range(4, 6), 4, lambda index: f"batch {index}")
    assert held == {0, 1}
    keys = [(1, "a", "row 1"), (2, "b", "row 2"), (3, "A", "row 3"), (4, "c", "row 4"), (5, "a", "row 5")]
    repeats, cleared = claims.resolve(iter(keys))
    assert [(suspect.key, where, spelling) for suspect, where, spelling in repeats] == [
        ("A", "row 1", "a"),
        ("a", "row 1", "a"),
    ]
    assert [suspect.payload for suspect in cleared] == ["job b", "batch 0"]


def test_fingerprint_set_grows_and_remembers():
    """The table keeps every fingerprint through growth and reports only those seen before."""
    table = FingerprintSet()
    values = list(range(1, 20_000, 3)) + [-5, 2**62]
    assert table.add_many(values) == []
    assert table.count == len(values) and all(value in table for value in values)
    assert table.add_many([4, 5, 2**62, 5]) == [4, 2**62, 5]
    assert 6 not in table
