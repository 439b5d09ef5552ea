"""Read a manifest (YAML, CSV or JSONL) into validated ``JobSpec``s.

YAML (``.yaml``/``.yml``)::

    model: openai/gpt-image-1.5     # optional; the only model supported
    defaults:                       # optional: aspect_ratio, quality, image_urls, metadata
      quality: high
    jobs:                           # or make the whole file a bare list of jobs
      - id: lamp-01                 # optional; a stable id is generated when missing
        prompt: A ceramic table lamp on an oak desk
        aspect_ratio: "3:2"
        image_urls: [https://example.com/lamp.jpg]   # a list, or a single URL
        metadata: {sku: L-01}       # your own data, kept with the job

Aliases (``*name``) are refused: they are how "billion laughs" bombs multiply a
small file, and ``defaults:`` covers the sharing they would be used for.

JSONL (``.jsonl``): one JSON object per line with the keys of a YAML job; blank
lines are ignored. Problems name the file line.

CSV (``.csv``): a header row, then one job per row. Columns ``id``, ``prompt``,
``aspect_ratio``, ``quality`` and ``image_urls`` (URLs separated by commas,
whitespace or ``|``); any other column is metadata, kept as strings. Empty cells
mean "not set". Problems name the *row*: the CSV record number counting the
header as row 1, which differs from the file line once a quoted cell spans lines.

In YAML and JSONL an unknown key is an error (with a "did you mean"); in CSV so is
a column that looks like a misspelt field, which would otherwise silently become
metadata. Files must be UTF-8, with or without a BOM.

A job without ``id`` gets ``<first words of the prompt>-<10 hex of its spec hash>``,
suffixed ``-2``, ``-3``... when that is taken, so the same manifest always gives
the same ids. Ids are unique ignoring case, since they become file names.

``iter_jobs`` streams CSV and JSONL: it yields each valid job as it is found and,
after the last one, raises ``ManifestError`` listing every problem if there were
any, so a consumer writing inside a transaction can roll back.
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import datetime
import difflib
import json
import math
import os
import re
import stat
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO
from urllib.parse import urlsplit

import yaml

from .errors import ManifestError, Problem
from .models import (
    ASPECT_RATIOS,
    DEFAULT_MODEL,
    JOB_FIELDS,
    MAX_JOB_ID_LENGTH,
    MAX_PROMPT_LENGTH,
    QUALITIES,
    SPEC_HASH_PREFIX,
    JobSpec,
    image_input,
)

__all__ = ["iter_jobs", "load_jobs", "validate"]

MAX_PROBLEMS = 1000  # beyond this only a count is kept, so a garbage file cannot eat memory
MAX_YAML_BYTES = 16 * 2**20  # YAML is parsed whole; big batches belong in CSV or JSONL
MAX_JSONL_LINE_BYTES = 4 * 2**20
MAX_YAML_EVENTS = 1_000_000  # ~75,000 jobs; each becomes a Python object, so cap memory and time
MAX_NESTING = 32  # of YAML collections and metadata values; real manifests need a handful
CSV_FIELD_LIMIT = 4 * 2**20  # generous: an over-long prompt gets the clearer length message

_JOB_KEYS = (*JOB_FIELDS, "metadata")
_DEFAULTABLE = ("aspect_ratio", "quality", "image_urls", "metadata")
_TOP_KEYS = ("model", "defaults", "jobs")
_TEXT_FIELDS = ("id", "aspect_ratio", "quality")  # read from YAML as written, never as numbers
_YAML_INT = "tag:yaml.org,2002:int"
_YAML_NULL = "tag:yaml.org,2002:null"
# A value whose problem the reader has already reported: the job is invalid, nothing more to say.
_REPORTED = object()
_MODELS = (None, _REPORTED, DEFAULT_MODEL)  # what 'model:' may be (once it is reported or missing)

_ID_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
_WINDOWS_DEVICE_RE = re.compile(r"(?i)(con|prn|aux|nul|com[0-9]|lpt[0-9])(\..*)?")  # CON, lpt1.txt...
_SURROGATE_RE = re.compile(r"[\ud800-\udfff]")
_BAD_URL_CHAR_RE = re.compile(r"[\s\x00-\x1f\x7f\ud800-\udfff]")
_URL_SEPARATOR_RE = re.compile(r"[\s,|]+")
_NOT_SLUG_CHAR_RE = re.compile(r"[^A-Za-z0-9 ]+")


def iter_jobs(path: str | os.PathLike[str]) -> Iterator[JobSpec]:
    """Yield the manifest's valid jobs in order; then raise ``ManifestError`` if anything was wrong."""
    yield from _read(path, build=True)  # type: ignore[misc]


