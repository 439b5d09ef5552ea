"""Data only: job specs, states, run snapshots and the model's input schema. No I/O.

Types that more than one module passes around live here, so that modules depend
on this one and not on each other (``outputs`` does not import ``ledger``,
``progress`` does not import ``scheduler``).
"""

from __future__ import annotations

import enum
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

LEDGER_NAME = "batchgen.sqlite"  # the ledger's file in the output folder
LAST_RUN_NAME = "last-run.json"  # each run's summary, in the output folder
REPORT_NAME = "report.html"  # the review page `batchgen report` writes, in the output folder
# Beside the ledger: sqlite's (a folder named like its rollback journal stops sqlite opening the ledger
# at all) and the run lock. batchgen.ledger.store opens and checks these.
LEDGER_SIDE_FILES = ("-wal", "-shm", "-journal", ".lock")
# Names batchgen gives files of its own at the top of the output folder (the ledger with its side files):
# no job may take one for a folder, nor save a file under one (compared ignoring case).
OWN_NAMES = frozenset(
    name.lower()
    for name in (LEDGER_NAME, *(LEDGER_NAME + side for side in LEDGER_SIDE_FILES), LAST_RUN_NAME, REPORT_NAME)
)
DEFAULT_BASE_URL = "https://runbase.net/api/v1"  # the API's address when none is given

DEFAULT_MODEL = "openai/gpt-image-1.5"
ASPECT_RATIOS = ("1:1", "3:2", "2:3")
QUALITIES = ("medium", "high")
# The input fields of DEFAULT_MODEL a job may set; in a CSV any other column is metadata.
JOB_FIELDS = ("id", "prompt", "aspect_ratio", "quality", "image_urls")
INPUT_FIELDS = ("prompt", "aspect_ratio", "quality", "image_urls")
MAX_JOB_ID_LENGTH = 128
MAX_PROMPT_LENGTH = 32_000

# Bump the prefix when the hashed form changes, so old ledgers see every job as changed
# rather than silently matching a hash computed another way.
SPEC_HASH_PREFIX = "v1:"

# Run statuses. The provider documents only "succeeded"; anything not known to be
# terminal is treated as still running (assumption, see runbase-api.md).
SUCCEEDED_STATUSES = frozenset({"succeeded"})
FAILED_STATUSES = frozenset({"failed", "error", "canceled", "cancelled"})


class JobState(enum.StrEnum):
    """Where a job stands in the ledger."""

    PENDING = "pending"  # waiting for a run (again)
    RUNNING = "running"  # an attempt is open: being created or created and not finished
    SUCCEEDED = "succeeded"  # its files are in the output folder
    FAILED = "failed"  # failed for good (until retried)


class AttemptStatus(enum.StrEnum):
    """What became of one attempt at a run."""

    CREATING = "creating"  # committed before the create request; on the wire until answered
    RUNNING = "running"  # the create answered with a run id
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # the run failed, vanished, or its outputs could not be saved
    UNKNOWN = "unknown"  # the create was sent and its answer never came: a possible double charge
    REJECTED = "rejected"  # the API refused the job's input (400): no run was made
    SUPERSEDED = "superseded"  # the job's spec changed while the run was open
    REUSED = "reused"  # an identical request's image was used: no run of its own
    ADOPTED = "adopted"  # the image was already in the output folder, recorded there as this job's


OPEN_ATTEMPTS = (AttemptStatus.CREATING, AttemptStatus.RUNNING)


