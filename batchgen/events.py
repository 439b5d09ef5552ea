"""What happens in a batch, as events for logs and programs, and the log that writes them.

``Events`` is the hook: the scheduler and the create state machine call
``emit(kind, **fields)`` where something happens to a job; listeners subscribe
to the kinds they want. An event nobody listens to costs one set lookup: no
object, no string, no clock read is made for it, so the hot path stays cheap.

Kinds emitted during a batch (``KINDS``), with their fields:

* ``created``: a run was created (paid for): ``job_id``, ``run_id``, ``attempt`` (the job's attempt number).
* ``succeeded``: a job's files are saved: ``job_id``, ``run_id``, ``files`` (paths in the output
  folder), ``reused`` (true when an identical request's image was copied instead of a run).
* ``failed``: a job failed for good: ``job_id``, ``run_id`` (or null), ``error``, ``error_kind``.
* ``retried``: a request or a run failed and is tried again: ``job_id``, ``run_id``, ``what``
  (create, poll, run; with poll or download also when the run is kept for the next session, its polls or
  downloads having kept failing),
  ``error``, ``tries`` (failures in a row so far).
* ``throttled``: the API answered 429: ``job_id``, ``run_id``, ``what``, ``pause`` (seconds every
  request now waits), and what the pacing made of it: ``pace`` (requests a second that count
  against the limit, from now), ``fitted`` ([lowest, highest] create rate the answers so far
  allow, or null) and ``running_limit`` (the cap on runs in flight found, or null).
* ``stopped``: the batch stopped creating runs: ``reason``, ``error``.
* ``kept``: an output's name held a file with other bytes, moved aside rather than overwritten:
  ``job_id``, ``path`` (the name), ``kept`` (where the earlier file is now, in the output folder).

The command line adds ``started``, ``note``, ``progress`` and ``finished`` (see cli/run.py).

``Log`` writes events and lines to one stream: plain lines (with an ISO timestamp
first when the stream is not a terminal) or one JSON object per line. Every text
it writes is scrubbed of the secrets it was given (the API key) and of anything
shaped like a bearer token, whatever a server put in its error messages.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TextIO

from .text import scrub

KINDS = ("created", "succeeded", "failed", "retried", "throttled", "stopped", "kept")
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


@dataclass(frozen=True, slots=True)
class Event:
    kind: str
    time: float  # seconds since the epoch
    fields: dict[str, Any] = field(default_factory=dict)


Listener = Callable[[Event], None]


class Events:
    """The events hook of one batch (see the module docstring)."""

    def __init__(self) -> None:
        self._listeners: list[tuple[frozenset[str] | None, Listener]] = []
        self._kinds: frozenset[str] = frozenset()
        self._all = False
        self.output: Log | None = None  # where the batch's human-facing lines go (progress uses it)

    def listen(self, listener: Listener, kinds: Iterable[str] | None = None) -> None:
        """Call ``listener`` for every event of ``kinds`` (all kinds when None)."""
        wanted = None if kinds is None else frozenset(kinds)
        self._listeners.append((wanted, listener))
        if wanted is None:
            self._all = True
        else:
            self._kinds |= wanted

    def wants(self, kind: str) -> bool:
        return self._all or kind in self._kinds

    def emit(self, kind: str, **fields: Any) -> None:
        if not (self._all or kind in self._kinds):
            return
        event = Event(kind, time.time(), fields)
        for wanted, listener in self._listeners:
            if wanted is None or kind in wanted:
                listener(event)


def iso_time(timestamp: float, timespec: str = "milliseconds") -> str:
    """Local time with its UTC offset, to the millisecond: ``2025-03-01T01:30:00.125+01:00``."""
    return datetime.fromtimestamp(timestamp).astimezone().isoformat(timespec=timespec)


class Scrubber:
    """Removes the given secrets and bearer-like tokens from text; escapes what a terminal would act on."""

    def __init__(self, secrets: Iterable[str] = ()):
        self.secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        text = scrub(text, self.secrets)  # text.py's rules, which leave a token already redacted as it is
        return _UNPRINTABLE.sub(lambda m: f"\\x{ord(m[0]):02x}" if ord(m[0]) < 256 else f"\\u{ord(m[0]):04x}", text)

    def value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self(value)
        if isinstance(value, (list, tuple)):
            return [self.value(v) for v in value]
        if isinstance(value, dict):
            return {str(k): self.value(v) for k, v in value.items()}
        if isinstance(value, (int, float, bool)) or value is None:
            return value
        return self(str(value))


class Log:
    """Lines and events written to one stream (see the module docstring); never raises on a write."""

    def __init__(
        self,
        stream: TextIO,
        *,
        json_lines: bool = False,
        timestamps: bool | None = None,
        secrets: Iterable[str] = (),
        clock: Callable[[], float] = time.time,
    ):
        self.stream = stream
        self.json_lines = json_lines
        self.terminal = _isatty(stream)
        self.timestamps = (not self.terminal) if timestamps is None else timestamps
        self.scrub = Scrubber(secrets)
        self._clock = clock
        self.broken: OSError | None = None  # the stream failed (disk full, closed pipe): the log goes quiet
        self.write_hook: Callable[[str], None] | None = None  # set while a progress bar owns the terminal

    def line(self, text: str, *, kind: str = "note", **fields: Any) -> None:
        """A human line (``batchgen: `` is added); in JSON mode an object ``{"event": kind, "message": text}``."""
        if self.json_lines:
            self.event(Event(kind, self._clock(), {"message": text, **fields}))
            return
        stamp = iso_time(self._clock()) + " " if self.timestamps else ""
        first, *rest = text.split("\n")  # our own multi-line messages (manifest problems): one stamp per line
        self._write("\n".join([f"{stamp}batchgen: {self.scrub(first)}", *(stamp + self.scrub(r) for r in rest)]))

    def event(self, event: Event) -> None:
        """Write one event: a JSON object, or in text mode a line for the kinds a person reads."""
        if not self.json_lines:
            text = describe(event)
            if text is not None:
                stamp = iso_time(event.time) + " " if self.timestamps else ""
                self._write(f"{stamp}batchgen: {self.scrub(text)}")
            return
        record = {"time": iso_time(event.time), "event": event.kind}
        record.update(self.scrub.value(event.fields))
        self._write(json.dumps(record, ensure_ascii=False, default=str))

    def _write(self, text: str) -> None:
        if self.broken is not None:
            return
        try:
            if self.write_hook is not None:
                self.write_hook(text)
            else:
                self.stream.write(text + "\n")
                self.stream.flush()
        except OSError as exc:
            self.broken = exc
        except ValueError:  # written after the stream was closed
            pass


def describe(event: Event) -> str | None:
    """The line a person reads for an event in a text log; None for kinds text logs leave out."""
    f = event.fields
    if event.kind == "failed":
        run = f" (run {f['run_id']})" if f.get("run_id") else ""
        return f"job {f.get('job_id')} failed for good{run}: {f.get('error')}"
    if event.kind == "kept":
        path, kept, job = f.get("path"), f.get("kept"), f.get("job_id")
        return f"{path} already held other bytes: kept as {kept} before job {job}'s image took its name"
    if event.kind == "stopped":
        error = f": {f['error']}" if f.get("error") else ""
        return f"stopped creating runs ({f.get('reason')}){error}"
    return None


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
