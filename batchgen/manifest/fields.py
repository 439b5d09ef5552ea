"""Field rules: what each job field may hold, and the value it becomes.

Each ``check_*`` takes a raw value (from YAML, JSON, a CSV cell or a rendered
template) and returns the clean value or raises ``Invalid`` with a message that
says why. They are pure: no I/O, no state.
"""

from __future__ import annotations

import datetime
import difflib
import json
import math
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from ..models import ASPECT_RATIOS, LAST_RUN_NAME, MAX_JOB_ID_LENGTH, MAX_PROMPT_LENGTH, OWN_NAMES, QUALITIES
from .problems import Invalid, describe, show

MAX_NESTING = 32  # of YAML collections and metadata values; real manifests need a handful
MAX_INPUT_BYTES = 1 << 20  # the JSON of one job's input for a model batchgen passes through
MAX_FILENAME_LENGTH = 240
MAX_FILENAME_SEGMENTS = 8
MAX_SEGMENT_LENGTH = 120
# What outputs.extension_for can give, and a --sidecar's: a folder named like one of these could clash with a file.
OUTPUT_EXTENSIONS = ("png", "jpg", "jpeg", "webp", "gif", "avif", "bin", "json")

ID_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
WINDOWS_DEVICE_RE = re.compile(r"(?i)(con|prn|aux|nul|com[0-9]|lpt[0-9])(\..*)?")  # CON, lpt1.txt...
SURROGATE_RE = re.compile(r"[\ud800-\udfff]")
URL_SEPARATOR_RE = re.compile(r"[\s,|]+")
MODEL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._:-]*")
_BAD_URL_CHAR_RE = re.compile(r"[\s\x00-\x1f\x7f\ud800-\udfff]")
_SEGMENT_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
# A job saved as last-run.png would write its --sidecar to last-run.json, the run's summary.
_OWN_FILE_STEM_RE = re.compile("(?i)" + re.escape(LAST_RUN_NAME.rpartition(".")[0]))
_SUMMARY_CLASH = f"its --sidecar file would be {LAST_RUN_NAME}, each run's summary"
_ID_HINT = (
    "; to use values such as SKUs with '/' or spaces, make ids in a YAML manifest that reads the file with "
    "'rows:' and sets id: \"{{ SKU | slug }}\""
)


