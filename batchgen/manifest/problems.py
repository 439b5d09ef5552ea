"""Collecting what is wrong with a manifest, and saying it well.

``Problems`` keeps the first ``MAX_PROBLEMS`` problems (then only a count, so a
garbage file cannot eat memory) and raises them all at once as a
``ManifestError``. The helpers here phrase values and near-misses the same way
in every reader.
"""

from __future__ import annotations

import codecs
import difflib
from typing import Any

from ..errors import ManifestError, Problem
from ..models import JOB_FIELDS
from ..words import plural

MAX_PROBLEMS = 1000


class Invalid(Exception):
    """A value is unusable; the message says why."""


class Problems:
    """Collects problems, keeping only the first ``limit`` so memory stays bounded."""

    def __init__(self, path: str, where_kind: str, limit: int = MAX_PROBLEMS):
        self.path, self.where_kind, self.limit = path, where_kind, limit
        self.listed: list[Problem] = []
        self.unlisted = 0
        self.asides = 0  # lines listed that only add to a problem listed before them

    def add(self, line: int | None, field: str | None, message: str, where_kind: str | None = None) -> None:
        if len(self.listed) < self.limit:
            self.listed.append(Problem(self.path, line, field, message, where_kind or self.where_kind))
        else:
            self.unlisted += 1

    def add_aside(self, line: int | None, field: str | None, message: str) -> None:
        """A line that says more of a problem already added (where else it holds), not a problem of its own."""
        if len(self.listed) < self.limit:
            self.listed.append(Problem(self.path, line, field, message, self.where_kind))
            self.asides += 1

    def __bool__(self) -> bool:
        return bool(self.listed or self.unlisted)

    def raise_if_any(self) -> None:
        if not self:
            return
        listed = list(self.listed)
        if self.unlisted:
            more = f"... and {self.unlisted} more {plural(self.unlisted, 'problem')} not listed"
            listed.append(Problem(self.path, None, None, more, self.where_kind))
        raise ManifestError(listed, count=len(self.listed) - self.asides + self.unlisted)


def describe(value: Any) -> str:
    if value is None:
        return "empty"
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, (int, float)):
        return f"the number {value}"
    if isinstance(value, str):
        return show(value)
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


def show(text: str) -> str:
    return repr(text) if len(text) <= 60 else repr(text[:57]) + "..."


def closest(name: str, known: tuple[str, ...], cutoff: float = 0.6) -> str | None:
    """The known name ``name`` was probably meant as: same after case/'-' folding, or close."""
    normal = name.strip().lower().replace("-", "_").replace(" ", "_")
    if normal in known:
        return normal
    close = difflib.get_close_matches(normal, known, n=1, cutoff=cutoff)
    return close[0] if close else None


def unknown_key(key: str, known: tuple[str, ...]) -> str:
    if key in JOB_FIELDS:  # only reachable for defaults
        return f"{key!r} cannot have a default; set it on each job"
    guess = closest(key, known)
    if guess:
        return f"unknown field {key!r}; did you mean {guess!r}?"
    if "metadata" in known:
        return f"unknown field {key!r}; fields are {', '.join(known)}: put your own data under 'metadata'"
    return f"unknown key {key!r}; expected {', '.join(known)}"


def not_utf8(byte: int, *, spreadsheet: bool = True) -> str:
    how = "in Excel: Save As, 'CSV UTF-8'" if spreadsheet else "in your editor: save with the encoding UTF-8"
    return f"the file is not valid UTF-8: cannot decode byte 0x{byte:02x} here; save it as UTF-8 ({how})"


def utf16(head: bytes) -> str | None:
    """The problem of a text file that starts with a UTF-16 byte order mark (PowerShell's ``>`` writes them)."""
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "the file is UTF-16 (as PowerShell's > and Out-File write it); save it as UTF-8"
    return None


def close_names(name: str, names: list[str] | tuple[str, ...], cutoff: float = 0.7) -> str:
    """'; did you mean X?' when one of ``names`` is close to ``name`` (case-insensitively), else ''."""
    lowered = {n.lower(): n for n in names}
    if name.lower() in lowered:
        return f"; did you mean {lowered[name.lower()]!r}?"
    close = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=cutoff)
    return f"; did you mean {lowered[close[0]]!r}?" if close else ""
