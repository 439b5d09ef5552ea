"""YAML manifests: parsed whole (they are small), checked before anything is built.

Aliases (``*name``) are refused: they are how "billion laughs" bombs multiply a
small file, and ``defaults:`` covers the sharing they would be used for. Values
of ``id``, ``aspect_ratio`` and ``quality`` are read as written: YAML 1.1 would
read ``3:2`` as the number 182 and ``0012`` as 10.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator
from typing import Any, NamedTuple

import yaml

from ..models import DEFAULT_MODEL, JOB_FIELDS
from .fields import CHECKS, MAX_NESTING, check_model
from .problems import Invalid, Problems, not_utf8, unknown_key, utf16
from .records import REPORTED, Record

MAX_YAML_BYTES = 16 * 2**20  # YAML is parsed whole; big batches belong in CSV or JSONL
MAX_YAML_EVENTS = 1_000_000  # ~75,000 jobs; each becomes a Python object, so cap memory and time
CATALOGUE_KEYS = ("rows", "sheet", "job", "fill_down", "where", "unique", "variants", "count")
TOP_KEYS = ("model", "pricing", "defaults", "jobs", *CATALOGUE_KEYS)
TEXT_FIELDS = ("id", "aspect_ratio", "quality", "filename")  # read from YAML as written, never as numbers
YAML_INT = "tag:yaml.org,2002:int"
YAML_NULL = "tag:yaml.org,2002:null"

YAML_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when available: much faster


def job_keys(model: str) -> tuple[str, ...]:
    """The keys a job may have: the model's fields for the model batchgen knows, else its raw input."""
    return (*JOB_FIELDS, "metadata") if model == DEFAULT_MODEL else ("id", "input", "metadata")


def default_keys(model: str) -> tuple[str, ...]:
    return ("aspect_ratio", "quality", "image_urls", "metadata") if model == DEFAULT_MODEL else ("input", "metadata")


class YamlDocument(NamedTuple):
    loader: Any
    model: str
    top: dict[str, tuple[yaml.Node, int]]  # every known top-level key: (value node, line)


class _YamlRefused(yaml.MarkedYAMLError):
    """Valid YAML that batchgen will not load."""


def _check_yaml_events(text: str, loader: Any) -> None:
    """Refuse aliases, deep nesting and huge node counts before composing: each makes a file huge or slow."""
    depth = 0
    limit = MAX_YAML_EVENTS
    for count, event in enumerate(yaml.parse(text, Loader=loader)):
        if count > limit:
            problem = f"the YAML has over {limit:,} values; use CSV or JSONL for batches this big"
        elif isinstance(event, yaml.AliasEvent):
            problem = "aliases (*name) are not supported; use 'defaults:' to share settings"
        elif isinstance(event, yaml.CollectionStartEvent) and (depth := depth + 1) > MAX_NESTING:
            problem = f"the YAML is nested more than {MAX_NESTING} levels deep"
        else:
            depth -= isinstance(event, yaml.CollectionEndEvent)
            continue
        raise _YamlRefused(problem=problem, problem_mark=event.start_mark)  # type: ignore[arg-type]


def load_yaml(path: str, problems: Problems) -> YamlDocument | None:
    """The document's top level, checked; None when the file cannot be read as a manifest at all."""
    with open(path, "rb") as file:
        data = file.read(MAX_YAML_BYTES + 1)
    if len(data) > MAX_YAML_BYTES:
        problems.add(None, None, f"YAML manifests are limited to {MAX_YAML_BYTES >> 20} MiB; use CSV or JSONL")
        return None
    if (wide := utf16(data)) is not None:
        problems.add(None, None, wide)
        return None
    data = data.removeprefix(codecs.BOM_UTF8)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        problems.add(data.count(b"\n", 0, error.start) + 1, None, not_utf8(data[error.start], spreadsheet=False))
        return None
    loader_class = YAML_LOADER
    try:
        _check_yaml_events(text, loader_class)
        loader = loader_class(text)
        root = loader.get_single_node()
    except yaml.MarkedYAMLError as error:
        mark, context_mark = error.problem_mark or error.context_mark, error.context_mark
        message = error.problem or error.context or "cannot parse"
        if not isinstance(error, _YamlRefused):
            message = f"YAML syntax error: {message}"
        if error.problem and error.context and context_mark:
            message += f" ({error.context} on line {context_mark.line + 1})"
        problems.add(mark.line + 1 if mark else None, None, message)
        return None
    except yaml.reader.ReaderError as error:  # libyaml counts bytes, PyYAML characters
        if loader_class is yaml.SafeLoader:
            line = text[: error.position].count("\n") + 1
        else:
            line = data[: error.position].count(b"\n") + 1
        problems.add(line, None, f"the file contains a character YAML does not allow: {error.reason}")
        return None
    if root is None or isinstance(root, yaml.SequenceNode):
        return YamlDocument(loader, DEFAULT_MODEL, {"jobs": (root, 1)} if root is not None else {})
    if not isinstance(root, yaml.MappingNode):
        problems.add(root.start_mark.line + 1, None, "expected a mapping with a 'jobs:' list, or a list of jobs")
        return None
    top = {key: (node, line) for key, node, line in mapping_items(root, TOP_KEYS, problems)}
    model = DEFAULT_MODEL
    if "model" in top:
        node, line = top["model"]
        value = yaml_value(loader, node, line, "model", problems)
        if value is not None and value is not REPORTED:
            try:
                model = check_model(value)
            except Invalid as error:
                problems.add(line, "model", str(error))
    catalogue = [key for key in CATALOGUE_KEYS if key in top]
    if "jobs" in top and catalogue:
        line = top[catalogue[0]][1]
        problems.add(line, catalogue[0], "a manifest has either 'jobs:' or 'rows:' with a 'job:' template, not both")
    return YamlDocument(loader, model, top)


