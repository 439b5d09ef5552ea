"""What runs cost, when the manifest (or ``--price``) says so.

Runbase does not publish credits per run, so the user may state them::

    pricing: 2                      # every run costs 2 credits
    pricing: {medium: 1, high: 2}   # by quality, for the manifest's model; 'default' for runs without one
    pricing:                        # by model, then quality (or one number per model)
      openai/gpt-image-1.5: {medium: 1, high: 2, default: 1}
      some/other-model: 3

``Pricing.credits(job)`` is the price of one run of the job, or None when the
table does not say (the plan then shows those runs as unpriced).
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Any

from ..models import DEFAULT_MODEL, QUALITIES, JobSpec
from .problems import Invalid, describe

DEFAULT = "default"


@dataclass(frozen=True)
class Pricing:
    """Credits per run: model -> quality ('default' for any other or none) -> credits."""

    by_model: dict[str, dict[str, float]]

    def credits(self, job: JobSpec) -> float | None:
        table = self.by_model.get(job.model)
        if table is None:
            return None
        quality = job.input.get("quality")
        if isinstance(quality, str) and quality in table:
            return table[quality]
        return table.get(DEFAULT)

    def as_table(self) -> dict[str, float]:
        """The same prices as flat ``model:quality`` keys, a model's default under the model's name
        (the keys ``--price`` takes, so the two can be merged)."""
        table: dict[str, float] = {}
        for model, by_quality in self.by_model.items():
            for quality, credits in by_quality.items():
                table[model if quality == DEFAULT else f"{model}:{quality}"] = credits
        return table

    @classmethod
    def parse(cls, value: Any, model: str) -> Pricing:
        """From the manifest's ``pricing:`` value; ``Invalid`` says what is wrong."""
        if isinstance(value, dict) and value and all("/" in str(key) for key in value):
            return cls({str(key): _by_quality(item, f"pricing of {key}", str(key)) for key, item in value.items()})
        return cls({model: _by_quality(value, "pricing", model)})


def likely(key: str) -> str:
    """The hint "; did you mean 'high'?" when a quality or 'default' is close to ``key`` (a typo), else nothing."""
    close = difflib.get_close_matches(key, [*QUALITIES, DEFAULT], n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _number(value: Any, where: str) -> float:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise Invalid(f"{where} must be a number of credits, not {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise Invalid(f"{where} must be a number of credits (0 or more), not {describe(value)}")
    return float(value)


def _by_quality(value: Any, where: str, model: str) -> dict[str, float]:
    if isinstance(value, dict):
        if not value:
            raise Invalid(f"{where} is empty")
        known = (*QUALITIES, DEFAULT)
        unknown = [str(key) for key in value if model == DEFAULT_MODEL and key not in known]
        if unknown:
            raise Invalid(
                f"{where}: {unknown[0]!r} is not a quality of {model}; use {', '.join(known)}{likely(unknown[0])}"
            )
        return {str(key): _number(amount, f"{where}, {key}") for key, amount in value.items()}
    return {DEFAULT: _number(value, where)}
