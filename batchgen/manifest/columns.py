"""A batch of jobs held column by column: the checks and the specs that CSV and JSONL batches share.

A reader that has a stretch of jobs at hand checks each field for all of them at once with
a few C-speed operations (joins, sets, ``map``). These checks may say no to a valid batch
(it then goes through the per-job checks, which say what is wrong and where) but never yes
to a batch the per-job checks would refuse.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from ..models import DEFAULT_MODEL, LAST_RUN_NAME, MAX_JOB_ID_LENGTH, MAX_PROMPT_LENGTH, JobSpec

_OWN_STEM = LAST_RUN_NAME.rpartition(".")[0]  # check_id refuses it, in any letter case
_DEVICE_PREFIXES = ("\ncon", "\nprn", "\naux", "\nnul", "\ncom", "\nlpt")
_DEVICE_LINE_RE = re.compile(r"(?m)^(?:con|prn|aux|nul|com[0-9]|lpt[0-9])(?:\.[^\n]*)?$")


def ids_are_plain(ids: list[str]) -> bool:
    """True when every id passes check_id: ASCII letters, digits, '.', '_', '-', not leading '.'/'-', no device name,
    not the name of batchgen's own file (a line break inside an id, which a quoted CSV cell may hold, says no)."""
    joined = "\n" + "\n".join(ids)
    if joined.count("\n") != len(ids) or not joined.isascii() or "" in ids or max(map(len, ids)) > MAX_JOB_ID_LENGTH:
        return False
    if "\n." in joined or "\n-" in joined:
        return False
    if not joined.replace("\n", "").replace("-", "").replace(".", "").replace("_", "").isalnum():
        return False
    lowered = joined.lower()
    if _OWN_STEM in lowered:
        return False
    return not (any(prefix in lowered for prefix in _DEVICE_PREFIXES) and _DEVICE_LINE_RE.search(lowered))


def prompts_are_plain(prompts: list[str]) -> bool:
    """True when no prompt is empty, blank, too long or holds a NUL (unpaired surrogates are the caller's)."""
    if not all(prompts) or any(map(str.isspace, prompts)) or max(map(len, prompts)) > MAX_PROMPT_LENGTH:
        return False
    return "\x00" not in "".join(prompts)


def spec_prompts(prompts: list[str]) -> list[str]:
    """Prompts as the spec holds them: stripped and, as check_prompt does, with LF line ends (CRLF file = LF file)."""
    stripped = list(map(str.strip, prompts))
    if "\r" in "".join(stripped):
        stripped = [prompt.replace("\r\n", "\n").replace("\r", "\n") for prompt in stripped]
    return stripped


def specs_from_columns(
    ids: Sequence[str] | None,
    prompts: list[str],
    aspects: Sequence[str | None] | None,
    qualities: Sequence[str | None] | None,
    urls: Sequence[tuple[str, ...]] | None,
    metadata: Sequence[dict[str, Any]],
) -> list[JobSpec]:
    """The jobs of checked columns, built as JobBuilder.build builds each (an unset value is '' or None).

    ``prompts`` as ``spec_prompts`` gives them; ``ids`` None: each job_id is '' (a generated id comes later)."""
    job_ids = ids if ids is not None else [""] * len(prompts)
    specs = []
    for position, prompt in enumerate(prompts):
        api_input: dict[str, Any] = {"prompt": prompt}
        if aspects is not None and aspects[position]:
            api_input["aspect_ratio"] = aspects[position]
        if qualities is not None and qualities[position]:
            api_input["quality"] = qualities[position]
        if urls is not None and urls[position]:
            api_input["image_urls"] = list(urls[position])
        specs.append(JobSpec(job_ids[position], api_input, DEFAULT_MODEL, metadata[position]))
    return specs
