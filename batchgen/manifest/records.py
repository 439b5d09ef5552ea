"""From what a reader found to a ``JobSpec``: one job's checks, in one place for every format.

A reader yields a ``Record`` per job (the raw values and where they came from)
or, for a stretch of CSV rows or JSONL lines it has already checked as a whole, a ``Batch``.
``JobBuilder.check`` applies the field rules, claims the id and file name, and
builds the spec.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from ..models import DEFAULT_MODEL, JobSpec, image_input
from .fields import CHECKS
from .ids import Claims, GeneratedIds
from .problems import Invalid, Problems

# A value whose problem the reader has already reported: the job is invalid, nothing more to say.
REPORTED: Any = object()


class Record(NamedTuple):
    """One job as a reader found it."""

    line: int  # where problems are reported (YAML/JSONL line, CSV row, or the catalogue template's line)
    values: dict[str, Any]  # field -> raw value; None means "not set"
    field_lines: dict[str, int] | None  # field -> its own line, when fields have lines of their own
    note: str = ""  # appended to every message about this job
    metadata: dict[str, Any] | None = None  # ready-made metadata (CSV columns), when no 'metadata' field
    prefix: str = ""  # put before every message about this job (the catalogue row it came from)


def describe_place(record: Record, where_kind: str) -> str:
    """Where a record is, in words: 'row 7', 'line 3' or, for a catalogue, 'products.csv row 7'."""
    return record.prefix.removesuffix(": ") if record.prefix else f"{where_kind} {record.line}"


class Requests(NamedTuple):
    """A batch's jobs as the plan sees them: what each asks the API for, column by column (no specs built).

    Row ``i`` asks ``model`` for ``image_input(prompts[i], aspect_ratios[i] or None, qualities[i] or None,
    image_urls[i] if image_urls else ())`` with sample 1: the very input its ``JobSpec`` would carry."""

    model: str
    prompts: list[str]  # stripped, line ends as in the spec
    aspect_ratios: list[str]  # "" when not set
    qualities: list[str]  # "" when not set
    image_urls: list[tuple[str, ...]] | None  # None when no row of the batch has any


class Batch(NamedTuple):
    """Consecutive jobs (CSV rows, JSONL lines) whose fields are all valid: only their ids remain to be claimed."""

    lines: Sequence[int]  # each job's row or line
    ids: list[str] | None  # None: the manifest has no ids; each job gets a generated one
    specs: Callable[[], list[JobSpec]]  # the jobs, with job_id "" when ids is None
    requests: Callable[[], Requests]  # what they ask for, without building the specs
    names: bool = False  # the ids are the jobs' file names too, to be claimed as JobBuilder.check claims them


class JobBuilder:
    """Checks records, claims their ids (and file names) and builds specs."""

    def __init__(self, problems: Problems, model: str, ids: Claims, names: Claims, generated: GeneratedIds):
        self.problems, self.model, self.ids, self.names, self.generated = problems, model, ids, names, generated
        self.passthrough = model != DEFAULT_MODEL
        self.required = "input" if self.passthrough else "prompt"
        # Until a job names its file otherwise than by its id, the file names claimed are the ids claimed (less
        # those held back, whose keys are there already): ``ids`` then stands for both, and a batch whose ids
        # are its file names leaves them out of ``names``. At the first such job, ``names`` takes on every id
        # claimed so far, and from then on batches claim their names as this class does.
        self.names_follow_ids = False
        self.names_apart = False

    def check(self, record: Record, position: int, build: bool) -> JobSpec | bool | None:
        """The record's spec (True when not building); None when it is invalid or held back as a suspect."""
        line, values, field_lines, note, metadata, prefix = record
        if not self.names_apart and values.get("filename") is not None:
            self.names_apart = True
            if self.names_follow_ids:
                self.names.adopt(self.ids)
        errors: list[tuple[str, str]] = []
        if values.get(self.required) is None:
            errors.append((self.required, f"{self.required} is missing or empty"))
        checked: dict[str, Any] = {}
        for field, value in values.items():
            if value is REPORTED:
                errors.append((field, ""))
            elif value is not None and (check := CHECKS.get(field)):
                try:
                    checked[field] = check(value)
                except Invalid as error:
                    errors.append((field, str(error)))
        job_id: str | None = checked.get("id")
        filename: str | None = checked.get("filename")
        payload = None if errors else (checked, metadata)
        # Claimed even when the job has other problems, so that a later repeat names this line.
        id_line = field_lines.get("id", line) if field_lines else line
        name_line = field_lines.get("filename", line) if field_lines else line
        held = job_id is not None and not self.ids.claim(job_id, position, payload, id_line, prefix)
        if values.get("filename") is not None:
            stem = filename  # None when it is not a valid file name
        else:  # saved under its id: a file name no other job may use (a repeated id is reported once, as an id)
            stem = None if held else job_id
        held = (stem is not None and not self.names.claim(stem, position, payload, name_line, prefix)) or held
        for field, message in errors:
            if message:
                where = field_lines.get(field, line) if field_lines else line
                self.problems.add(where, field, prefix + message + note)
        if errors or held:
            return None
        return self.build(checked, metadata) if build else True

    def batch_claims_names(self) -> bool:
        """Whether a batch whose ids are its file names must claim them in ``names`` (see ``names_follow_ids``)."""
        self.names_follow_ids = not self.names_apart
        return self.names_apart

    def build(self, checked: dict[str, Any], metadata: dict[str, Any] | None) -> JobSpec:
        if self.passthrough:
            api_input = checked["input"]
        else:
            api_input = image_input(
                checked["prompt"], checked.get("aspect_ratio"), checked.get("quality"), checked.get("image_urls", ())
            )
        job_metadata = checked.get("metadata", metadata if metadata is not None else {})
        sample = checked.get("sample", 1)
        spec = JobSpec(checked.get("id", ""), api_input, self.model, job_metadata, sample, checked.get("filename"))
        if not spec.job_id:
            spec = JobSpec(self.generated.generate(spec), api_input, self.model, job_metadata, sample, spec.filename)
        return spec
