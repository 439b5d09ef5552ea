"""Read a manifest (YAML, CSV or JSONL) into validated ``JobSpec``s.

The public API::

    manifest = read_manifest("catalogue.yaml")   # never raises for the file's content
    manifest.model, manifest.pricing, manifest.sources
    for job in manifest.jobs(): ...              # streams; raises ManifestError after the last job
    manifest.count()                             # the number of jobs, or ManifestError; builds no specs

    iter_jobs(path)  == read_manifest(path).jobs()
    load_jobs(path)  == list(iter_jobs(path))
    validate(path)   == read_manifest(path).count()

Formats, one module each: ``yaml_reader`` (``jobs:`` lists, and the top level of
every YAML manifest), ``catalogue`` (YAML with ``rows:`` and ``job:`` templates,
rows from ``rows``), ``csv_reader``, ``jsonl_reader``. Field rules are in
``fields``, ids and uniqueness in ``ids``, the price table in ``pricing``.

Every problem is reported at once with the file, line (YAML, JSONL) or row
(CSV, counting the header as row 1) and field; for a catalogue, the manifest
line of the template with the rows file's row and column in the message.
Jobs are checked as they stream, so memory does not grow with the manifest
(see ``ids`` for how uniqueness is checked without holding every id).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, cast

from ..models import DEFAULT_MODEL, JobSpec
from .csv_reader import read_csv
from .jsonl_reader import read_jsonl
from .pricing import Pricing
from .problems import Invalid, Problems
from .reading import RecordSource, read_jobs
from .records import Record, Requests
from .yaml_reader import YamlDocument, load_yaml, yaml_jobs, yaml_value

if TYPE_CHECKING:
    from .catalogue import Catalogue

__all__ = ["Manifest", "Pricing", "Requests", "iter_jobs", "load_jobs", "read_manifest", "validate"]

MANIFEST_TYPES = (".yaml", ".yml", ".csv", ".jsonl")


@dataclass
class Manifest:
    """A manifest opened for reading: what its top says, and its jobs on demand.

    ``model`` is the manifest's model (``openai/gpt-image-1.5`` unless ``model:``
    says otherwise), ``pricing`` the credits per run from ``pricing:`` (None when
    not given), ``sources`` every file the jobs are read from (the manifest, and
    a catalogue's rows file): a caller that caches by content must hash them all.
    Problems found while opening are kept and raised, with every other problem,
    by ``jobs()`` or ``count()``.
    """

    path: Path
    model: str = DEFAULT_MODEL
    pricing: Pricing | None = None
    sources: tuple[Path, ...] = ()
    _problems_at_open: Problems | None = field(default=None, repr=False)
    _records: RecordSource | None = field(default=None, repr=False)
    _expected_jobs: int = field(default=0, repr=False)

    def jobs(self) -> Iterator[JobSpec]:
        """Yield the valid jobs in order; then raise ``ManifestError`` if anything was wrong."""
        return cast(Iterator[JobSpec], self._read(build=True))

    def count(self) -> int:
        """The number of jobs, or ``ManifestError``; streams and builds no specs."""
        return sum(cast(Iterator[int], self._read(build=False)))

    def requests(self) -> Iterator[JobSpec | Requests]:
        """Like ``jobs()``, but a CSV's chunks of valid rows come as ``Requests``, without their specs (the plan)."""
        return cast(Iterator[JobSpec | Requests], self._read(build=True, requests=True))

    def _read(self, build: bool, requests: bool = False) -> Iterator[JobSpec | Requests | int]:
        opened = self._problems_at_open
        assert opened is not None
        problems = Problems(opened.path, opened.where_kind)
        problems.listed, problems.unlisted, problems.asides = list(opened.listed), opened.unlisted, opened.asides
        records = self._records
        if records is None:  # the file could not be opened as a manifest: that is in the problems
            records = _no_records
        return read_jobs(
            records, problems, self.model, build=build, expected_jobs=self._expected_jobs, requests=requests
        )


def _no_records(problems: Problems) -> Iterator[Record]:
    return iter(())


def _unsupported(path: Path, kind: str) -> str:
    """Why a file is not a manifest, and how an export of that kind can become one."""
    message = f"unsupported manifest type {kind or '(no extension)'!r}; use .yaml, .yml, .csv or .jsonl"
    if kind in (".tsv", ".txt", ".tab"):
        return f"{message} (a CSV manifest may be separated by tabs or semicolons: rename it to .csv)"
    if kind == ".xlsx":
        return f"{message} (a YAML manifest reads a spreadsheet's rows: 'rows: {path.name}' and a 'job:' template)"
    return message


def read_manifest(path: str | os.PathLike[str]) -> Manifest:
    """Open a manifest: its model, pricing and sources now, its jobs when asked (see ``Manifest``)."""
    name = os.fsdecode(os.fspath(path))
    kind = os.path.splitext(name)[1].lower()
    problems = Problems(name, "row" if kind == ".csv" else "line")
    manifest = Manifest(Path(name), sources=(Path(name),), _problems_at_open=problems)
    if (problem := _file_problem(name)) is not None:
        problems.add(None, None, problem)
    elif kind not in MANIFEST_TYPES:
        problems.add(None, None, _unsupported(Path(name), kind))
    elif kind == ".csv":
        manifest._records = lambda found: read_csv(name, found)
        manifest._expected_jobs = _expected_rows(name)
    elif kind == ".jsonl":
        manifest._records = lambda found: read_jsonl(name, found)
        manifest._expected_jobs = _expected_rows(name)
    else:
        _open_yaml(manifest, name, problems)
    return manifest


def _open_yaml(manifest: Manifest, name: str, problems: Problems) -> None:
    try:
        doc = load_yaml(name, problems)
    except OSError as error:
        problems.add(None, None, f"cannot read the file: {error.strerror or error}")
        return
    if doc is None:
        return
    manifest.model = doc.model
    if "pricing" in doc.top:
        node, line = doc.top["pricing"]
        value = yaml_value(doc.loader, node, line, "pricing", problems)
        try:
            manifest.pricing = Pricing.parse(value, doc.model) if value is not None else None
        except Invalid as error:
            problems.add(line, "pricing", str(error))
    if any(key in doc.top for key in ("rows", "job")):
        from .catalogue import parse_catalogue  # Jinja2 and the row readers load only for catalogues

        catalogue = parse_catalogue(doc, name, problems)
        if catalogue is not None:
            manifest.sources += (catalogue.rows.path,)
            manifest._records = _catalogue_source(catalogue)
        return
    manifest._records = _yaml_source(doc)


def _yaml_source(doc: YamlDocument) -> RecordSource:
    return lambda found: yaml_jobs(doc, found)


def _catalogue_source(catalogue: Catalogue) -> RecordSource:
    from .catalogue import catalogue_records

    return lambda found: catalogue_records(catalogue, found)


def _expected_rows(name: str) -> int:
    try:
        with open(name, "rb") as file:
            sample = file.read(1 << 16)
        return int(os.path.getsize(name) / max(1, len(sample)) * (sample.count(b"\n") or 1) * 1.1) + 16
    except OSError:
        return 0


def _file_problem(name: str) -> str | None:
    try:
        mode = os.stat(name).st_mode
    except FileNotFoundError:
        return "file not found"
    except OSError as error:
        return f"cannot read the file: {error.strerror or error}"
    if stat.S_ISDIR(mode):
        return "this is a directory, not a manifest file"
    if not stat.S_ISREG(mode):  # a FIFO or device could block forever
        return "this is not a regular file"
    return None


def iter_jobs(path: str | os.PathLike[str]) -> Iterator[JobSpec]:
    """Yield the manifest's valid jobs in order; then raise ``ManifestError`` if anything was wrong."""
    return read_manifest(path).jobs()


def load_jobs(path: str | os.PathLike[str]) -> list[JobSpec]:
    """Every job of the manifest, or ``ManifestError``."""
    return list(iter_jobs(path))


def validate(path: str | os.PathLike[str]) -> int:
    """The number of jobs in the manifest, or ``ManifestError``; streams, builds no specs."""
    return read_manifest(path).count()
