"""Progress while a batch runs, and why it is waiting when nothing moves.

* On a terminal that reports its width: a tqdm bar (done, failed, in flight, rate, ETA).
* Elsewhere (cron, a pipe, a file, a terminal reporting 0 columns): one status line
  every ``LINE_INTERVAL`` seconds, through the batch's ``Log`` (events.py), which puts an
  ISO timestamp first when it does not write to a terminal.
* With a JSON log: a ``progress`` object every ``LINE_INTERVAL`` seconds.

Either way, while the API is failing or a 429 pause holds every request, the line
says so (``paused by 429 for 12 s``; ``API unreachable: connection refused,
retrying (3rd time)``). ``Waiting`` learns that from the batch's events: it costs
nothing on the path of a request that succeeds.
"""

from __future__ import annotations

import math
import os
import re
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

import anyio
from tqdm import tqdm

from .events import Event, Events, Log
from .models import BatchStats

LINE_INTERVAL = 10.0
BAR_INTERVAL = 0.25
MODES = ("auto", "bar", "lines", "json", "none")
_ERRNO = re.compile(r"\[Errno -?\d+\] ([^\]\n]+)")


class Waiting:
    """Why nothing progresses, from the events of the batch: a 429 pause, or the API failing."""

    KINDS = ("throttled", "retried", "created", "succeeded")

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self.paused_until = 0.0
        self.error: str | None = None  # the last failure since anything went through
        self.tries = 0

    def __call__(self, event: Event) -> None:
        fields = event.fields
        if event.kind == "throttled":
            self.paused_until = max(self.paused_until, self._clock() + float(fields.get("pause") or 0.0))
        elif event.kind == "retried" and fields.get("what") in ("create", "poll"):
            self.error = api_problem(fields.get("error") or "")
            self.tries = int(fields.get("tries") or 1)
        elif event.kind in ("created", "succeeded"):
            self.error = None

    def reason(self) -> str | None:
        remaining = self.paused_until - self._clock()
        if remaining > 0:
            return f"paused by 429 for {math.ceil(remaining)} s"
        if self.error is not None:
            return f"{self.error}, retrying ({ordinal(self.tries)} time)"
        return None


def api_problem(error: BaseException | str) -> str:
    """A failure of the API in a few words: ``API unreachable: connection refused``, ``API failing: HTTP 503``."""
    message = getattr(error, "message", None) or str(error)
    errno = _ERRNO.search(message)
    detail = _os_reason(error) if isinstance(error, BaseException) else ""
    detail = detail or (errno[1].strip().rstrip(".").lower() if errno else "")
    if message.startswith("could not connect"):  # "could not connect (to the API): ConnectError: ..."
        return f"API unreachable: {detail or 'cannot connect'}"
    if message.startswith(("no answer in time", "no complete answer")):
        return "API not answering in time"
    if message.startswith("connection failed"):
        return f"connection to the API failed: {detail or 'reset'}"
    status = re.match(r"HTTP (\d{3})", message)
    if status:
        return f"API failing: HTTP {status[1]}"
    return f"API error: {message[:80]}"


def _os_reason(error: BaseException, depth: int = 0) -> str:
    """The operating system's word for what failed (``connection refused``), found along the causes."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen and depth < 20:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno:
            return os.strerror(current.errno).lower()
        if isinstance(current, BaseExceptionGroup):
            for inner in current.exceptions:
                if reason := _os_reason(inner, depth + 1):
                    return reason
        current = current.__cause__ or current.__context__
    return ""


def ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def terminal_width(stream: TextIO) -> int:
    """Columns of the terminal ``stream`` writes to (``COLUMNS`` when set above 0); 0 when it reports none."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):
        return 0


class Progress:
    def __init__(self, total: int, *, mode: str, log: Log, events: Events | None = None):
        self._total = total
        self.mode = mode  # bar | lines | json
        self.log = log
        self.stream = log.stream
        self.waiting = Waiting()
        if events is not None:
            events.listen(self.waiting, Waiting.KINDS)
        self._started = time.monotonic()
        self._bar: Any = None
        if mode == "bar":
            self._bar = tqdm(total=total, unit="job", file=log.stream, dynamic_ncols=True, smoothing=0.1)
            log.write_hook = lambda text: tqdm.write(text, file=log.stream)

    @classmethod
    def create(
        cls, mode: str, total: int, stream: TextIO | None = None, events: Events | None = None
    ) -> Progress | None:
        """``mode``: auto (a bar on a terminal that reports its width, else lines), bar, lines, json, none."""
        if mode == "none":
            return None
        log = events.output if events is not None and events.output is not None else None
        if log is None:
            log = Log(stream or sys.stderr)
        if log.json_lines:
            mode = "json"
        elif mode == "auto":
            mode = "bar" if log.terminal and terminal_width(log.stream) > 0 else "lines"
        return cls(total, mode=mode, log=log, events=events)

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

    def figures(self, stats: BatchStats) -> dict[str, Any]:
        done = stats.succeeded + stats.failed
        elapsed = time.monotonic() - self._started
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - done) / rate if rate > 0 and done < self.total else None
        return {
            "done": done,
            "total": self.total,
            "succeeded": stats.succeeded,
            "failed": stats.failed,
            "in_flight": stats.in_flight,
            "created": stats.created,
            "jobs_per_second": round(rate, 2),
            "eta_seconds": None if eta is None else round(eta),
            "waiting": self.waiting.reason(),
        }

    def update(self, stats: BatchStats) -> None:
        f = self.figures(stats)
        if self._bar is not None:
            self._bar.n = f["done"]
            postfix = f"failed={f['failed']}, in_flight={f['in_flight']}"
            if f["waiting"]:
                postfix += f" — {f['waiting']}"
            self._bar.set_postfix_str(postfix, refresh=False)
            self._bar.refresh()
            return
        if self.mode == "json":
            self.log.event(Event("progress", time.time(), f))
            return
        eta = f", ETA {_duration(f['eta_seconds'])}" if f["eta_seconds"] is not None else ""
        waiting = f" — {f['waiting']}" if f["waiting"] else ""
        self.log.line(
            f"{f['done']}/{f['total']} done, {f['failed']} failed, {f['in_flight']} in flight, "
            f"{f['jobs_per_second']:.1f} jobs/s{eta}{waiting}"
        )

    def close(self, stats: BatchStats) -> None:
        if self._bar is not None:
            self.update(stats)
            self._bar.close()
            self._bar = None
            self.log.write_hook = None


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"