def load_jobs(path: str | os.PathLike[str]) -> list[JobSpec]:
    """Every job of the manifest, or ``ManifestError``."""
    return list(iter_jobs(path))


def validate(path: str | os.PathLike[str]) -> int:
    """The number of jobs in the manifest, or ``ManifestError``; streams, builds no specs."""
    return sum(1 for _ in _read(path, build=False))


class _Invalid(Exception):
    """A value is unusable; the message says why."""


class _Problems:
    """Collects problems, keeping only the first ``limit`` so memory stays bounded."""

    def __init__(self, path: str, where_kind: str, limit: int = MAX_PROBLEMS):
        self.path, self.where_kind, self.limit = path, where_kind, limit
        self.listed: list[Problem] = []
        self.unlisted = 0

    def add(self, line: int | None, field: str | None, message: str) -> None:
        if len(self.listed) < self.limit:
            self.listed.append(Problem(self.path, line, field, message, self.where_kind))
        else:
            self.unlisted += 1

    def __bool__(self) -> bool:
        return bool(self.listed or self.unlisted)

    def raise_if_any(self) -> None:
        if self.unlisted:
            message = f"... and {self.unlisted} more problems not listed"
            self.listed.append(Problem(self.path, None, None, message, self.where_kind))
        if self.listed:
            raise ManifestError(self.listed)


# A reader yields (line or row, {field: raw value}, {field: line} or None, note for messages,
# ready-made metadata or None) per job, and reports what is wrong with the file itself.
_Record = tuple[int, dict[str, Any], "dict[str, int] | None", str, "dict[str, Any] | None"]
_Reader = Callable[[str, _Problems], Iterator[_Record]]


def _read(path: str | os.PathLike[str], build: bool) -> Iterator[JobSpec | None]:
    name = os.fsdecode(os.fspath(path))
    kind = os.path.splitext(name)[1].lower()
    reader = _READERS.get(kind)
    problems = _Problems(name, "row" if kind == ".csv" else "line")
    file_problem = _file_problem(name)
    if file_problem:
        problems.add(None, None, file_problem)
    elif reader is None:
        problems.add(
            None,
            None,
            f"unsupported manifest type {kind or '(no extension)'!r}; use .yaml, .yml, .csv or .jsonl",
        )
    else:
        id_reader = _ID_READERS.get(kind, reader)
        ids = _Ids(problems.where_kind, lambda: _explicit_ids(id_reader, name))
        jobs = 0
        try:
            for line, values, field_lines, note, metadata in reader(name, problems):
                jobs += 1
                spec = _check_job(line, values, field_lines, note, metadata, problems, ids, build)
                if spec is not None:
                    yield spec if build else None
        except OSError as error:
            problems.add(None, None, f"cannot read the file: {error.strerror or error}")
        if jobs == 0 and not problems:
            problems.add(None, None, "the manifest has no jobs")
    problems.raise_if_any()


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


def _check_job(
    line: int,
    values: dict[str, Any],
    field_lines: dict[str, int] | None,
    note: str,
    metadata: dict[str, Any] | None,
    problems: _Problems,
    ids: _Ids,
    build: bool,
) -> JobSpec | bool | None:
    """Validate one job, report its problems, and return its spec (True when not building)."""
    errors: list[tuple[str, str]] = []
    if values.get("prompt") is None:
        errors.append(("prompt", "prompt is missing or empty"))
    checked: dict[str, Any] = {}
    for field, value in values.items():
        if value is _REPORTED:
            errors.append((field, ""))
        elif value is not None and (check := _CHECKS.get(field)):
            try:
                checked[field] = check(value)
            except _Invalid as error:
                errors.append((field, str(error)))
    job_id = checked.get("id")
    if job_id is not None and (clash := ids.claim(job_id, line)):
        errors.append(("id", clash))
    if errors:
        for field, message in errors:
            if message:
                problems.add(field_lines.get(field, line) if field_lines else line, field, message + note)
        return None
    if not build:
        return True
    api_input = image_input(
        checked["prompt"], checked.get("aspect_ratio"), checked.get("quality"), checked.get("image_urls", ())
    )
    job_metadata = checked.get("metadata", metadata if metadata is not None else {})
    if job_id is None:
        job_id = ids.generate(_generated_id_base(JobSpec("", api_input)), line)
    return JobSpec(job_id, api_input, DEFAULT_MODEL, job_metadata)


