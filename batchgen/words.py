"""How batchgen's messages say a count: "1 run", "2 runs", "0 runs"."""

from __future__ import annotations


def plural(n: float, one: str, many: str | None = None) -> str:
    """``one`` when ``n`` is 1, else ``many`` (``one`` + "s" unless given): ``f"{n} {plural(n, 'run')}"``, so
    the number keeps its own format (width, thousands) at the call."""
    if n == 1:
        return one
    return many if many is not None else one + "s"
