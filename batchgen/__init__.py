"""batchgen: turn a manifest of prompts into a folder of images through the Runbase API, resumably.

Public names are imported on first use (PEP 562), so ``batchgen`` on the command
line starts, and installs its signal handling, before httpx and anyio load.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "AccountError": "errors",
    "ApiError": "errors",
    "BatchgenError": "errors",
    "LedgerBusy": "errors",
    "LedgerError": "errors",
    "ManifestError": "errors",
    "OutputError": "errors",
    "Problem": "errors",
    "UsageError": "errors",
    "JobSpec": "models",
    "Manifest": "manifest",
    "read_manifest": "manifest",
    "RunInfo": "models",
    "BatchConfig": "config",
    "BatchResult": "outcomes",
    "ExitCode": "exitcodes",
    "run_batch": "runner",
    "run_batch_async": "runner",
}
__all__ = [*sorted(_EXPORTS), "__version__"]

if TYPE_CHECKING:  # what type checkers and editors see; tests/test_package.py keeps it equal to _EXPORTS
    from .config import BatchConfig as BatchConfig
    from .errors import (
        AccountError as AccountError,
        ApiError as ApiError,
        BatchgenError as BatchgenError,
        LedgerBusy as LedgerBusy,
        LedgerError as LedgerError,
        ManifestError as ManifestError,
        OutputError as OutputError,
        Problem as Problem,
        UsageError as UsageError,
    )
    from .exitcodes import ExitCode as ExitCode
    from .manifest import (
        Manifest as Manifest,
        read_manifest as read_manifest,
    )
    from .models import (
        JobSpec as JobSpec,
        RunInfo as RunInfo,
    )
    from .outcomes import BatchResult as BatchResult
    from .runner import (
        run_batch as run_batch,
        run_batch_async as run_batch_async,
    )


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'batchgen' has no attribute {name!r}")
