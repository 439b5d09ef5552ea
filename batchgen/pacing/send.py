"""What the controller records of each request: its kind, when it left, what became of it."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

Clock = Callable[[], float]


class Kind(enum.Enum):
    CREATE = "create"
    POLL = "poll"


class Result(enum.Enum):
    ACCEPTED = "accepted"
    REFUSED = "refused"  # by the rate
    CAPPED = "capped"  # by the cap on running runs
    LOST = "lost"  # no answer that tells anything (a transient failure)


@dataclass(eq=False)
class Send:
    """One request that left: what the controller knew when it did, and what became of it."""

    kind: Kind
    at: float
    in_flight: int  # runs created and not known finished, plus creates on the wire before this one (once it
    # leaves: only those that left before it)
    counted: bool  # it took a place in the pace
    pace: float
    result: Result | None = None
    probe: bool = False  # a create above the cap on running runs
    repeat: bool = False  # a 429 at a suspected cap again before any run finished
    credited: bool = False  # it went on the credit a pause left, not on a slot of the pace
    left: bool = False  # its bytes left (``Pacer.leaving``): ``at`` is when
