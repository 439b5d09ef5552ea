"""A batch of JSONL lines decoded and checked as a whole: the fast way through a large JSONL manifest.

The lines are decoded with one ``json.loads`` of an array made by joining them, and each field is
checked for every job at once (see ``columns``). Anything unusual (a line that is not one valid
object, an unknown or odd-typed field, a value the per-job checks would refuse, or merely one they
would have to look at closely) makes ``checked_batch`` return None: the reader then takes the batch
line by line, through the checks that name the line and the field, exactly as if this module did
not exist. So this module may refuse a good batch, but must never pass a line the per-line checks
would not pass as the same job.

Why the joined array is exactly the lines: every top-level element must be an object, and the
array must have one element per line. A line holding more than one element would need a top-level
comma between two objects, '}' ',' '{' with only spaces, tabs or CRs between them (a line has no
'\\n'); no line may contain that (``_TWO_OBJECTS_RE``, which also refuses the rare prompt holding
it). Then the only top-level commas are the ones the join put between lines, one fewer than the
elements: each of them is at top level, so each element is exactly one line.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from itertools import chain, compress, repeat
from types import NoneType
from typing import Any

from ..models import ASPECT_RATIOS, DEFAULT_MODEL, JOB_FIELDS, QUALITIES
from .columns import ids_are_plain, prompts_are_plain, spec_prompts, specs_from_columns
from .fields import SURROGATE_RE, check_image_urls, check_metadata
from .problems import Invalid, utf16
from .records import Batch, Requests

_BOM = b"\xef\xbb\xbf"
_JSON_SPACE = b" \t\r"  # JSON's whitespace within a line; bytes.strip() would also take \x0b and \x0c
_TWO_OBJECTS_RE = re.compile(r"\}[ \t\r]*,[ \t\r]*\{")
_SURROGATE_ESCAPE_RE = re.compile(r"\\u[dD][89a-fA-F]")
_KEYS = frozenset((*JOB_FIELDS, "metadata"))
_ASPECT_RATIOS = frozenset((None, *ASPECT_RATIOS))
_QUALITIES = frozenset((None, *QUALITIES))
_SCALARS = frozenset((str, int, bool, NoneType))


def checked_batch(first: int, lines: list[bytes | None]) -> Batch | None:
    """The lines numbered from ``first`` as a Batch when every one is a valid job or blank; else None."""
    jobs, numbers, surrogates = _decoded(first, lines)
    if jobs is None or not jobs:
        return None
    columns = _columns(jobs, surrogates)
    if columns is None:
        return None
    ids, prompts, aspects, qualities, urls, metadata = columns
    return Batch(
        numbers,
        ids,
        lambda: specs_from_columns(ids, spec_prompts(prompts), aspects, qualities, urls, metadata),
        _requests(prompts, aspects, qualities, urls),
        names=True,
    )


def _decoded(first: int, lines: list[bytes | None]) -> tuple[list[dict[str, Any]] | None, range | list[int], bool]:
    """Each non-blank line's object and its line number, and whether any text in them may hold an unpaired
    surrogate; None when some line needs the per-line checks."""
    if None in lines:
        return None, [], False
    texts: list[bytes] = lines  # type: ignore[assignment]  # no None in it
    if first == 1:
        if utf16(texts[0]) is not None:
            return None, [], False
        if texts[0].startswith(_BOM):  # as the per-line checks decode line 1: utf-8-sig
            texts = [texts[0][len(_BOM) :], *texts[1:]]
    stripped = list(map(bytes.strip, texts, repeat(_JSON_SPACE)))
    numbers: range | list[int] = range(first, first + len(texts))
    if b"" in stripped:  # blank lines, skipped
        numbers = list(compress(numbers, stripped))
        stripped = list(filter(None, stripped))
    try:
        body = b"\n,".join(stripped).decode("utf-8")
    except UnicodeDecodeError:
        return None, [], False
    if _TWO_OBJECTS_RE.search(body):
        return None, [], False
    try:
        jobs = json.loads("[" + body + "]")
    except (ValueError, RecursionError):
        return None, [], False
    if len(jobs) != len(stripped) or set(map(type, jobs)) != {dict}:
        return None, [], False
    # Strictly decoded UTF-8 holds no surrogate: only a \uD800-\uDFFF escape can give one (or a pair, an emoji).
    return jobs, numbers, _SURROGATE_ESCAPE_RE.search(body) is not None


_Columns = tuple[
    list[str] | None,  # ids
    list[str],  # prompts, as written
    list[str | None] | None,  # aspect ratios
    list[str | None] | None,  # qualities
    list[tuple[str, ...]] | None,  # image URLs
    list[dict[str, Any]],  # metadata
]


def _columns(jobs: list[dict[str, Any]], surrogates: bool) -> _Columns | None:
    """The jobs' fields, column by column, when every value is one the per-job checks pass as it is."""
    keys = set(chain.from_iterable(jobs))
    if not keys <= _KEYS or "prompt" not in keys:
        return None
    try:
        prompts: list[str] = _column(jobs, "prompt")
        if set(map(type, prompts)) != {str} or not prompts_are_plain(prompts):
            raise Invalid("prompt")
        if surrogates:
            _no_surrogate(prompts)
        ids: list[str] | None = _column(jobs, "id") if "id" in keys else None
        if ids is not None:
            _plain_ids(ids)
        aspects = _column(jobs, "aspect_ratio") if "aspect_ratio" in keys else None
        if aspects is not None and not set(aspects) <= _ASPECT_RATIOS:
            raise Invalid("aspect_ratio")
        qualities = _column(jobs, "quality") if "quality" in keys else None
        if qualities is not None and not set(qualities) <= _QUALITIES:
            raise Invalid("quality")
        urls = _urls(_column(jobs, "image_urls")) if "image_urls" in keys else None
        metadata = _metadata(_column(jobs, "metadata"), surrogates) if "metadata" in keys else [{} for _ in jobs]
    except Invalid:  # the per-job checks say what, and where
        return None
    return ids, prompts, aspects, qualities, urls, metadata