def check_id(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    elif not isinstance(value, str):
        raise Invalid(f"id must be text, not {describe(value)}")
    if not value:
        raise Invalid("id is empty; leave it out to get a generated id")
    if len(value) > MAX_JOB_ID_LENGTH:
        raise Invalid(f"id is {len(value)} characters; the limit is {MAX_JOB_ID_LENGTH}")
    if ID_RE.fullmatch(value) is None:
        hint = _ID_HINT if value.isprintable() and "\x00" not in value else ""
        raise Invalid(
            f"id {show(value)} is not allowed: ids become file names, so use only ASCII letters, "
            f"digits, '.', '_' and '-', and do not start with '.' or '-'{hint}"
        )
    if (value[3:4] in ("", ".") or value[4:5] in ("", ".")) and WINDOWS_DEVICE_RE.fullmatch(value):
        raise Invalid(f"id {show(value)} is a reserved device name on Windows")
    if _OWN_FILE_STEM_RE.fullmatch(value):
        raise Invalid(f"id {show(value)} is taken: {_SUMMARY_CLASH}")
    return str(value)


def check_prompt(value: Any) -> str:
    if not isinstance(value, str):
        raise Invalid(f"prompt must be text, not {describe(value)}")
    prompt = value.strip()
    if "\r" in prompt:  # a CRLF file must give the same prompt, hence the same spec hash, as an LF one
        prompt = prompt.replace("\r\n", "\n").replace("\r", "\n")
    if not prompt:
        raise Invalid("prompt is empty")
    if len(prompt) > MAX_PROMPT_LENGTH:
        raise Invalid(f"prompt is {len(prompt)} characters; the limit is {MAX_PROMPT_LENGTH}")
    if "\x00" in prompt:
        raise Invalid("prompt contains a NUL character")
    if not prompt.isascii() and SURROGATE_RE.search(prompt):
        raise Invalid("prompt contains an unpaired surrogate, which is not a character")
    return prompt


def check_aspect_ratio(value: Any) -> str:
    if value.__class__ is str and value in ASPECT_RATIOS:
        return str(value)
    raise Invalid(not_a_choice("aspect_ratio", value, ASPECT_RATIOS))


def check_quality(value: Any) -> str:
    if value.__class__ is str and value in QUALITIES:
        return str(value)
    raise Invalid(not_a_choice("quality", value, QUALITIES))


def not_a_choice(field: str, value: Any, choices: tuple[str, ...]) -> str:
    message = f"{field} must be one of {', '.join(choices)}, not {describe(value)}"
    if isinstance(value, str):
        normal = value.strip().lower().replace("x", ":").replace("/", ":")
        close = difflib.get_close_matches(normal, choices, n=1, cutoff=0.75)
        if close:
            message += f"; did you mean {close[0]!r}?"
    return message


def split_urls(text: str) -> tuple[str, ...]:
    """URLs from one cell: separated by ', ' (as WooCommerce exports them), '|' or whitespace."""
    return tuple(url for url in URL_SEPARATOR_RE.split(text) if url)


def check_image_urls(value: Any) -> tuple[str, ...]:
    urls = (value,) if isinstance(value, str) else value
    if not isinstance(urls, (list, tuple)):
        raise Invalid(f"image_urls must be a list of URLs, not {describe(value)}")
    bad = [f"{describe(url)} {why}" for url in urls if (why := url_problem(url))]
    if bad:
        raise Invalid("image_urls: " + "; ".join(bad))
    return tuple(urls)


def url_problem(url: Any) -> str | None:
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


def check_metadata(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise Invalid(f"metadata must be a mapping of names to values, not {describe(value)}")
    plain_value: dict[str, Any] = plain(value, "metadata", 1)
    return plain_value


def check_input(value: Any) -> dict[str, Any]:
    """The ``input`` of a model batchgen does not know: any JSON object, passed through as written."""
    if not isinstance(value, dict):
        raise Invalid(f"input must be a mapping of the model's parameters, not {describe(value)}")
    if not value:
        raise Invalid("input is empty; give the model's parameters, e.g. input: {prompt: ...}")
    checked: dict[str, Any] = plain(value, "input", 1)
    size = len(json.dumps(checked, ensure_ascii=False).encode())
    if size > MAX_INPUT_BYTES:
        raise Invalid(f"input is {size:,} bytes as JSON; the limit is {MAX_INPUT_BYTES:,}")
    return checked


def check_filename(value: Any) -> str:
    """A relative output name without extension: safe segments joined by '/'; never absolute, never '..'."""
    if not isinstance(value, str):
        raise Invalid(f"filename must be text, not {describe(value)}")
    if not value:
        raise Invalid("filename is empty")
    if len(value) > MAX_FILENAME_LENGTH:
        raise Invalid(f"filename is {len(value)} characters; the limit is {MAX_FILENAME_LENGTH}")
    if value.startswith("/") or "\\" in value:
        raise Invalid(f"filename {show(value)} must be relative, with '/' between folders")
    segments = value.split("/")
    if len(segments) > MAX_FILENAME_SEGMENTS:
        raise Invalid(f"filename {show(value)} has more than {MAX_FILENAME_SEGMENTS - 1} folders")
    for number, segment in enumerate(segments, 1):
        if segment in ("", ".", ".."):
            raise Invalid(f"filename {show(value)} has an empty, '.' or '..' part")
        if len(segment) > MAX_SEGMENT_LENGTH or _SEGMENT_RE.fullmatch(segment) is None:
            raise Invalid(
                f"filename {show(value)}: part {show(segment)} may hold only ASCII letters, digits, '.', '_' "
                f"and '-' (not starting with '.' or '-'), at most {MAX_SEGMENT_LENGTH} characters; "
                "use the slug filter, e.g. {{ Name | slug }}"
            )
        if WINDOWS_DEVICE_RE.fullmatch(segment):
            raise Invalid(f"filename {show(value)}: {show(segment)} is a reserved device name on Windows")
        if number == 1 and len(segments) > 1 and segment.lower() in OWN_NAMES:
            raise Invalid(f"filename {show(value)}: folder {show(segment)} is named like batchgen's own file")
        if len(segments) == 1 and _OWN_FILE_STEM_RE.fullmatch(segment):
            raise Invalid(f"filename {show(value)} is taken: {_SUMMARY_CLASH}")
        if number < len(segments) and segment.lower().rsplit(".", 1)[-1] in OUTPUT_EXTENSIONS and "." in segment:
            raise Invalid(f"filename {show(value)}: folder {show(segment)} is named like an image file or a sidecar")
    return value


def plain(value: Any, where: str, depth: int) -> Any:
    """A JSON-compatible copy of ``value`` (dates become ISO strings), or ``Invalid``."""
    if depth > MAX_NESTING:
        raise Invalid(f"{where} is nested more than {MAX_NESTING} levels deep")
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, str):
        if not value.isascii() and SURROGATE_RE.search(value):
            raise Invalid(f"{where} contains an unpaired surrogate, which is not a character")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise Invalid(f"{where} is {value}, which JSON cannot store")
        return value
    if isinstance(value, datetime.date):  # and datetime, its subclass
        return value.isoformat()
    if isinstance(value, (list, tuple)):
        return [plain(item, f"{where}[{index}]", depth + 1) for index, item in enumerate(value)]
    if isinstance(value, dict):
        for key in value:
            if not isinstance(key, str):
                raise Invalid(f"{where} has the key {describe(key)}; keys must be text")
        return {key: plain(item, f"{where}.{key}", depth + 1) for key, item in value.items()}
    raise Invalid(f"{where} holds {describe(value)}, which JSON cannot store")


def check_model(value: Any) -> str:
    if not isinstance(value, str) or MODEL_RE.fullmatch(value) is None:
        raise Invalid(f"model must be a Runbase model name such as 'openai/gpt-image-1.5', not {describe(value)}")
    return value


def check_sample(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise Invalid(f"sample must be a whole number from 1, not {describe(value)}")


CHECKS: dict[str, Callable[[Any], Any]] = {
    "sample": check_sample,
    "id": check_id,
    "prompt": check_prompt,
    "aspect_ratio": check_aspect_ratio,
    "quality": check_quality,
    "image_urls": check_image_urls,
    "metadata": check_metadata,
    "input": check_input,
    "filename": check_filename,
}
