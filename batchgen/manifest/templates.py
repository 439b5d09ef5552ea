"""Jinja2 templates over catalogue rows, in a sandbox that reaches nothing but the row.

Each template is compiled once and rendered per row in a
``jinja2.sandbox.SandboxedEnvironment`` with ``StrictUndefined`` (a missing
column is an error, never an empty string) and autoescape off (prompts are not
HTML). The environment has no globals (no ``range``, ``lipsum``, ``dict``...),
no ``random`` filter (ids must be the same on every run), and caps ``*`` and
``**`` so a template cannot build a gigabyte string. Filters added for
catalogue data:

- ``slug``: ASCII letters and digits, lower case, '-' between words: ``THR/1005`` → ``thr-1005``
- ``strip_html``: text without tags, entities decoded, blanks collapsed
- ``first``: the first item of a ``, ``-separated cell (``Images``, ``Categories``); of a list, its first item
- ``truncate(n, end="...")``: at most ``n`` characters, cut at a word boundary (``killwords=True``: anywhere)
"""

from __future__ import annotations

import functools
import html
import operator
import re
import unicodedata
from collections.abc import Callable
from typing import Any

import jinja2
from jinja2.exceptions import SecurityError
from jinja2.sandbox import SandboxedEnvironment

from .problems import close_names

MAX_REPEAT = 100_000  # characters or items a '*' may make
MAX_EXPONENT = 1000

_UNKNOWN_FILTER_RE = re.compile(r"No filter named '([^']*)'")
_TAG_RE = re.compile(r"<[^>]*>")
# {{ Variant SKU }}, {{ Body (HTML) }}: a column name of several words written as a variable (a syntax error)
_SPACED_NAME_RE = re.compile(r"\{\{-?\s*([A-Za-z_][\w]*(?:[ \t]+[\w()\-./?#]+)+?)\s*-?(?:\||\}\})")
_JINJA_WORDS = frozenset({"if", "else", "and", "or", "not", "in", "is"})
_BLANKS_RE = re.compile(r"\s+")
_NOT_SLUG_RE = re.compile(r"[^a-z0-9]+")
RESERVED = frozenset({"row", "variant", "sample", "id"})  # template variables that are not columns


class Row(dict[str, Any]):
    """One catalogue row: column name -> cell value."""


class TemplateProblem(Exception):
    """A template cannot be compiled or rendered; the message says why, ``column`` names a missing one."""

    def __init__(self, message: str, column: str | None = None):
        super().__init__(message)
        self.column = column


class _MissingValue(jinja2.UndefinedError):
    def __init__(self, message: str, name: str | None):
        super().__init__(message)
        self.name = name


class _Strict(jinja2.StrictUndefined):
    """StrictUndefined whose error says which column or variable is missing."""

    __slots__ = ()

    def _fail_with_undefined_error(self, *args: Any, **kwargs: Any) -> Any:
        name, owner = self._undefined_name, self._undefined_obj
        if self._undefined_hint:
            raise _MissingValue(self._undefined_hint, None)
        if isinstance(owner, Row):
            raise _MissingValue(f"the row has no column {name!r}", name)
        if owner is jinja2.utils.missing:
            raise _MissingValue(f"{name!r} is not a column of the rows nor a variable", name)
        if isinstance(owner, dict):
            raise _MissingValue(f"there is no variant {name!r}", None)
        raise _MissingValue(f"{type(owner).__name__} has no attribute {name!r}", None)


# StrictUndefined binds its dunders (__str__, __iter__, __eq__...) to the base method: rebind them to ours.
for _name, _value in list(vars(jinja2.StrictUndefined).items()) + list(vars(jinja2.Undefined).items()):
    if _value is jinja2.Undefined._fail_with_undefined_error and _name != "_fail_with_undefined_error":
        setattr(_Strict, _name, _Strict._fail_with_undefined_error)


def slug(value: Any) -> str:
    text = unicodedata.normalize("NFKD", str(value)).encode("ascii", "ignore").decode().lower()
    return _NOT_SLUG_RE.sub("-", text).strip("-")


def strip_html(value: Any) -> str:
    return _BLANKS_RE.sub(" ", html.unescape(_TAG_RE.sub(" ", str(value)))).strip()


def first(value: Any) -> Any:
    if isinstance(value, str):
        return value.split(",", 1)[0].strip()
    if isinstance(value, (list, tuple)):
        return value[0] if value else ""
    return value


