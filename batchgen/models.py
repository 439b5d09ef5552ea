"""Data only: job specs, run snapshots and the model's input schema. No I/O."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

DEFAULT_MODEL = "openai/gpt-image-1.5"
ASPECT_RATIOS = ("1:1", "3:2", "2:3")
QUALITIES = ("medium", "high")
# The fields a job may set; anything else in a YAML/JSONL job is an error, in CSV it is metadata.
JOB_FIELDS = ("id", "prompt", "aspect_ratio", "quality", "image_urls")
MAX_JOB_ID_LENGTH = 128
MAX_PROMPT_LENGTH = 32_000

# Bump the prefix when the hashed form changes, so old ledgers see every job as changed
# rather than silently matching a hash computed another way.
SPEC_HASH_PREFIX = "v1:"

# Run statuses. The provider documents only "succeeded"; anything not known to be
# terminal is treated as still running (assumption, see runbase-api.md).
SUCCEEDED_STATUSES = frozenset({"succeeded"})
FAILED_STATUSES = frozenset({"failed", "error", "canceled", "cancelled"})


@dataclass(frozen=True, slots=True)
class JobSpec:
    """One image to generate, as the manifest asks for it."""

    job_id: str
    prompt: str
    model: str = DEFAULT_MODEL
    aspect_ratio: str | None = None
    quality: str | None = None
    image_urls: tuple[str, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def api_input(self) -> dict[str, Any]:
        """The ``input`` object of the create request."""
        body: dict[str, Any] = {"prompt": self.prompt}
        if self.aspect_ratio is not None:
            body["aspect_ratio"] = self.aspect_ratio
        if self.quality is not None:
            body["quality"] = self.quality
        if self.image_urls:
            body["image_urls"] = list(self.image_urls)
        return body

    def spec_hash(self) -> str:
        """A stable fingerprint of what the API is asked for; metadata is not part of it."""
        return spec_hash(self.model, self.api_input())


def spec_hash(model: str, api_input: dict[str, Any]) -> str:
    canonical = json.dumps(
        {"model": model, "input": api_input}, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
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
