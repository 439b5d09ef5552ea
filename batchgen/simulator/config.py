"""SimConfig: how the simulated service behaves. Every field may be changed while it runs
(in-process by assignment, in another process through POST /_sim/config)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..words import plural
from .catalogue import ALL_FAULTS
from .limits import LimitSettings, RateSchedule, RetryAfter

MAX_OUTPUTS = 255  # outputs per run at most (a run id holds the count in one byte)
HUGE_BODY_BYTES = 256 * 1024 * 1024  # over any sane image, and over batchgen's default cap


@dataclass
class SimConfig:
    """How the simulated service behaves. Times are seconds, rates per second, per API key.

    Rate limits (see batchgen.simulator.limits): ``create_rate`` and ``request_rate`` are a
    number or a schedule string such as ``"30,15@6,30@12"``; each is a token bucket of
    ``create_burst`` / ``request_burst`` tokens (None: a tenth of the rate in force, at least 1)
    that starts full. ``polls_count`` makes polls take create tokens too; ``max_running`` caps
    a key's unfinished runs (creates above it get 429). ``retry_after`` is ``"precise"``,
    ``"precise-ms"``, ``"fixed:N"``, ``"date"`` or ``"none"`` (True and False, the earlier
    form, mean precise and none). ``violation_grace``: see limits.RetryAfterWatch.
    """

    latency: float = 0.05  # generation time (the median when latency_sigma > 0)
    latency_sigma: float = 0.0  # > 0: lognormal generation time around `latency`
    failure_rate: float = 0.0  # share of runs that end "failed"
    stuck_rate: float = 0.0  # share of runs that stay "running" forever
    create_rate: float | str | None = None  # creates per second per key, or a schedule; None: unlimited
    create_burst: int | None = None  # the create bucket's size; None: default_burst(rate in force)
    request_rate: float | str | None = None  # API requests per second per key, or a schedule
    request_burst: int | None = None
    polls_count: bool = False  # polls take a token from the create bucket too
    max_running: int | None = None  # unfinished runs per key before creates get 429
    retry_after: str = "precise"  # the Retry-After of a 429 (see limits.RetryAfter)
    violation_grace: float = 0.0  # seconds after a 429 during which requests count as in flight
    credits: int | None = None  # runs that can still be created before 402; None: unlimited
    forbidden: bool = False  # every create answers 403 (spend cap)
    moved_to: str | None = None  # every API request answers 308 to this base URL (the API has moved)
    api_key: str | None = None  # None: any non-empty bearer token is accepted
    output_ttl: float | None = None  # seconds an output link stays valid once handed out
    outputs_per_run: int | str = 1  # images per run, or "MIN-MAX" drawn per run
    image_scale: float = 1 / 16  # PNG size = the provider's size times this
    faults: dict[str, float] = field(default_factory=dict)  # fault name -> probability (see faults)
    not_found_seconds: float = 2.0  # how long not_found_after_create answers 404
    output_lag: int = 0  # answers a succeeded run gives without its output URLs before it lists them
    huge_body_bytes: int = HUGE_BODY_BYTES  # the size of the body_huge fault's body
    slow_seconds: float = 30.0  # the delay of the "slow" fault
    seed: int = 0  # faults, outcomes, ids and images follow from it
    files_origin: str | None = None  # None: derived from the request's Host
    relative_output_urls: bool = False  # output URLs as paths (/files/...), served by the API's own host
    # Files answered 401 without the API key, as an API that serves its outputs behind the key at its own
    # address does (with relative_output_urls); on another origin, a host no client may give the key to.
    files_behind_key: bool = False
    refuse_prompts_containing: str | None = None  # such prompts get 400, as a content policy would
    # A create with the model and input of an earlier run of the same key answers that run, unpaid,
    # as a service that deduplicates identical requests does: two creates, one run id.
    dedupe_creates: bool = False
    create_redirect_to_run: int | None = None  # 301, 302 or 303: a create answers that, to the new run's URL
    # Any other GET or HEAD is the web a reference image lives on: answered 200 with an image,
    # except URLs containing one of these, answered 404 (a dead link in a manifest).
    dead_links: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        unknown = sorted(set(self.faults) - set(ALL_FAULTS))
        if unknown:
            raise ValueError(
                f"unknown {plural(len(unknown), 'fault')} {', '.join(unknown)}; known: {', '.join(ALL_FAULTS)}"
            )
        for name, probability in self.faults.items():
            _check_share(f"fault {name}", probability)
        for name in ("failure_rate", "stuck_rate"):
            _check_share(name, getattr(self, name))
        for name in ("create_rate", "request_rate"):
            spec = getattr(self, name)
            if spec is not None:
                RateSchedule.parse(spec, name)  # raises ValueError naming the bad piece
        for name in ("create_burst", "request_burst", "max_running"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a whole number >= 1 or None, not {value!r}")
        self.retry_after = _retry_after_text(RetryAfter.parse(self.retry_after))
        self.outputs_range()  # validates
        for name in ("latency", "latency_sigma", "not_found_seconds", "slow_seconds", "violation_grace"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a number of seconds >= 0, not {value!r}")
        if self.not_found_seconds > 6553:
            raise ValueError("not_found_seconds must be at most 6553")
        if self.output_ttl is not None and not self.output_ttl > 0:
            raise ValueError("output_ttl must be > 0 seconds or None")
        if isinstance(self.output_lag, bool) or not isinstance(self.output_lag, int) or self.output_lag < 0:
            raise ValueError(f"output_lag must be a whole number of answers >= 0, not {self.output_lag!r}")
        if not isinstance(self.huge_body_bytes, int) or self.huge_body_bytes < 1:
            raise ValueError("huge_body_bytes must be a whole number of bytes >= 1")

    def limits(self) -> LimitSettings:
        return LimitSettings(
            self.create_rate, self.create_burst, self.request_rate, self.request_burst, self.polls_count,
            self.max_running,
        )  # fmt: skip

    def retry_after_mode(self) -> RetryAfter:
        return RetryAfter.parse(self.retry_after)

    def outputs_range(self) -> tuple[int, int]:
        """(fewest, most) outputs per run."""
        value = self.outputs_per_run
        if isinstance(value, int) and not isinstance(value, bool):
            low = high = value
        elif isinstance(value, str) and value.strip().isdigit():
            low = high = int(value)
        elif isinstance(value, str) and "-" in value:
            first, _, second = value.partition("-")
            if not (first.strip().isdigit() and second.strip().isdigit()):
                raise ValueError(f"outputs_per_run must be N or MIN-MAX, not {value!r}")
            low, high = int(first), int(second)
        else:
            raise ValueError(f"outputs_per_run must be N or MIN-MAX, not {value!r}")
        if not 0 <= low <= high <= MAX_OUTPUTS:
            raise ValueError(f"outputs_per_run must be within 0-{MAX_OUTPUTS} with MIN <= MAX, not {value!r}")
        return low, high


def _check_share(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ValueError(f"{name} must be a probability between 0 and 1, not {value!r}")


def _retry_after_text(mode: RetryAfter) -> str:
    return f"fixed:{mode.seconds}" if mode.mode == "fixed" else mode.mode
