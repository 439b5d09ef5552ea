"""Catalogue manifests: jobs made from the rows of a product export by templates.

A YAML manifest with ``rows:`` instead of ``jobs:``::

    rows: products.csv            # .csv (delimiter sniffed), .tsv, .jsonl or .xlsx, next to the manifest
    sheet: Products               # .xlsx only; default the first sheet
    fill_down: [Name, Categories] # blank cells take the value above
    where:                        # keep rows matching every condition
      Type: [simple, variable]    #   one of a list
      Published: 1                #   equal to a value (compared as text)
      Images: {not_empty: true}   #   not blank
    unique: "{{ SKU }}"           # keep the first row per key
    variants:                     # one job per combination; each adds a stable suffix to the id
      aspect_ratio: ["1:1", "3:2"]
    count: 2                      # images per job; copies 2..N get ids ending -2..-N
    job:                          # Jinja2 templates over the row
      id: "{{ SKU | slug }}"
      prompt: "Studio photo of {{ Name }} on white"
      image_urls: "{{ Images }}"  # ', ', '|' or whitespace between URLs
      filename: "{{ Categories | first | slug }}/{{ id }}"
      metadata: {sku: "{{ SKU }}"}

Steps run in that order: fill_down, where, unique, then variants × count per row.
Problems name the manifest line of the template, the row and the column.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import yaml

from ..models import DEFAULT_MODEL, JOB_FIELDS
from ..words import plural
from .fields import check_aspect_ratio, check_quality, split_urls
from .problems import Invalid, Problems, close_names, closest
from .records import REPORTED, Record
from .rows import RowsFile, read_rows, resolve_rows_path, rows_problem
from .templates import Row, TemplateProblem, compile_template, row_context
from .yaml_reader import YAML_NULL, YamlDocument, mapping_items

MAX_COUNT = 100
_SUFFIX_RE = re.compile(r"[^a-z0-9]+")
_VARIANT_FIELDS = {"aspect_ratio": check_aspect_ratio, "quality": check_quality}


@dataclass
class Tree:
    """A compiled template value: text templates at the leaves, lists and mappings around them."""

    line: int
    render: Callable[[dict[str, Any]], str] | None = None  # a text template
    constant: Any = None
    items: list[Tree] | None = None
    mapping: dict[str, Tree] | None = None

    def value(self, context: dict[str, Any]) -> Any:
        if self.render is not None:
            return self.render(context)
        # A part already reported (a template that did not compile) makes the whole value reported: one
        # problem, not a second one about what the placeholder is.
        if self.items is not None:
            items = [item.value(context) for item in self.items]
            return REPORTED if any(item is REPORTED for item in items) else items
        if self.mapping is not None:
            mapping = {key: tree.value(context) for key, tree in self.mapping.items()}
            return REPORTED if any(value is REPORTED for value in mapping.values()) else mapping
        return self.constant


@dataclass
class Condition:
    column: str
    line: int
    values: frozenset[str] | None  # None: "not empty"

    def holds(self, row: Row) -> bool:
        cell = _text(row.get(self.column, ""))
        return bool(cell) if self.values is None else cell in self.values


@dataclass
class Catalogue:
    rows: RowsFile
    job_line: int
    job: dict[str, Tree]
    fill_down: list[tuple[str, int]] = field(default_factory=list)
    where: list[Condition] = field(default_factory=list)
    unique: Tree | None = None
    variants: list[tuple[str, list[tuple[Any, str]], int]] = field(default_factory=list)  # name, (value, suffix)
    count: int = 1


def _text(value: Any) -> str:
    return "" if value is None else str(value).strip()


def _scalar_text(node: yaml.Node) -> str | None:
    return node.value if isinstance(node, yaml.ScalarNode) and node.tag != YAML_NULL else None


def compile_tree(node: yaml.Node, where: str, problems: Problems) -> Tree:
    line = node.start_mark.line + 1
    if isinstance(node, yaml.SequenceNode):
        return Tree(line, items=[compile_tree(item, where, problems) for item in node.value])
    if isinstance(node, yaml.MappingNode):
        mapping = {}
        for key_node, value_node in node.value:
            mapping[str(key_node.value)] = compile_tree(value_node, where, problems)
        return Tree(line, mapping=mapping)
    if node.tag == YAML_NULL:
        return Tree(line)
    if node.tag != "tag:yaml.org,2002:str":  # numbers and booleans as YAML reads them
        return Tree(line, constant=yaml.safe_load(str(node.value)))
    try:
        return Tree(line, render=compile_template(node.value))
    except TemplateProblem as error:
        problems.add(line, where, str(error))
        return Tree(line, constant=REPORTED)


def parse_catalogue(doc: YamlDocument, manifest: str, problems: Problems) -> Catalogue | None:
    top = doc.top
    if "rows" not in top and "job" in top and isinstance(top["job"][0], yaml.SequenceNode):
        message = (
            "'job:' is the template of a catalogue manifest (with 'rows:'); for a list of jobs, did you mean 'jobs'?"
        )
        problems.add(top["job"][1], "job", message)
        return None
    if "rows" not in top or "job" not in top:
        missing, present = ("job", "rows") if "rows" in top else ("rows", "job")
        line = top[present][1] if present in top else min(line for _node, line in top.values())
        problems.add(line, missing, "a catalogue manifest needs both 'rows:' (the file) and 'job:' (the templates)")
        return None
    rows_node, rows_line = top["rows"]
    rows_value = _scalar_text(rows_node)
    if not rows_value:
        problems.add(rows_line, "rows", "'rows' must name a file, e.g. rows: products.csv")
        return None
    sheet = _scalar_text(top["sheet"][0]) if "sheet" in top else None
    rows = RowsFile(resolve_rows_path(manifest, rows_value), rows_value, rows_line, sheet)
    job_node, job_line = top["job"]
    if not isinstance(job_node, yaml.MappingNode):
        problems.add(job_line, "job", "'job' must be a mapping of job fields to templates")
        return None
    keys = (
        (*JOB_FIELDS, "metadata", "filename") if doc.model == DEFAULT_MODEL else ("id", "input", "metadata", "filename")
    )
    job = {key: compile_tree(node, key, problems) for key, node, _line in mapping_items(job_node, keys, problems)}
    catalogue = Catalogue(rows, job_line, job)
    _parse_steps(doc, catalogue, problems)
    return catalogue


def _parse_steps(doc: YamlDocument, catalogue: Catalogue, problems: Problems) -> None:
    top = doc.top
    if "fill_down" in top:
        node, line = top["fill_down"]
        names = node.value if isinstance(node, yaml.SequenceNode) else [node]
        for item in names:
            if (name := _scalar_text(item)) is None:
                problems.add(line, "fill_down", "'fill_down' must be a list of column names")
            else:
                catalogue.fill_down.append((name, item.start_mark.line + 1))
    if "where" in top:
        node, line = top["where"]
        if not isinstance(node, yaml.MappingNode):
            problems.add(
                line, "where", "'where' must map column names to a value, a list of values or {not_empty: true}"
            )
        else:
            for key_node, value_node in node.value:
                condition = _condition(str(key_node.value), value_node, problems)
                if condition is not None:
                    catalogue.where.append(condition)
    if "unique" in top:
        catalogue.unique = compile_tree(top["unique"][0], "unique", problems)
    if "variants" in top:
        _parse_variants(doc, catalogue, problems)
    if "count" in top:
        node, line = top["count"]
        text = _scalar_text(node) or ""
        if not text.isdigit() or not 1 <= int(text) <= MAX_COUNT:
            problems.add(line, "count", f"count must be a whole number from 1 to {MAX_COUNT}, not {text or 'empty'!r}")
        else:
            catalogue.count = int(text)


def _condition(column: str, node: yaml.Node, problems: Problems) -> Condition | None:
    line = node.start_mark.line + 1
    if isinstance(node, yaml.SequenceNode):
        values = [_scalar_text(item) for item in node.value]
        if values and all(value is not None for value in values):
            return Condition(column, line, frozenset(value.strip() for value in values if value is not None))
    elif isinstance(node, yaml.MappingNode) and len(node.value) == 1:
        ((key_node, value_node),) = node.value
        operator, operand = key_node.value, _scalar_text(value_node)
        if operator == "not_empty" and operand in ("true", "yes"):
            return Condition(column, line, None)
        if operator == "equals" and operand is not None:
            return Condition(column, line, frozenset((operand.strip(),)))
        if operator == "one_of" and isinstance(value_node, yaml.SequenceNode):
            return _condition(column, value_node, problems)
    elif (text := _scalar_text(node)) is not None:
        return Condition(column, line, frozenset((text.strip(),)))
    problems.add(
        line,
        "where",
        f"condition on {column!r} must be a value, a list of values, {{equals: V}}, {{one_of: [...]}} "
        "or {not_empty: true}",
    )
    return None


def _parse_variants(doc: YamlDocument, catalogue: Catalogue, problems: Problems) -> None:
    node, line = doc.top["variants"]
    if not isinstance(node, yaml.MappingNode):
        problems.add(
            line, "variants", "'variants' must map a name to a list of values, e.g. aspect_ratio: ['1:1', '3:2']"
        )
        return
    for key_node, list_node in node.value:
        name, key_line = str(key_node.value), key_node.start_mark.line + 1
        values = [_scalar_text(item) for item in list_node.value] if isinstance(list_node, yaml.SequenceNode) else []
        if not values or any(value is None for value in values):
            problems.add(key_line, "variants", f"variant {name!r} must be a non-empty list of values")
            continue
        if name in catalogue.job:
            problems.add(key_line, "variants", f"{name!r} is set both by job: and by variants:; keep one")
            continue
        meant = closest(name, tuple(_VARIANT_FIELDS)) if doc.model == DEFAULT_MODEL else None
        if name not in _VARIANT_FIELDS and meant is not None:
            problems.add(
                key_line,
                "variants",
                f"variant {name!r} would be only a variable for templates ({{{{ variant[{name!r}] }}}}), not the "
                f"job's option; did you mean {meant!r}?",
            )
            continue
        check = _VARIANT_FIELDS.get(name) if doc.model == DEFAULT_MODEL else None
        options: list[tuple[Any, str]] = []
        suffixes: dict[str, str] = {}
        for value in values:
            assert value is not None
            try:
                checked = check(value) if check else value
            except Invalid as error:
                problems.add(key_line, name, f"in variants: {error}")
                continue
            suffix = _SUFFIX_RE.sub("-", value.lower().replace(":", "x")).strip("-")
            if not suffix or suffix in suffixes:
                other = f" as {suffixes[suffix]!r} does" if suffix in suffixes else ""
                problems.add(key_line, name, f"variant value {value!r} gives the id suffix {suffix!r}{other}")
                continue
            suffixes[suffix] = value
            options.append((checked, suffix))
        catalogue.variants.append((name, options, key_line))


def catalogue_records(catalogue: Catalogue, problems: Problems) -> Iterator[Record]:
    """The jobs of every kept row, in row order, each variant and copy after its row."""
    rows = catalogue.rows
    if (problem := rows_problem(rows)) is not None:
        problems.add(rows.line, "rows", problem)
        return
    combos = list(itertools.product(*[options for _name, options, _line in catalogue.variants]))
    names = [name for name, _options, _line in catalogue.variants]
    field_lines = {key: tree.line for key, tree in catalogue.job.items()}
    carried: dict[str, Any] = {}
    seen: set[str] = set()
    missing = _MissingColumns(problems, rows.shown)
    unmet = _Unmet(catalogue.where)
    checked_columns = False
    for number, row in read_rows(rows, problems):
        prefix = f"{rows.shown} row {number}: "
        if not checked_columns:
            checked_columns = True
            if not _columns_exist(catalogue, list(row), rows.shown, problems):
                return
        for column, _line in catalogue.fill_down:
            if _text(row.get(column)):
                carried[column] = row[column]
            else:
                row[column] = carried.get(column, "")
        if not unmet.passes(row):
            continue
        context = row_context(row)
        if catalogue.unique is not None:
            key = _render(catalogue.unique, context, "unique", prefix, number, missing)
            if key is REPORTED or key in seen:
                continue
            seen.add(key)
        base_id = (
            _render(catalogue.job["id"], context, "id", prefix, number, missing) if "id" in catalogue.job else None
        )
        for combo in combos:
            variant = {name: value for name, (value, _suffix) in zip(names, combo, strict=True)}
            suffix = "".join(f"-{suffix}" for _value, suffix in combo)
            for sample in range(1, catalogue.count + 1):
                values: dict[str, Any] = {"sample": sample}
                job_context = {**context, "variant": variant, "sample": sample}
                if base_id is not None:
                    job_id = (
                        REPORTED if base_id is REPORTED else f"{base_id}{suffix}{'' if sample == 1 else f'-{sample}'}"
                    )
                    values["id"] = job_context["id"] = job_id
                for key, tree in catalogue.job.items():
                    if key != "id":
                        values[key] = _render(tree, job_context, key, prefix, number, missing)
                for name, value in variant.items():
                    if name in _VARIANT_FIELDS and catalogue.job.get(name) is None:
                        values[name] = value
                if isinstance(values.get("image_urls"), str):
                    values["image_urls"] = split_urls(values["image_urls"])
                elif isinstance(values.get("image_urls"), list):
                    values["image_urls"] = tuple(url for item in values["image_urls"] for url in split_urls(str(item)))
                for key in ("aspect_ratio", "quality", "filename", "prompt"):
                    if values.get(key) == "":
                        values[key] = None  # rendered empty: not set (a missing prompt is reported as such)
                yield Record(catalogue.job_line, values, field_lines, "", None, prefix)
    missing.report_rest()
    unmet.report(problems, rows.shown)


class _Unmet:
    """The 'where:' conditions over the rows: when no row passes them all, say which never held and what
    their columns hold instead (a filter written 'Simple' for the export's 'simple' leaves no job)."""

    SHOWN = 5  # distinct values kept per column

    def __init__(self, conditions: list[Condition]):
        self.conditions = conditions
        self.rows = self.passed = 0
        self.held = [0] * len(conditions)
        self.seen: list[list[str]] = [[] for _ in conditions]

    def passes(self, row: Row) -> bool:
        if self.passed:  # a row passed: nothing will be reported, only each row's verdict is wanted
            return all(condition.holds(row) for condition in self.conditions)
        self.rows += 1
        passed = True
        for index, condition in enumerate(self.conditions):
            if condition.holds(row):
                self.held[index] += 1
            else:
                passed = False
                seen = self.seen[index]
                if len(seen) < self.SHOWN and (cell := _text(row.get(condition.column, ""))) not in seen:
                    seen.append(cell)
        self.passed += passed
        return passed

    def report(self, problems: Problems, shown: str) -> None:
        if not self.conditions or not self.rows or self.passed:
            return
        for index, condition in enumerate(self.conditions):
            if self.held[index]:
                continue
            wanted = "a value" if condition.values is None else " or ".join(map(repr, sorted(condition.values)))
            holds = ", ".join(repr(value) for value in self.seen[index])
            problems.add(
                condition.line,
                "where",
                f"no row of {shown} ({self.rows} read) has {wanted} in column {condition.column!r}; it holds {holds}"
                + (" and more" if len(self.seen[index]) == self.SHOWN else ""),
            )
        if all(self.held):
            problems.add(self.conditions[0].line, "where", f"no row of {shown} meets every 'where:' condition at once")


class _MissingColumns:
    """A template that fails the same way on every row (a missing column, a sandbox refusal): say it
    once, with the first row, then count the others."""

    def __init__(self, problems: Problems, shown: str):
        self.problems, self.shown = problems, shown
        self.seen: dict[tuple[int, str, str], str] = {}  # -> the prefix (the row) it was last met on
        self.more: dict[tuple[int, str, str], int] = {}

    def add(self, line: int, field: str, message: str, column: str | None, prefix: str, columns: list[str]) -> None:
        key = (line, field, message)
        if key in self.seen:
            if self.seen[key] != prefix:  # rows are counted, not each variant and copy of a row
                self.seen[key] = prefix
                self.more[key] = self.more.get(key, 0) + 1
            return
        self.seen[key] = prefix
        hint = _column_hint(column, columns) if column is not None else ""
        self.problems.add(line, field, prefix + message + hint)

    def report_rest(self) -> None:
        for (line, key, _message), more in self.more.items():
            self.problems.add_aside(line, key, f"... and the same on {more} more {plural(more, 'row')}")


def _column_hint(name: str, columns: list[str]) -> str:
    """The column a missing name was meant to be: a close one, or one of several words it begins (``Body`` of
    ``{{ Body (HTML) }}``), which a template writes ``row['Body (HTML)']``."""
    hint = close_names(name, columns)
    if hint:
        return hint
    longer = [column for column in columns if re.match(rf"{re.escape(name)}\W", column, re.IGNORECASE)]
    return f"; did you mean {{{{ row[{longer[0]!r}] }}}}?" if longer else ""


def _render(tree: Tree, context: dict[str, Any], field: str, prefix: str, number: int, missing: _MissingColumns) -> Any:
    try:
        return tree.value(context)
    except TemplateProblem as error:
        missing.add(tree.line, field, str(error), error.column, prefix, list(context["row"]))
        return REPORTED


def _columns_exist(catalogue: Catalogue, columns: list[str], shown: str, problems: Problems) -> bool:
    ok = True
    named = [(column, line, "fill_down") for column, line in catalogue.fill_down]
    named += [(condition.column, condition.line, "where") for condition in catalogue.where]
    for column, line, key in named:
        if column not in columns:
            ok = False
            listed = ", ".join(repr(name) for name in columns[:20])
            problems.add(line, key, f"{shown} has no column {column!r}{close_names(column, columns)} (it has {listed})")
    return ok