class _Ids:
    """Uniqueness of ids, ignoring case, and the allocation of generated ones."""

    def __init__(self, where_kind: str, explicit_ids_in_file: Callable[[], set[str]]):
        self.where_kind = where_kind
        self.first_use: dict[str, int] = {}  # lower-cased id -> line/row of its first use
        self.spelling: dict[str, str] = {}  # lower-cased id -> first spelling, when not lower case
        self.next_suffix: dict[str, int] = {}
        self._explicit_ids_in_file = explicit_ids_in_file
        self._all_explicit: set[str] | None = None

    def claim(self, job_id: str, line: int) -> str | None:
        """Record an explicit id; return the problem if it is already taken."""
        key = job_id.lower()
        first = self.first_use.get(key)
        if first is None:
            self.first_use[key] = line
            if key != job_id:
                self.spelling[key] = job_id
            return None
        earlier = self.spelling.get(key, key)
        where = f"{self.where_kind} {first}"
        if earlier == job_id:
            return f"id {job_id!r} is already used on {where}"
        return (
            f"id {job_id!r} differs only in letter case from {earlier!r} on {where}; "
            "ids become file names, and some file systems ignore case"
        )

    def generate(self, base: str, line: int) -> str:
        # An explicit id may come later in the file than the job we name now, so the
        # first generated id triggers one extra pass collecting all explicit ids.
        if self._all_explicit is None:
            self._all_explicit = self._explicit_ids_in_file()
        taken, candidate = self._all_explicit, base
        if candidate in taken or candidate in self.first_use:
            suffix = self.next_suffix.get(base, 2)
            while (candidate := f"{base}-{suffix}") in taken or candidate in self.first_use:
                suffix += 1
            self.next_suffix[base] = suffix + 1
        self.first_use[candidate] = line
        return candidate


def _explicit_ids(reader: _Reader, name: str) -> set[str]:
    ids: set[str] = set()
    try:
        for _line, values, *_rest in reader(name, _Problems(name, "line", limit=0)):
            try:
                ids.add(_check_id(values["id"]).lower())
            except (KeyError, _Invalid):
                pass
    except OSError:
        pass  # the main pass reports it
    return ids


def _generated_id_base(spec: JobSpec) -> str:
    first_words = " ".join(spec.prompt.split(maxsplit=5)[:5])
    slug = "-".join(_NOT_SLUG_CHAR_RE.sub("", first_words).lower().split())[:40].rstrip("-") or "job"
    return f"{slug}-{spec.spec_hash()[len(SPEC_HASH_PREFIX) :][:10]}"


# --- values -------------------------------------------------------------------------------