@dataclass(frozen=True, slots=True)
class JobSpec:
    """One image to generate, as the manifest asks for it.

    ``input`` is the create request's ``input`` object exactly as it is sent.
    ``sample`` numbers the copies a manifest asks for with ``count: N``: it is not
    sent, but makes copies 2..N distinct jobs with distinct fingerprints, where
    identical requests would otherwise be generated once. ``filename`` is the
    output's name without extension, relative to the output folder (default: the
    job id); changing it does not change what is generated.
    """

    job_id: str
    input: dict[str, Any]
    model: str = DEFAULT_MODEL
    metadata: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    sample: int = 1
    filename: str | None = None
    # The canonical JSON of what is hashed, made once: hashing and recording a spec are the
    # manifest sync's main cost at a million jobs.
    _canonical: str | None = field(default=None, init=False, compare=False, hash=False, repr=False)

    @property
    def prompt(self) -> str:
        prompt = self.input.get("prompt")
        return prompt if isinstance(prompt, str) else ""

    @property
    def stem(self) -> str:
        """The output file name without extension, relative to the output folder."""
        return self.filename or self.job_id

    def request_body(self) -> dict[str, Any]:
        """The create request's JSON body."""
        return {"model": self.model, "input": self.input}

    def canonical(self) -> str:
        """Model, input (and sample, when not 1) as sorted, compact JSON: what ``spec_hash`` hashes."""
        if self._canonical is None:
            object.__setattr__(self, "_canonical", canonical_spec(self.model, self.input, self.sample))
        assert self._canonical is not None
        return self._canonical

    def spec_hash(self) -> str:
        """A stable fingerprint of what the API is asked for; metadata and file name are not part of it."""
        return SPEC_HASH_PREFIX + hashlib.sha256(self.canonical().encode("utf-8")).hexdigest()

    def to_record(self) -> tuple[str, str]:
        """``(spec_json, metadata_json)``, as the ledger stores the job."""
        spec_json = self.canonical()
        if self.filename is not None:
            spec_json = spec_json[:-1] + ',"filename":' + json.dumps(self.filename, ensure_ascii=False) + "}"
        metadata_json = json.dumps(self.metadata, ensure_ascii=False, default=str) if self.metadata else "{}"
        return spec_json, metadata_json

    @classmethod
    def from_record(cls, job_id: str, spec_json: str, metadata_json: str = "{}") -> JobSpec:
        spec = json.loads(spec_json)
        return cls(
            job_id=job_id,
            input=spec["input"],
            model=spec["model"],
            metadata=json.loads(metadata_json) if metadata_json != "{}" else {},
            sample=spec.get("sample", 1),
            filename=spec.get("filename"),
        )


def image_input(
    prompt: str,
    aspect_ratio: str | None = None,
    quality: str | None = None,
    image_urls: tuple[str, ...] | list[str] = (),
) -> dict[str, Any]:
    """The ``input`` object of DEFAULT_MODEL, leaving out what is not set."""
    body: dict[str, Any] = {"prompt": prompt}
    if aspect_ratio is not None:
        body["aspect_ratio"] = aspect_ratio
    if quality is not None:
        body["quality"] = quality
    if image_urls:
        body["image_urls"] = list(image_urls)
    return body


def canonical_spec(model: str, api_input: dict[str, Any], sample: int = 1) -> str:
    hashed: dict[str, Any] = {"model": model, "input": api_input}
    if sample != 1:
        hashed["sample"] = sample
    return json.dumps(hashed, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def spec_hash(model: str, api_input: dict[str, Any], sample: int = 1) -> str:
    canonical = canonical_spec(model, api_input, sample)
    return SPEC_HASH_PREFIX + hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class RunInfo:
    """What the API said about a run, parsed tolerantly."""

    run_id: str
    status: str
    urls: tuple[str, ...] = ()
    error: str | None = None

    @property
    def succeeded(self) -> bool:
        return self.status in SUCCEEDED_STATUSES

    @property
    def failed(self) -> bool:
        return self.status in FAILED_STATUSES

    @property
    def finished(self) -> bool:
        return self.succeeded or self.failed


@dataclass(frozen=True, slots=True)
class PendingJob:
    """A job handed to the scheduler, with the attempts already made at its current spec."""

    spec: JobSpec
    attempts: int
    fresh: bool = False  # a new run is wanted (`batchgen retry`): reuse nothing


@dataclass(frozen=True, slots=True)
class OpenRun:
    """A run created by an earlier session and not yet seen finished."""

    attempt_id: int
    run_id: str
    created_at: float
    job: PendingJob
    refetch: bool = False  # opened again only to fetch files that went missing: never pay for a new run


@dataclass(frozen=True, slots=True)
class SavedOutput:
    """One output file, complete on disk under ``path`` (relative to the output folder)."""

    n: int
    path: str
    bytes: int
    sha256: str
    content_type: str


@dataclass(frozen=True)
class SyncSummary:
    jobs: int
    succeeded: int
    failed: int
    to_do: int


class Outcome(enum.Enum):
    """Why a batch ended."""

    DONE = "done"
    RUNS_KEPT = "runs kept for the next session"  # polls or downloads kept failing: paid runs wait, not bought again
    CAPPED = "stopped at the cap"
    ACCOUNT = "stopped by the account"
    UNAUTHORIZED = "unauthorized"
    INTERRUPTED = "interrupted"
    UNAVAILABLE = "the API kept failing"
    MANIFEST = "the manifest has errors"
    ERROR = "error"


@dataclass
class BatchStats:
    """What one session did; progress reads it while the batch runs."""

    succeeded: int = 0
    failed: int = 0
    created: int = 0
    unknown_creates: int = 0  # creates whose answer never came: possible double charges
    rate_limited: int = 0
    retries: int = 0  # transient failures retried (creates, polls, downloads)
    failed_runs: int = 0  # runs that failed or vanished and were tried again or gave up
    polls: int = 0
    downloads: int = 0
    reused: int = 0  # jobs given an identical request's image instead of a run of their own
    url_refreshes: int = 0
    in_flight: int = 0