def mapping_items(
    node: yaml.MappingNode, known: tuple[str, ...], problems: Problems, unknown: Any = unknown_key
) -> Iterator[tuple[str, yaml.Node, int]]:
    """(key, value node, line) for each known key of a mapping; reports unknown and repeated keys."""
    seen: dict[str, int] = {}
    for key_node, value_node in node.value:
        line = key_node.start_mark.line + 1
        key = key_node.value if isinstance(key_node, yaml.ScalarNode) else "(a non-text key)"
        if key not in known:
            problems.add(line, key, unknown(key, known))
        elif key in seen:
            problems.add(line, key, f"{key!r} is given twice (first on line {seen[key]})")
        else:
            seen[key] = line
            yield key, value_node, line


def yaml_value(loader: Any, node: yaml.Node, line: int, key: str, problems: Problems) -> Any:
    """The value of ``node``: None for null, ``REPORTED`` when it cannot be built."""
    if isinstance(node, yaml.ScalarNode):
        if node.tag == YAML_NULL:
            return None
        if key in TEXT_FIELDS and node.tag == YAML_INT:
            return node.value
    try:
        return loader.construct_object(node, deep=True)
    except (yaml.YAMLError, ValueError, TypeError) as error:
        problems.add(line, key, f"cannot read this value: {str(error).splitlines()[0]}")
        return REPORTED


def _unknown_job_key(model: str) -> Any:
    def message(key: str, known: tuple[str, ...]) -> str:
        if model != DEFAULT_MODEL and key in JOB_FIELDS:
            return f"{key!r} is a field of {DEFAULT_MODEL}; for {model} put the model's parameters under 'input:'"
        return unknown_key(key, known)

    return message


def yaml_defaults(doc: YamlDocument, problems: Problems) -> dict[str, Any]:
    """The valid defaults, checked once here so a bad one is reported once, not per job."""
    if "defaults" not in doc.top:
        return {}
    node, _line = doc.top["defaults"]
    if node.tag == YAML_NULL:
        return {}
    if not isinstance(node, yaml.MappingNode):
        problems.add(node.start_mark.line + 1, "defaults", "'defaults' must be a mapping")
        return {}
    defaults = {}
    for key, value_node, line in mapping_items(node, default_keys(doc.model), problems, _unknown_job_key(doc.model)):
        value = yaml_value(doc.loader, value_node, line, key, problems)
        try:
            if value is not None and value is not REPORTED:
                defaults[key] = CHECKS[key](value)
        except Invalid as error:
            problems.add(line, key, f"in defaults: {error}")
    return defaults


def yaml_jobs(doc: YamlDocument, problems: Problems) -> Iterator[Record]:
    defaults = yaml_defaults(doc, problems)
    if "jobs" not in doc.top:
        return
    jobs_node, _line = doc.top["jobs"]
    if jobs_node.tag == YAML_NULL:
        return
    if not isinstance(jobs_node, yaml.SequenceNode):
        problems.add(jobs_node.start_mark.line + 1, "jobs", "'jobs' must be a list of jobs")
        return
    keys = job_keys(doc.model)
    unknown = _unknown_job_key(doc.model)
    for item in jobs_node.value:
        line = item.start_mark.line + 1
        if not isinstance(item, yaml.MappingNode):
            problems.add(line, None, f"each job must be a mapping with at least {keys[1]!r}")
            continue
        values, field_lines = {}, {}
        for key, node, key_line in mapping_items(item, keys, problems, unknown):
            field_lines[key] = key_line
            values[key] = yaml_value(doc.loader, node, key_line, key, problems)
        for key, default in defaults.items():
            if values.get(key) is None:
                values[key] = default
            elif key in ("metadata", "input") and isinstance(values[key], dict):
                values[key] = {**default, **values[key]}
        yield Record(line, values, field_lines)