def _check_id(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    elif not isinstance(value, str):
        raise _Invalid(f"id must be text, not {_describe(value)}")
    if not value:
        raise _Invalid("id is empty; leave it out to get a generated id")
    if len(value) > MAX_JOB_ID_LENGTH:
        raise _Invalid(f"id is {len(value)} characters; the limit is {MAX_JOB_ID_LENGTH}")
    if _ID_RE.fullmatch(value) is None:
        raise _Invalid(
            f"id {_show(value)} is not allowed: ids become file names, so use only ASCII letters, "
            "digits, '.', '_' and '-', and do not start with '.' or '-'"
        )
    if (value[3:4] in ("", ".") or value[4:5] in ("", ".")) and _WINDOWS_DEVICE_RE.fullmatch(value):
        raise _Invalid(f"id {_show(value)} is a reserved device name on Windows")
    return value


def _check_prompt(value: Any) -> str:
    if not isinstance(value, str):
        raise _Invalid(f"prompt must be text, not {_describe(value)}")
    prompt = value.strip()
    if "\r" in prompt:  # a CRLF file must give the same prompt, hence the same spec hash, as an LF one
        prompt = prompt.replace("\r\n", "\n").replace("\r", "\n")
    if not prompt:
        raise _Invalid("prompt is empty")
    if len(prompt) > MAX_PROMPT_LENGTH:
        raise _Invalid(f"prompt is {len(prompt)} characters; the limit is {MAX_PROMPT_LENGTH}")
    if "\x00" in prompt:
        raise _Invalid("prompt contains a NUL character")
    if not prompt.isascii() and _SURROGATE_RE.search(prompt):
        raise _Invalid("prompt contains an unpaired surrogate, which is not a character")
    return prompt


def _check_aspect_ratio(value: Any) -> str:
    if value.__class__ is str and value in ASPECT_RATIOS:
        return value
    raise _Invalid(_not_a_choice("aspect_ratio", value, ASPECT_RATIOS))


def _check_quality(value: Any) -> str:
    if value.__class__ is str and value in QUALITIES:
        return value
    raise _Invalid(_not_a_choice("quality", value, QUALITIES))


def _not_a_choice(field: str, value: Any, choices: tuple[str, ...]) -> str:
    message = f"{field} must be one of {', '.join(choices)}, not {_describe(value)}"
    if isinstance(value, str):
        normal = value.strip().lower().replace("x", ":").replace("/", ":")
        close = difflib.get_close_matches(normal, choices, n=1, cutoff=0.75)
        if close:
            message += f"; did you mean {close[0]!r}?"
    return message


def _check_image_urls(value: Any) -> tuple[str, ...]:
    urls = (value,) if isinstance(value, str) else value
    if not isinstance(urls, (list, tuple)):
        raise _Invalid(f"image_urls must be a list of URLs, not {_describe(value)}")
    bad = [f"{_describe(url)} {why}" for url in urls if (why := _url_problem(url))]
    if bad:
        raise _Invalid("image_urls: " + "; ".join(bad))
    return tuple(urls)


def _url_problem(url: Any) -> str | None:
    if not isinstance(url, str):
        return "is not a URL"
    if _BAD_URL_CHAR_RE.search(url):
        return "contains whitespace or control characters"
    try:
        parts = urlsplit(url)
        host, _port = parts.hostname, parts.port
    except ValueError:
        return "is not a valid URL"
    if parts.scheme not in ("http", "https"):
        return "is not an http:// or https:// URL"
    if not host:
        return "has no host"
    return None


def _check_metadata(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Invalid(f"metadata must be a mapping of names to values, not {_describe(value)}")
    return _plain(value, "metadata", 1)


def _plain(value: Any, where: str, depth: int) -> Any:
    """A JSON-compatible copy of ``value`` (dates become ISO strings), or ``_Invalid``."""
    if depth > MAX_NESTING:
        raise _Invalid(f"{where} is nested more than {MAX_NESTING} levels deep")
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, str):
        if not value.isascii() and _SURROGATE_RE.search(value):
            raise _Invalid(f"{where} contains an unpaired surrogate, which is not a character")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _Invalid(f"{where} is {value}, which JSON cannot store")
        return value
    if isinstance(value, datetime.date):  # and datetime, its subclass
        return value.isoformat()
    if isinstance(value, (list, tuple)):
        return [_plain(item, f"{where}[{index}]", depth + 1) for index, item in enumerate(value)]
    if isinstance(value, dict):
        for key in value:
            if not isinstance(key, str):
                raise _Invalid(f"{where} has the key {_describe(key)}; keys must be text")
        return {key: _plain(item, f"{where}.{key}", depth + 1) for key, item in value.items()}
    raise _Invalid(f"{where} holds {_describe(value)}, which JSON cannot store")


_CHECKS: dict[str, Callable[[Any], Any]] = {
    "id": _check_id,
    "prompt": _check_prompt,
    "aspect_ratio": _check_aspect_ratio,
    "quality": _check_quality,
    "image_urls": _check_image_urls,
    "metadata": _check_metadata,
}


def _describe(value: Any) -> str:
    if value is None:
        return "empty"
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, (int, float)):
        return f"the number {value}"
    if isinstance(value, str):
        return _show(value)
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


def _show(text: str) -> str:
    return repr(text) if len(text) <= 60 else repr(text[:57]) + "..."


def _closest(name: str, known: tuple[str, ...], cutoff: float = 0.6) -> str | None:
    """The known field ``name`` was probably meant as: same after case/'-' folding, or close."""
    normal = name.strip().lower().replace("-", "_").replace(" ", "_")
    if normal in known:
        return normal
    close = difflib.get_close_matches(normal, known, n=1, cutoff=cutoff)
    return close[0] if close else None


