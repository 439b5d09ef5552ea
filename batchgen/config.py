"""``BatchConfig``, everything a batch run takes, and the checks its values pass before anything is opened:
the numbers, the base URL, the API key, a price for every job when --max-credits caps the spending."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx

from .api import ALLOW_HTTP, DEFAULT_BASE_URL, check_base_url, check_key_stays_private
from .errors import ApiError, Unauthorized, UsageError
from .events import Events
from .manifest import iter_jobs
from .models import LEDGER_NAME
from .pricing import job_prices
from .scheduler import NOT_FOUND_GRACE
from .words import plural

SIMULATED_BASE_URL = "http://api.runbase.test/api/v1"


@dataclass(frozen=True)
class BatchConfig:
    """Everything a batch run takes. ``api_key`` is kept out of ``repr``."""

    manifest: Path
    output_dir: Path = Path("output")
    ledger_path: Path | None = None  # default: output_dir / batchgen.sqlite
    concurrency: int = 8
    rate: float | None = None  # creates per second, if the account's limit is known
    max_attempts: int = 3
    base_url: str | None = None  # default: $RUNBASE_BASE_URL or the public API
    api_key: str | None = field(default=None, repr=False)  # default: $RUNBASE_API_KEY
    simulate: bool = False
    retry_failed: bool = False
    timeout: float = 30.0  # seconds to wait for one API answer
    run_timeout: float = 900.0  # a run still unfinished after this long is tried again
    max_download_bytes: int = 100 * 1024 * 1024
    backoff_base: float = 0.5  # seconds before the first retry of a transient failure; doubles after
    progress: str = "auto"  # auto | bar | lines | none
    handle_signals: bool = False  # SIGINT/SIGTERM stop the batch cleanly (the CLI sets this)
    transport: httpx.AsyncBaseTransport | None = field(default=None, repr=False, compare=False)
    simulator_options: dict[str, Any] = field(default_factory=dict, compare=False)
    sync_head_start: float = 0.5  # seconds of manifest reading before the first create may go out
    allow_unknown_files: bool = False  # write into a folder holding images batchgen has no record of
    reuse: bool = True  # give a job an identical request's image instead of paying for a new run
    reuse_index: Path | None = None  # default: $BATCHGEN_CACHE_DIR or the user's cache folder, reuse.sqlite
    max_runs: int | None = None  # runs this invocation may create at most (exact, whatever the concurrency)
    max_credits: float | None = None  # credits this invocation may spend at most (needs prices)
    prices: Mapping[str, float] = field(default_factory=dict)  # credits per run: {"high": 2, "medium": 1, ...}
    sidecar: bool = False  # a JSON file next to each image: job id, prompt, options, run id, metadata
    check_references: bool = True  # ask each reference image URL once before paying for its job
    not_found_grace: float = NOT_FOUND_GRACE  # seconds a known run may answer 404 before it is given up
    events: Events | None = field(default=None, repr=False, compare=False)  # events.py: logs, the why-waiting line

    def __post_init__(self) -> None:
        # Python callers pass strings as often as Paths.
        object.__setattr__(self, "manifest", Path(self.manifest))
        object.__setattr__(self, "output_dir", Path(self.output_dir))
        if self.ledger_path is not None:
            object.__setattr__(self, "ledger_path", Path(self.ledger_path))
        if self.reuse_index is not None:
            object.__setattr__(self, "reuse_index", Path(self.reuse_index))

    @property
    def ledger_file(self) -> Path:
        return self.ledger_path or self.output_dir / LEDGER_NAME


def resolve(config: BatchConfig) -> BatchConfig:
    if config.concurrency < 1:
        raise UsageError("--concurrency must be at least 1")
    if config.max_attempts < 1:
        raise UsageError("--max-attempts must be at least 1")
    if config.rate is not None and config.rate <= 0:
        raise UsageError("--rate must be a positive number of creates per second")
    if config.max_runs is not None and config.max_runs < 1:
        raise UsageError("--max-runs must be at least 1")
    if config.max_credits is not None and not config.max_credits > 0:
        raise UsageError("--max-credits must be a positive number")
    if config.max_credits is not None:
        _check_priced(config)
    if config.simulate:
        base_url = config.base_url or SIMULATED_BASE_URL
    else:
        base_url = config.base_url or os.environ.get("RUNBASE_BASE_URL") or DEFAULT_BASE_URL
    try:
        check_base_url(base_url)
        if not config.simulate and config.transport is None:  # a transport given is a test's, in-process
            check_key_stays_private(base_url, allow=os.environ.get(ALLOW_HTTP) == "1")
    except ApiError as exc:
        raise UsageError(str(exc)) from None
    return replace(config, base_url=base_url)


def _check_priced(config: BatchConfig) -> None:
    """--max-credits needs every job's price: say which is missing before anything is sent."""
    prices = job_prices(config.manifest, config.prices)
    if not prices:
        raise UsageError(
            "--max-credits needs the credits per run: give --price (e.g. high=2,medium=1) or 'pricing:' in the manifest"
        )
    unpriced = Counter(
        f"{job.model} quality {job.input.get('quality', '(not set)')}"
        for job in iter_jobs(config.manifest)
        if prices.of(job) is None
    )
    if unpriced:
        kinds = ", ".join(f"{kind} ({n} {plural(n, 'job')})" for kind, n in unpriced.most_common(3))
        raise UsageError(f"--max-credits: no price for {kinds}; add them to --price (or a 'default=' price)")


def api_key_of(config: BatchConfig) -> str:
    if config.simulate and config.transport is None:
        return "simulated"  # the in-process simulator never sees a real key
    given = config.api_key if config.api_key is not None else os.environ.get("RUNBASE_API_KEY")
    key = (given or "").strip()
    if not key:
        state = "is not set" if given is None else "is empty"
        raise Unauthorized(f"RUNBASE_API_KEY {state}: export your Runbase API key, or use --simulate")
    if key.lower().startswith("bearer "):
        raise Unauthorized("RUNBASE_API_KEY starts with 'Bearer ': set it to the key alone (batchgen adds 'Bearer ')")
    if any(ch.isspace() or not ch.isprintable() for ch in key):
        raise Unauthorized("RUNBASE_API_KEY contains spaces or control characters; check how it was set")
    if not key.isascii():  # an HTTP header cannot carry it; said without quoting any of it
        raise Unauthorized("RUNBASE_API_KEY contains a character that is not ASCII; check how it was set")
    return key
