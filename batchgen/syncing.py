"""Reading the manifest into the ledger, in chunks, while the batch may already be running.

The manifest is read once per change (an unchanged manifest is skipped by its
fingerprint). Reading starts before anything is sent: a manifest read within
``head_start`` seconds (every small and medium one) is checked in full before
the first create. A larger one goes on being read while the first runs are
created, one chunk at a time between the scheduler's steps, so a catalogue of
a million rows starts generating within seconds; if a problem turns up later
in it, the batch stops creating, collects the runs already paid for, and ends
with every problem listed (exit 2), exactly as if it had been found first.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from itertools import islice

import anyio
import anyio.lowlevel

from .errors import ManifestError
from .ledger import Ledger
from .ledger.store import SYNC_CHUNK
from .models import JobSpec

# While the first runs are being created, the batch's steps wait for the manifest's: they read this
# many jobs, not a whole SYNC_CHUNK (a quarter of the wait; each step is a commit, so not for long).
FIRST_STEPS = SYNC_CHUNK // 4
FIRST_STEPS_SECONDS = 2.0


class ManifestSync:
    def __init__(
        self,
        ledger: Ledger,
        jobs: Iterator[JobSpec],
        *,
        manifest: str,
        output_dir: str,
        fingerprint: str | None,
        retry_failed: bool,
    ):
        self.ledger = ledger
        self.jobs = jobs
        self.fingerprint = fingerprint
        self.retry_failed = retry_failed
        self.done = False
        self.error: ManifestError | None = None
        self.read = 0  # jobs read so far
        self.generation = ledger.sync_begin(manifest, output_dir)

    def head(self, seconds: float) -> None:
        """Read chunks for up to ``seconds`` in one transaction: a ManifestError found here is
        raised with nothing written, as if the manifest had been checked before anything else."""
        deadline = time.monotonic() + seconds
        while not self.done and time.monotonic() < deadline:
            self._chunk(hold=True)
        if self.error is not None:
            self.ledger.rollback()
            raise self.error
        self.ledger.flush()

    async def rest(self, on_chunk: Callable[[], None], keep_going: Callable[[], bool] = lambda: True) -> None:
        """Read what is left, letting the scheduler run between chunks; ``on_chunk`` after each.
        Stops early once ``keep_going()`` is false (the batch is ending): the next run reads it again."""
        small_until = time.monotonic() + FIRST_STEPS_SECONDS
        while not self.done:
            await anyio.lowlevel.checkpoint()
            if not keep_going():
                return
            self._chunk(rows=FIRST_STEPS if time.monotonic() < small_until else SYNC_CHUNK)
            on_chunk()

    def _chunk(self, *, hold: bool = False, rows: int = SYNC_CHUNK) -> None:
        chunk: list[JobSpec] = []
        try:
            chunk.extend(islice(self.jobs, rows))
        except ManifestError as exc:  # raised after the last valid job: the problems, all of them
            self.error = exc
        if chunk:
            self.ledger.sync_chunk(
                list(enumerate(chunk, start=self.read)), self.generation, retry_failed=self.retry_failed
            )
            self.read += len(chunk)
        if not chunk or self.error is not None:
            self.done = True
            if self.error is None:
                self.ledger.sync_end(self.fingerprint)
        self.ledger.flush(hold=hold)