def _unknown_key(key: str, known: tuple[str, ...]) -> str:
    if key in JOB_FIELDS:  # only reachable for defaults
        return f"{key!r} cannot have a default; set it on each job"
    guess = _closest(key, known)
    if guess:
        return f"unknown field {key!r}; did you mean {guess!r}?"
    if "metadata" in known:
        return f"unknown field {key!r}; fields are {', '.join(known)}: put your own data under 'metadata'"
    return f"unknown key {key!r}; expected {', '.join(known)}"


def _not_utf8(byte: int) -> str:
    return f"the file is not valid UTF-8: cannot decode byte 0x{byte:02x} here; save it as UTF-8"


# --- readers ------------------------------------------------------------------------------


_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when available: much faster


def _check_yaml_events(text: str) -> None:
    """Refuse aliases, deep nesting and huge node counts before composing: each makes a file huge or slow."""
    depth = 0
    for count, event in enumerate(yaml.parse(text, Loader=_YAML_LOADER)):
        if count > MAX_YAML_EVENTS:
            problem = f"the YAML has over {MAX_YAML_EVENTS:,} values; use CSV or JSONL for batches this big"
        elif isinstance(event, yaml.AliasEvent):
            problem = "aliases (*name) are not supported; use 'defaults:' to share settings"
        elif isinstance(event, yaml.CollectionStartEvent) and (depth := depth + 1) > MAX_NESTING:
            problem = f"the YAML is nested more than {MAX_NESTING} levels deep"
        else:
            depth -= isinstance(event, yaml.CollectionEndEvent)
            continue
        raise _YamlRefused(problem=problem, problem_mark=event.start_mark)


class _YamlRefused(yaml.MarkedYAMLError):
    """Valid YAML that batchgen will not load."""


def _read_yaml(path: str, problems: _Problems) -> Iterator[_Record]:
    with open(path, "rb") as file:
        data = file.read(MAX_YAML_BYTES + 1)
    if len(data) > MAX_YAML_BYTES:
        problems.add(None, None, f"YAML manifests are limited to {MAX_YAML_BYTES >> 20} MiB; use CSV or JSONL")
        return
    data = data.removeprefix(codecs.BOM_UTF8)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        problems.add(data.count(b"\n", 0, error.start) + 1, None, _not_utf8(data[error.start]))
        return
    try:
        _check_yaml_events(text)
        loader = _YAML_LOADER(text)
        root = loader.get_single_node()
    except yaml.MarkedYAMLError as error:
        mark, context_mark = error.problem_mark or error.context_mark, error.context_mark
        message = error.problem or error.context
        if not isinstance(error, _YamlRefused):
            message = f"YAML syntax error: {message}"
        if error.problem and error.context and context_mark:
            message += f" ({error.context} on line {context_mark.line + 1})"
        problems.add(mark.line + 1 if mark else None, None, message)
        return
    except yaml.reader.ReaderError as error:  # libyaml counts bytes, PyYAML characters
        source: str | bytes = text if _YAML_LOADER is yaml.SafeLoader else data
        line = source[: error.position].count("\n" if source is text else b"\n") + 1  # type: ignore[arg-type]
        problems.add(line, None, f"the file contains a character YAML does not allow: {error.reason}")
        return
    jobs_node, defaults = root, {}
    if isinstance(root, yaml.MappingNode):
        jobs_node = None
        for key, node, line in _yaml_items(root, _TOP_KEYS, problems):
            if key == "jobs":
                jobs_node = node
            elif key == "defaults":
                defaults = _yaml_defaults(loader, node, problems)
            elif (model := _yaml_value(loader, node, line, "model", problems)) not in _MODELS:
                message = f"model {_describe(model)} is not supported; the only model is {DEFAULT_MODEL!r}"
                problems.add(line, "model", message)
    elif root is not None and not isinstance(root, yaml.SequenceNode):
        problems.add(root.start_mark.line + 1, None, "expected a mapping with a 'jobs:' list, or a list of jobs")
        return
    if jobs_node is None or jobs_node.tag == _YAML_NULL:
        return
    if not isinstance(jobs_node, yaml.SequenceNode):
        problems.add(jobs_node.start_mark.line + 1, "jobs", "'jobs' must be a list of jobs")
        return
    for item in jobs_node.value:
        line = item.start_mark.line + 1
        if not isinstance(item, yaml.MappingNode):
            problems.add(line, None, "each job must be a mapping with at least a 'prompt'")
            continue
        values, field_lines = {}, {}
        for key, node, key_line in _yaml_items(item, _JOB_KEYS, problems):
            field_lines[key] = key_line
            values[key] = _yaml_value(loader, node, key_line, key, problems)
        for key, default in defaults.items():
            if values.get(key) is None:
                values[key] = default
            elif key == "metadata" and isinstance(values[key], dict):
                values[key] = {**default, **values[key]}
        yield line, values, field_lines, "", None