def truncate(value: Any, length: int = 255, killwords: bool = False, end: str = "...", leeway: int = 0) -> str:
    """Jinja2's truncate, called the same way, but never longer than ``length`` (Jinja2's allows a leeway)."""
    text = str(value)
    if len(text) <= length:
        return text
    room = max(0, length - len(end))
    cut = text[:room]
    if not killwords and " " in cut and text[room : room + 1] not in ("", " "):
        cut = cut.rsplit(" ", 1)[0]
    return cut.rstrip() + end


def _check_sizes(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Refuse a whole-number argument that would make a huge value (a width, a count)."""
    for value in (*args, *kwargs.values()):
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_REPEAT:
            raise SecurityError(f"arguments above {MAX_REPEAT:,} are not allowed")


def _capped(function: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(function)  # keeps Jinja2's pass_context/pass_environment marks
    def filter_with_cap(*args: Any, **kwargs: Any) -> Any:
        _check_sizes(args, kwargs)
        return function(*args, **kwargs)

    return filter_with_cap


class _Environment(SandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**"})

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        _check_sizes(args, kwargs)  # "x".ljust(10**9), "x".center(...)
        return super().call(__context, __obj, *args, **kwargs)

    def call_binop(self, context: Any, operator_name: str, left: Any, right: Any) -> Any:
        if operator_name == "**":
            if isinstance(right, (int, float)) and abs(right) > MAX_EXPONENT:
                raise SecurityError(f"exponents above {MAX_EXPONENT} are not allowed")
            return operator.pow(left, right)
        for sequence, times in ((left, right), (right, left)):
            if isinstance(sequence, (str, list, tuple)) and isinstance(times, int):
                if len(sequence) * times > MAX_REPEAT:
                    raise SecurityError(f"'*' would make more than {MAX_REPEAT:,} characters or items")
        return operator.mul(left, right)


def environment() -> SandboxedEnvironment:
    env = _Environment(undefined=_Strict, autoescape=False, keep_trailing_newline=False)
    env.globals.clear()
    del env.filters["random"]
    env.filters.update(slug=slug, strip_html=strip_html, first=first, truncate=truncate)
    env.filters.update({name: _capped(function) for name, function in env.filters.items()})  # center(10**9)...
    return env


_ENV: SandboxedEnvironment | None = None


def compile_template(text: str) -> Callable[[dict[str, Any]], str]:
    """A function rendering ``text`` with a context; raises TemplateProblem for bad syntax or filters."""
    global _ENV
    if "{" not in text:
        return lambda context: text
    if _ENV is None:
        _ENV = environment()
    try:
        template = _ENV.from_string(text)
    except jinja2.TemplateSyntaxError as error:  # an unknown filter or test is found at compile time too
        message = error.message or "cannot parse"
        if unknown := _UNKNOWN_FILTER_RE.match(message):
            name = unknown.group(1)
            filters = sorted(_ENV.filters)
            raise TemplateProblem(
                f"unknown filter {name!r}{close_names(name, filters, cutoff=0.6)} (catalogue filters: slug, "
                "strip_html, first, truncate; and Jinja2's own, such as upper, lower, replace, trim, default)"
            ) from None
        raise TemplateProblem(f"template syntax error: {message}{_spaced_column_hint(text)}") from None

    def render(context: dict[str, Any]) -> str:
        try:
            return template.render(context)
        except _MissingValue as error:
            raise TemplateProblem(str(error), error.name) from None
        except SecurityError as error:
            raise TemplateProblem(f"templates reach only the row's values: {error}") from None
        except jinja2.TemplateError as error:
            raise TemplateProblem(f"template error: {error.message or error}") from None
        except (TypeError, ValueError, ArithmeticError, LookupError, AttributeError, RecursionError) as error:
            raise TemplateProblem(f"template error: {type(error).__name__}: {error}") from None

    return render


def _spaced_column_hint(text: str) -> str:
    """For ``{{ Variant SKU }}``: how a column whose name is not one word is written."""
    for match in _SPACED_NAME_RE.finditer(text):
        name = match.group(1).strip()
        if not _JINJA_WORDS & set(name.split()):
            return f"; a column whose name has spaces or punctuation is written {{{{ row[{name!r}] }}}}"
    return ""


def row_context(row: Row) -> dict[str, Any]:
    """The variables a template sees: each column whose name is an identifier, and ``row`` for every column."""
    context: dict[str, Any] = {name: value for name, value in row.items() if name.isidentifier()}
    for name in RESERVED:
        context.pop(name, None)
    context["row"] = row
    return context
