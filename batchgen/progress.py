"""Progress while a batch runs: a tqdm bar on a terminal, a status line every few seconds elsewhere (cron)."""

from __future__ import annotations

import sys
import time
from typing import TextIO

import anyio
from tqdm import tqdm

from .models import BatchStats

LINE_INTERVAL = 10.0
BAR_INTERVAL = 0.25


class Progress:
    def __init__(self, total: int, *, bar: bool, stream: TextIO):
        self._total = total
        self.stream = stream
        self._started = time.monotonic()
        self._bar = tqdm(total=total, unit="job", file=stream, dynamic_ncols=True, smoothing=0.1) if bar else None

    @classmethod
    def create(cls, mode: str, total: int, stream: TextIO | None = None) -> Progress | None:
        stream = stream or sys.stderr
        if mode == "none":
            return None
        bar = mode == "bar" or (mode == "auto" and stream.isatty())
        return cls(total, bar=bar, stream=stream)

    async def run(self, stats: BatchStats) -> None:
        interval = BAR_INTERVAL if self._bar is not None else LINE_INTERVAL
        while True:
            await anyio.sleep(interval)
            self.update(stats)

    @property
    def total(self) -> int:
        return self._total

    @total.setter
    def total(self, value: int) -> None:
        self._total = value
        if self._bar is not None:
            self._bar.total = value

    def update(self, stats: BatchStats) -> None:
        done = stats.succeeded + stats.failed
        if self._bar is not None:
            self._bar.n = done
            self._bar.set_postfix(failed=stats.failed, in_flight=stats.in_flight, refresh=False)
            self._bar.refresh()
            return
        elapsed = time.monotonic() - self._started
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = f", ETA {_duration((self.total - done) / rate)}" if rate > 0 and done < self.total else ""
        print(
            f"batchgen: {done}/{self.total} done, {stats.failed} failed, {stats.in_flight} in flight, "
            f"{rate:.1f} jobs/s{eta}",
            file=self.stream,
            flush=True,
        )

    def close(self, stats: BatchStats) -> None:
        if self._bar is not None:
            self.update(stats)
            self._bar.close()


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"
