"""batchgen: turn a manifest of prompts into a folder of images through the Runbase API, resumably."""

__version__ = "0.1.0"

from .errors import (  # noqa: E402
    AccountError,
    ApiError,
    BatchgenError,
    LedgerBusy,
    LedgerError,
    ManifestError,
    OutputError,
    Problem,
    UsageError,
)
from .models import JobSpec, RunInfo  # noqa: E402
from .runner import BatchConfig, BatchResult, ExitCode, run_batch, run_batch_async  # noqa: E402

__all__ = [
    "AccountError",
    "ApiError",
    "BatchConfig",
    "BatchResult",
    "BatchgenError",
    "ExitCode",
    "JobSpec",
    "LedgerBusy",
    "LedgerError",
    "ManifestError",
    "OutputError",
    "Problem",
    "RunInfo",
    "UsageError",
    "__version__",
    "run_batch",
    "run_batch_async",
]
