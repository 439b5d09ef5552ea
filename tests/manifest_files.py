"""Helpers shared by the manifest tests: a file written exactly as given, the problems a manifest is refused with."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchgen.errors import ManifestError, Problem
from batchgen.manifest import load_jobs


def write(folder: Path, name: str, content: str | bytes) -> Path:
    """Write ``content`` to ``folder/name`` byte for byte (text as UTF-8, line endings untouched)."""
    path = folder / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8", newline="")
    return path


def problems_of(path: Path) -> list[Problem]:
    """The problems loading ``path`` is refused with (it must be refused)."""
    with pytest.raises(ManifestError) as info:
        load_jobs(path)
    return info.value.problems
