"""Group the ledger's writes: one transaction per scheduler tick, waited for only where a promise needs it.

Every write the scheduler makes is queued in the ledger. ``poke()`` asks for a
flush soon; ``durable()`` returns once everything queued so far is committed.
The committer flushes after letting every task that is ready in this tick
queue its writes, so a hundred creates answered together cost one commit.

Who waits: a create's attempt row before the request is sent, and a run id
before the run is polled. Nothing else waits; a crash that takes back a write
nobody waited for leaves its run open in the ledger, to be polled again.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio
import anyio.lowlevel

from .errors import LedgerError
from .ledger import Ledger


class Committer:
    def __init__(self, ledger: Ledger, also: Callable[[], None] | None = None):
        """``also`` is flushed after the ledger (the reuse index): an optimisation, never waited for."""
        self.ledger = ledger
        self.also = also
        self.flushes = 0
        self._wake = anyio.Event()
        self._flushed = anyio.Event()  # set by the flush that follows the moment it was created
        self._error: LedgerError | None = None

    async def run(self) -> None:
        """The task that flushes; raises the first LedgerError (the batch must stop)."""
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            await anyio.lowlevel.checkpoint()  # everything ready this tick queues its writes first
            self.flush()

    def flush(self) -> None:
        done, self._flushed = self._flushed, anyio.Event()
        try:
            if self._error is None:
                self.ledger.flush()
                self.flushes += 1
                if self.also is not None:
                    self.also()
        except LedgerError as exc:
            self._error = exc
        finally:
            done.set()
        if self._error is not None:
            raise self._error

    def poke(self) -> None:
        """Writes were queued: flush them soon, nobody waits."""
        if self.ledger.queued:
            self._wake.set()

    async def durable(self) -> None:
        """Return once every write queued so far is committed; raise LedgerError if it cannot be."""
        if self._error is not None:
            raise self._error
        if not self.ledger.queued:
            return
        done = self._flushed
        self._wake.set()
        await done.wait()
        if self._error is not None:
            raise self._error
