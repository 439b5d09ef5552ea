"""What runs cost, and the cap on what one invocation may spend.

Runbase does not publish credits per run: they are the account's. A user who
knows them says so (``--price high=2,medium=1`` or ``pricing:`` in the
manifest), and batchgen can then tell the bill before paying and stop at a
budget. ``Prices.of(job)`` looks a job up by ``model:quality``, then
``quality``, then ``model``, then ``default``.

``Budget`` makes ``--max-runs`` and ``--max-credits`` exact whatever the
concurrency: a create reserves its cost before its request leaves, keeps it if
a run was made (or may have been: an unanswered create counts as spent), and
gives it back if the API certainly made none (429, refused connection, 400).
When a create cannot reserve, it waits for the reservations in flight to settle
before deciding that the cap is reached.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from .errors import UsageError
from .manifest import read_manifest
from .manifest.pricing import likely
from .models import DEFAULT_MODEL, QUALITIES, JobSpec


@dataclass(frozen=True)
class Prices:
    table: Mapping[str, float] = field(default_factory=dict)
    fallback: Prices | None = None  # asked when this table has no price for a job

    def __bool__(self) -> bool:
        return bool(self.table) or bool(self.fallback)

    def of(self, job: JobSpec) -> float | None:
        quality = job.input.get("quality")
        keys = [f"{job.model}:{quality}", str(quality), job.model, "default"] if quality else [job.model, "default"]
        for key in keys:
            if key in self.table:
                return self.table[key]
        return self.fallback.of(job) if self.fallback is not None else None

    def merged(self, other: Prices) -> Prices:
        """``other``'s prices first, these where it has none (the command line over the manifest)."""
        return Prices(other.table, fallback=self) if other else self


def parse_prices(text: str) -> Prices:
    """``high=2,medium=1`` (also ``default=1``, ``openai/gpt-image-1.5:high=2``) into Prices; a lone
    number (``--price 2``) is every run's price, as ``pricing: 2`` is in a manifest."""
    table: dict[str, float] = {}
    lone = "=" not in text
    for item in [f"default={text}"] if lone else text.split(","):
        key, sep, value = item.strip().rpartition("=")
        try:
            price = float(value)
        except ValueError:
            price = math.nan
        if not sep or not key.strip() or not math.isfinite(price) or price < 0:
            raise UsageError(
                "--price takes a number of credits per run (2) or KEY=CREDITS pairs separated by commas "
                f"(high=2,medium=1), not {text.strip() if lone else item.strip()!r}"
            )
        table[_price_key(key.strip())] = price
    return Prices(table)


def _price_key(key: str) -> str:
    """A key a job can be priced by: a quality, ``default``, a model (``owner/name``) or ``model:quality``;
    anything else (a typo such as ``hihg``) would price nothing, so it is refused."""
    model, colon, quality = key.rpartition(":") if "/" in key else ("", "", key)
    named = key in (*QUALITIES, "default") or (not colon and "/" in key)
    if named or (colon and "/" in model and quality in QUALITIES):
        return key
    raise UsageError(
        f"--price {key!r} would price no job: a key is a quality ({', '.join(QUALITIES)}), 'default', a model "
        f"(such as {DEFAULT_MODEL}) or model:quality{likely(quality)}"
    )


class Budget:
    """At most ``limit`` (runs or credits) spent by one invocation; see the module docstring."""

    def __init__(self, limit: float, unit: str):
        self.limit = limit
        self.unit = unit  # "runs" or "credits", for messages
        self.spent = 0.0
        self.reserved = 0.0
        self._settled = anyio.Event()

    async def reserve(self, cost: float) -> bool:
        """Reserve ``cost``; False when the cap is reached (nothing in flight could free room)."""
        while self.spent + self.reserved + cost > self.limit + 1e-9:
            if self.reserved == 0:
                return False
            settled = self._settled
            await settled.wait()
        self.reserved += cost
        return True

    def keep(self, cost: float) -> None:
        """The reserved cost was spent: a run was made, or may have been."""
        self.reserved -= cost
        self.spent += cost
        self._wake()

    def give_back(self, cost: float) -> None:
        """The API certainly made no run."""
        self.reserved -= cost
        self._wake()

    def _wake(self) -> None:
        self._settled.set()
        self._settled = anyio.Event()


def job_prices(manifest: Path, given: Mapping[str, float]) -> Prices:
    """The manifest's ``pricing:``, with prices given on the command line taking precedence."""
    pricing = read_manifest(manifest).pricing
    return Prices(pricing.as_table() if pricing is not None else {}).merged(Prices(dict(given)))