def _column(jobs: list[dict[str, Any]], field: str) -> list[Any]:
    """Each job's value of ``field``; None where it is not set (missing, or null: the per-job checks' 'not set')."""
    return list(map(dict.get, jobs, repeat(field)))


def _plain_ids(ids: list[str]) -> None:
    """Every id is text that check_id passes as it is."""
    if set(map(type, ids)) != {str} or not ids_are_plain(ids):
        raise Invalid("id")


def _no_surrogate(texts: Iterable[str]) -> None:
    joined = "".join(texts)
    if not joined.isascii() and SURROGATE_RE.search(joined) is not None:
        raise Invalid("an unpaired surrogate")


def _urls(values: list[Any]) -> list[tuple[str, ...]] | None:
    """Each job's checked image URLs (() when not set); None when no job has any."""
    if values.count(None) == len(values):
        return None
    return [() if value is None else check_image_urls(value) for value in values]


def _metadata(values: list[Any], surrogates: bool) -> list[dict[str, Any]]:
    """Each job's metadata as check_metadata gives it ({} when not set)."""
    types = set(map(type, values))
    if not types <= {dict, NoneType}:
        raise Invalid("metadata")
    if NoneType in types:
        values = [{} if value is None else value for value in values]
    inner = set(map(type, chain.from_iterable(map(dict.values, values))))
    if not inner <= _SCALARS:  # nested, or numbers that may not be finite: the per-job rule, on each
        return [check_metadata(value) for value in values]
    # flat: check_metadata would give an equal copy, once no text in it is an unpaired surrogate
    if surrogates:
        strings: Iterable[Any] = chain.from_iterable(map(dict.values, values))
        _no_surrogate(strings if inner == {str} else (value for value in strings if value.__class__ is str))
    return values


def _requests(
    prompts: list[str],
    aspects: list[str | None] | None,
    qualities: list[str | None] | None,
    urls: list[tuple[str, ...]] | None,
) -> Callable[[], Requests]:
    def requests() -> Requests:
        unset = [""] * len(prompts)
        return Requests(
            DEFAULT_MODEL,
            spec_prompts(prompts),
            [value or "" for value in aspects] if aspects is not None else unset,
            [value or "" for value in qualities] if qualities is not None else unset,
            urls,
        )

    return requests