def _yaml_items(node: yaml.MappingNode, known: tuple[str, ...], problems: _Problems):
    """(key, value node, line) for each known key of a mapping; reports unknown and repeated keys."""
    seen: dict[str, int] = {}
    for key_node, value_node in node.value:
        line = key_node.start_mark.line + 1
        key = key_node.value if isinstance(key_node, yaml.ScalarNode) else "(a non-text key)"
        if key not in known:
            problems.add(line, key, _unknown_key(key, known))
        elif key in seen:
            problems.add(line, key, f"{key!r} is given twice (first on line {seen[key]})")
        else:
            seen[key] = line
            yield key, value_node, line


def _yaml_value(loader: yaml.SafeLoader, node: yaml.Node, line: int, key: str, problems: _Problems) -> Any:
    """The value of ``node``: None for null, ``_REPORTED`` when it cannot be built."""
    if isinstance(node, yaml.ScalarNode):
        if node.tag == _YAML_NULL:
            return None
        if key in _TEXT_FIELDS and node.tag == _YAML_INT:
            return node.value  # YAML 1.1 reads 3:2 as the number 182 and 0012 as 10
    try:
        return loader.construct_object(node, deep=True)
    except (yaml.YAMLError, ValueError, TypeError) as error:
        problems.add(line, key, f"cannot read this value: {str(error).splitlines()[0]}")
        return _REPORTED


def _yaml_defaults(loader: yaml.SafeLoader, node: yaml.Node, problems: _Problems) -> dict[str, Any]:
    """The valid defaults, checked once here so a bad one is reported once, not per job."""
    if node.tag == _YAML_NULL:
        return {}
    if not isinstance(node, yaml.MappingNode):
        problems.add(node.start_mark.line + 1, "defaults", "'defaults' must be a mapping")
        return {}
    defaults = {}
    for key, value_node, line in _yaml_items(node, _DEFAULTABLE, problems):
        value = _yaml_value(loader, value_node, line, key, problems)
        try:
            if value is not None and value is not _REPORTED:
                defaults[key] = _CHECKS[key](value)
        except _Invalid as error:
            problems.add(line, key, f"in defaults: {error}")
    return defaults


def _read_jsonl(path: str, problems: _Problems) -> Iterator[_Record]:
    undecodable_reported = False
    with open(path, "rb") as file:
        for number, data in _bounded_lines(file):
            if data is None:
                problems.add(number, None, f"the line is longer than {MAX_JSONL_LINE_BYTES >> 20} MiB")
                continue
            try:
                text = data.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as error:
                if not undecodable_reported:
                    undecodable_reported = True
                    problems.add(number, None, _not_utf8(data[error.start]))
                continue
            if not text.strip():
                continue
            try:
                job = json.loads(text)
            except json.JSONDecodeError as error:
                problems.add(number, None, f"not valid JSON: {error.msg} (column {error.colno})")
                continue
            except (ValueError, RecursionError):
                problems.add(number, None, "not valid JSON (too deeply nested?)")
                continue
            if not isinstance(job, dict):
                problems.add(number, None, f"each line must be a JSON object (a job), not {_describe(job)}")
                continue
            for key in job:
                if key not in _JOB_KEYS:
                    problems.add(number, key, _unknown_key(key, _JOB_KEYS))
            yield number, job, None, "", None


def _bounded_lines(file: BinaryIO) -> Iterator[tuple[int, bytes | None]]:
    """Numbered lines, with None for one too long to hold, so memory stays bounded."""
    number = 0
    while line := file.readline(MAX_JSONL_LINE_BYTES + 1):
        number += 1
        if len(line) > MAX_JSONL_LINE_BYTES and not line.endswith(b"\n"):
            while line and not line.endswith(b"\n"):
                line = file.readline(MAX_JSONL_LINE_BYTES)
            yield number, None
        else:
            yield number, line


@dataclasses.dataclass
class _CsvLayout:
    width: int
    fields: list[tuple[str, int]]
    metadata: list[tuple[str, int]]
    unnamed: list[int]
    has_prompt: bool


