"""Reusing an identical request's image instead of paying for a new run.

``Reuser.try_reuse`` looks the job's spec hash up in the reuse index
(ledger/reuse.py) and copies a complete set of files one earlier run produced
under this job's own names, hashing the copy as it is written: a file that is
gone or changed is skipped (and forgotten by the index). The job is then
recorded as succeeded by a ``reused`` attempt naming the run that made it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import anyio

from .errors import LedgerError
from .ledger import Ledger
from .ledger.reuse import ReusableRun, ReuseIndex
from .models import AttemptStatus, JobSpec, SavedOutput
from .outputs import EXTENSIONS, PartialFile, UnsafeName, output_name

COPY_CHUNK = 1 << 20


class Reuser:
    def __init__(
        self,
        index: ReuseIndex,
        ledger: Ledger,
        output_dir: Path,
        on_file: Callable[[JobSpec, str, SavedOutput], None] | None = None,
    ):
        self.index = index
        self.ledger = ledger
        self.output_dir = output_dir
        self.on_file = on_file
        self.broken: LedgerError | None = None  # the index failed: the batch goes on without it

    async def try_reuse(self, spec: JobSpec) -> tuple[str | None, list[SavedOutput]] | None:
        """(the run that made them, the files) when the job now has its images, copied from an identical
        request's run; None when none could be used."""
        if self.broken is not None:
            return None
        try:
            candidates = self.index.find(spec.spec_hash())
            for candidate in candidates:
                saved, stale = await anyio.to_thread.run_sync(self._copy, spec, candidate)
                for path in stale:
                    self.index.forget(path)
                if saved is not None:
                    self.ledger.job_satisfied(
                        spec.job_id,
                        spec.spec_hash(),
                        saved,
                        status=AttemptStatus.REUSED,
                        run_id=candidate.run_id,
                        note=f"the same request's image, made by run {candidate.run_id}",
                    )
                    self.index.add(spec.spec_hash(), candidate.run_id, self.output_dir, saved)
                    return candidate.run_id, saved
        except LedgerError as exc:
            self.broken = exc
        return None

    def record(self, spec: JobSpec, run_id: str, saved: list[SavedOutput]) -> None:
        """A run's files were saved: offer them to later identical requests."""
        if self.broken is None:
            self.index.add(spec.spec_hash(), run_id, self.output_dir, saved)

    def flush(self) -> None:
        if self.broken is None:
            try:
                self.index.flush()
            except LedgerError as exc:
                self.broken = exc

    def _copy(self, spec: JobSpec, candidate: ReusableRun) -> tuple[list[SavedOutput] | None, list[Path]]:
        """In a worker thread: the copies, or None and the files found gone or changed."""
        saved: list[SavedOutput] = []
        on_file, run_id = self.on_file, candidate.run_id or "reused"

        def before(out: SavedOutput) -> None:
            if on_file is not None:
                on_file(spec, run_id, out)

        for file in candidate.files:
            extension = file.path.suffix.lower().lstrip(".")
            if extension not in EXTENSIONS.values():
                return None, []
            name = output_name(spec.stem, file.n, extension)
            try:
                with PartialFile(self.output_dir, spec.job_id, before) as part, open(file.path, "rb") as source:
                    while chunk := source.read(COPY_CHUNK):
                        part.write(chunk)
                    if part.size != file.bytes or part.sha256 != file.sha256:
                        return None, [file.path]
                    saved.append(part.commit(name, file.n, file.content_type))
            except (FileNotFoundError, IsADirectoryError, PermissionError):
                return None, [file.path]
            except UnsafeName:  # not this folder's to write: the job's own run says so when it saves
                return None, []
        return saved, []