def _read_csv(path: str, problems: _Problems) -> Iterator[_Record]:
    if csv.field_size_limit() < CSV_FIELD_LIMIT:
        csv.field_size_limit(CSV_FIELD_LIMIT)
    # surrogateescape keeps undecodable bytes, so they can be reported with their row
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as file:
        reader = csv.reader(file)
        layout: _CsvLayout | None = None
        row_number = last_line = 0
        undecodable_reported = False
        try:
            for row in reader:
                row_number += 1
                first_line, last_line = last_line + 1, reader.line_num
                if not any(row):
                    continue
                if not all(map(str.isascii, row)) and (byte := _undecodable_byte(row)) is not None:
                    if not undecodable_reported:
                        undecodable_reported = True
                        problems.add(row_number, None, _not_utf8(byte))
                    if layout is None:
                        return
                    continue
                if layout is None:
                    layout = _csv_layout(row, row_number, problems)
                    continue
                note = f" (row {row_number} is lines {first_line}-{last_line})" if last_line > first_line else ""
                if record := _csv_record(row, row_number, note, layout, problems):
                    yield record
        except csv.Error as error:
            problems.add(row_number + 1, None, f"cannot read the CSV: {error}")


def _read_csv_ids(path: str, problems: _Problems) -> Iterator[_Record]:
    """Just the ids of a CSV, for the pass that collects explicit ids; nothing if there is no id column."""
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as file:
        rows = csv.reader(file)
        try:
            names = next((row for row in rows if any(row)), [])
            index = [name.replace("\ufeff", "").strip() for name in names].index("id")
            for row in rows:
                if len(row) > index and row[index]:
                    yield 0, {"id": row[index]}, None, "", None
        except (ValueError, csv.Error):  # no id column, or a file the main pass reports on
            return


def _undecodable_byte(row: list[str]) -> int | None:
    for cell in row:
        if not cell.isascii() and (match := _SURROGATE_RE.search(cell)):
            return ord(match.group()) - 0xDC00
    return None


def _csv_layout(header: list[str], row_number: int, problems: _Problems) -> _CsvLayout:
    fields: dict[str, int] = {}
    metadata: dict[str, int] = {}
    unnamed: list[int] = []
    misspelt: set[str] = set()
    for index, cell in enumerate(header):
        name = cell.replace("\ufeff", "").strip()
        if not name:
            unnamed.append(index)
        elif name in fields or name in metadata:
            problems.add(row_number, name, f"column {name!r} appears twice in the header")
        elif name in JOB_FIELDS:
            fields[name] = index
        elif guess := _closest(name, JOB_FIELDS, cutoff=0.85):
            # Other columns become metadata, so a typo would silently drop the field.
            misspelt.add(guess)
            problems.add(row_number, name, f"column {name!r} looks like a misspelt {guess!r}; rename it")
        else:
            metadata[name] = index
    if "prompt" not in fields and "prompt" not in misspelt:
        columns = ", ".join(repr(cell.strip()) for cell in header)
        problems.add(row_number, "prompt", f"the header has no 'prompt' column (it has {columns})")
    return _CsvLayout(len(header), list(fields.items()), list(metadata.items()), unnamed, "prompt" in fields)


def _csv_record(row: list[str], row_number: int, note: str, layout: _CsvLayout, problems: _Problems) -> _Record | None:
    """The row's job, or None for a row of blank cells."""
    width = layout.width
    if len(row) < width:
        row = row + [""] * (width - len(row))
    values: dict[str, Any] = {field: row[index] for field, index in layout.fields if row[index].strip()}
    if not values and not "".join(row).strip():
        return None
    if len(row) > width and any(row[width:]):
        message = f"the row has {len(row)} cells but the header has {width} columns"
        problems.add(row_number, None, message + note)
    if not layout.has_prompt:
        values["prompt"] = _REPORTED
    urls = values.get("image_urls")
    if urls:
        values["image_urls"] = tuple(url for url in _URL_SEPARATOR_RE.split(urls) if url)
    for index in layout.unnamed:
        if row[index].strip():
            problems.add(row_number, None, f"cell {index + 1} has a value but its column has no name" + note)
    return row_number, values, None, note, {name: row[index] for name, index in layout.metadata}


_READERS: dict[str, _Reader] = {
    ".yaml": _read_yaml,
    ".yml": _read_yaml,
    ".csv": _read_csv,
    ".jsonl": _read_jsonl,
}
_ID_READERS: dict[str, _Reader] = {".csv": _read_csv_ids}
