"""``run_batch``: manifest → ledger → scheduler → result, callable from Python (how it ended: outcomes.py).

The CLI is a thin layer over this module: everything ``batchgen run`` does, a
program can do with ``batchgen.run_batch("catalogue.yaml", concurrency=16)``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import anyio
import httpx

from . import __version__
from .api import RunbaseClient, Timeouts
from .config import (
    SIMULATED_BASE_URL as SIMULATED_BASE_URL,  # re-exported: tests read it from here
    BatchConfig as BatchConfig,  # part of this module's interface, as before
    api_key_of,
    resolve,
)
from .errors import BatchgenError, LedgerError, ManifestError, OutputError, Unauthorized, UsageError
from .events import Events
from .exitcodes import ExitCode
from .folder import STATE_DIR, OutputFolder, mixed_folder
from .ledger import Ledger
from .ledger.reuse import ReuseIndex, default_index_path
from .manifest import iter_jobs, read_manifest
from .models import BatchStats, JobSpec, Outcome, SavedOutput
from .outcomes import (
    BatchResult as BatchResult,  # part of this module's interface, as before
    batch_result,
    local_error,
    manifest_message,
)
from .pricing import Budget, job_prices
from .progress import Progress
from .recovery import check_files, needs_repair, repair, unknown_images
from .references import ReferenceCheck
from .reusing import Reuser
from .scheduler import INTERRUPT_GRACE, Scheduler, Stop
from .syncing import ManifestSync
from .throttle import Throttle
from .words import plural

# Said when a batch is interrupted before its first create (Outcome.INTERRUPTED's message counts the jobs that
# wait, and the manifest's rows may not be in the ledger yet).
INTERRUPTED_EARLY = (
    "interrupted before anything was sent, while the manifest was read and the folder checked; nothing recorded "
    "was lost. Run the same command again to finish."
)


def run_batch(manifest: str | os.PathLike[str], **options: Any) -> BatchResult:
    """Run a batch to its end (or to a stop) and return what happened. Options: see BatchConfig."""
    config = BatchConfig(manifest=Path(manifest), **options)
    return anyio.run(run_batch_async, config)


async def run_batch_async(config: BatchConfig) -> BatchResult:
    started = time.monotonic()
    try:
        with _interrupts_at_once(config.handle_signals):
            config = resolve(config)
            api_key = api_key_of(config)
            if not config.manifest.is_file():
                list(iter_jobs(config.manifest))  # reports why (missing, a folder...) without touching anything
            _check_output_dir(config.output_dir)
            fresh_paths = _new_paths(config)
            ledger = Ledger(config.ledger_file)
    except KeyboardInterrupt:
        return BatchResult(Outcome.INTERRUPTED, ExitCode.INTERRUPTED, INTERRUPTED_EARLY, output_dir=config.output_dir)
    except Unauthorized as exc:
        return BatchResult(Outcome.UNAUTHORIZED, ExitCode.UNAUTHORIZED, str(exc))
    except UsageError as exc:
        return BatchResult(Outcome.ERROR, ExitCode.USAGE, str(exc))
    except ManifestError as exc:
        return BatchResult(Outcome.MANIFEST, ExitCode.USAGE, manifest_message(exc))
    except BatchgenError as exc:
        return BatchResult(Outcome.ERROR, ExitCode.LOCAL, str(exc))
    with ledger, OutputFolder(config.output_dir) as folder:
        try:
            with _interrupts_at_once(config.handle_signals):
                left_behind = ledger.images_left_behind()
                sync, notes = _prepare(config, ledger, folder)
        except KeyboardInterrupt:
            ledger.rollback()  # the manifest's rows read so far: the next run reads them again
            result = batch_result(Outcome.INTERRUPTED, ledger, BatchStats(), started, config.output_dir)
            return replace(result, message=INTERRUPTED_EARLY)
        except (ManifestError, UsageError) as exc:
            ledger.close()
            folder.close()
            _remove_new(fresh_paths)  # a rejected manifest (or folder) leaves nothing behind
            if isinstance(exc, UsageError):
                return BatchResult(Outcome.ERROR, ExitCode.USAGE, str(exc))
            return BatchResult(Outcome.MANIFEST, ExitCode.USAGE, manifest_message(exc))
        except (BatchgenError, OSError) as exc:
            return BatchResult(Outcome.ERROR, ExitCode.LOCAL, local_error(exc, config.output_dir))
        session = ledger.session_started(str(config.manifest))
        if (sync is None or sync.done) and ledger.summary().to_do == 0:
            notes += _left_behind(ledger, left_behind, config)
            result = batch_result(Outcome.DONE, ledger, BatchStats(), started, config.output_dir, notes=notes)
            return _finish_session(ledger, session, result)
        scheduler, outcome = await _run_scheduler(config, ledger, folder, api_key, sync, notes)
        try:  # creates still unanswered now never will be (an interrupt's grace ran out): count them at once
            scheduler.stats.unknown_creates += ledger.recover()
        except LedgerError:
            pass  # the ledger is what failed: the next run counts them
        if scheduler.references is not None and scheduler.references.dead:
            dead = scheduler.references.dead
            url, why = next(iter(dead.items()))
            n = len(dead)
            notes.append(
                f"{n} reference image {plural(n, 'URL')} did not answer, so {plural(n, 'its', 'their')} jobs failed "
                f"unpaid ({plural(n, '', 'e.g. ')}{url}: {why}); fix {plural(n, 'it', 'them')} and run "
                "`batchgen retry --failed --error-kind reference`"
            )
        notes += _left_behind(ledger, left_behind, config)
        result = batch_result(
            outcome, ledger, scheduler.stats, started, config.output_dir, scheduler.error, notes=notes
        )
        return _finish_session(ledger, session, result)


def _left_behind(ledger: Ledger, before: int, config: BatchConfig) -> list[str]:
    """A note when this manifest leaves out jobs whose images the folder holds (another manifest's, or
    rows since removed): they stay, but status, export and report now show this manifest's jobs only."""
    try:
        dropped = ledger.images_left_behind() - before
    except LedgerError:
        return []
    if dropped <= 0:
        return []
    return [
        f"{dropped} {plural(dropped, 'job')} with images in {config.output_dir} {plural(dropped, 'is', 'are')} "
        f"not in {config.manifest} (an earlier or "
        f"another manifest's): {plural(dropped, 'its images stay', 'their images stay')} there, but status, export "
        "and report show this manifest's jobs"
    ]


def _finish_session(ledger: Ledger, session: int, result: BatchResult) -> BatchResult:
    """Record how this run ended (status's "last run" reads it), a run with nothing to do included."""
    try:
        ledger.session_finished(session, result.outcome.value, result.exit_code, json.dumps(asdict(result.stats)))
        ledger.flush()
    except (LedgerError, OutputError):
        ledger.rollback()  # the ledger may be what failed (disk full); the result already says so
    return result


def _prepare(config: BatchConfig, ledger: Ledger, folder: OutputFolder) -> tuple[ManifestSync | None, list[str]]:
    """Locks, the manifest read in (or its head), the ledger repaired and its files checked."""
    notes: list[str] = []
    ledger.lock_for_run()
    config.output_dir.mkdir(parents=True, exist_ok=True)
    folder.lock()
    _claim(folder, config)
    if ledger.is_empty and not config.allow_unknown_files:
        foreign = unknown_images(folder)
        if foreign:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise OutputError(
                f"the output folder {config.output_dir} already holds {len(foreign)} {plural(len(foreign), 'image')} "
                "that batchgen "
                f"has no record of ({shown}); a job could be named like one of them. Use another --output, "
                "or pass --allow-unknown-files to write among them (a file under a job's name is then moved "
                "to .batchgen/replaced/, never overwritten)"
            )
    folder.remove_stale_partials()
    repairing = needs_repair(ledger, folder)
    # Repairs need every job of the manifest recorded first, so the manifest is read whole.
    sync = _start_sync(config, ledger, head_start=math.inf if repairing else config.sync_head_start)
    if repairing:
        repaired = repair(ledger, folder)
        if repaired:
            notes.append(repaired.describe())
    # From here on every money event goes to the folder's journal before the ledger commits it.
    ledger.journal = folder.note
    ledger.before_flush = lambda: ledger.set_journal_offset(folder.folder_id, folder.write_journal())
    ledger.recover()
    check = check_files(ledger, config.output_dir)
    if check.missing or check.changed:
        what = [f"{len(check.missing)} missing"] if check.missing else []
        what += [f"{len(check.changed)} changed"] if check.changed else []
        files = len(check.missing) + len(check.changed)
        example = f"{'' if files == 1 else 'e.g. '}{(check.missing or check.changed)[0]}"
        notes.append(
            f"{' and '.join(what)} {plural(files, 'file')} in {config.output_dir} ({example}): "
            f"{check.reopened} fetched again from {plural(check.reopened, 'its run', 'their runs')}"
            + (f", {len(check.lost)} with no run to fetch from (`batchgen retry --missing`)" if check.lost else "")
        )
    return sync, notes


def _claim(folder: OutputFolder, config: BatchConfig) -> None:
    """One folder, one kind of image: never the simulator's placeholders mixed with (or taken for) real ones."""
    simulated = config.simulate and config.transport is None
    if folder.claim("simulator" if simulated else "api") is not None:
        raise UsageError(mixed_folder(config.output_dir, simulated))


def _check_output_dir(output_dir: Path) -> None:
    if output_dir.exists() and not output_dir.is_dir():
        raise OutputError(f"--output {output_dir} is a file, not a folder: give the folder the images should go to")


def _new_paths(config: BatchConfig) -> list[Path]:
    """The ledger and the folders this invocation is about to create, deepest first."""
    paths = [] if config.ledger_file.exists() else [config.ledger_file]
    for start in (config.ledger_file.parent, config.output_dir):
        folder = start.absolute()
        while not folder.exists() and folder not in paths:
            paths.append(folder)
            folder = folder.parent
    return sorted(paths, key=lambda path: len(path.parts), reverse=True)


def _remove_new(paths: list[Path]) -> None:
    """Remove what this invocation created: the ledger and its side files, then folders left empty."""
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path / STATE_DIR, ignore_errors=True)
            try:
                path.rmdir()  # only if empty
            except OSError:
                pass
        else:
            for side in (path, Path(f"{path}-wal"), Path(f"{path}-shm"), Path(f"{path}.lock")):
                side.unlink(missing_ok=True)


def _start_sync(config: BatchConfig, ledger: Ledger, *, head_start: float) -> ManifestSync | None:
    """Read the manifest into the ledger (None when it is unchanged since the last run); see syncing.py."""
    output_dir = str(config.output_dir.resolve())
    fingerprint = _fingerprint(config.manifest)
    if not ledger.sync_needed(fingerprint, output_dir, retry_failed=config.retry_failed):
        return None
    sync = ManifestSync(
        ledger,
        iter_jobs(config.manifest),
        manifest=str(config.manifest),
        output_dir=output_dir,
        fingerprint=fingerprint,
        retry_failed=config.retry_failed,
    )
    sync.head(head_start)
    return sync


async def _run_scheduler(
    config: BatchConfig,
    ledger: Ledger,
    folder: OutputFolder,
    api_key: str,
    sync: ManifestSync | None,
    notes: list[str],
) -> tuple[Scheduler, Outcome]:
    assert config.base_url is not None
    client = RunbaseClient(
        config.base_url,
        api_key,
        transport=config.transport or _simulator_transport(config),
        timeouts=Timeouts.from_seconds(config.timeout),
        max_connections=min(16, max(4, config.concurrency)),  # see bench/RESULTS.md
        max_download_bytes=config.max_download_bytes,
    )
    events = config.events if config.events is not None else Events()
    reuser = _reuser(config, ledger, folder, events, notes)
    async with client:
        scheduler = Scheduler(
            ledger=ledger,
            client=client,
            output_dir=config.output_dir,
            concurrency=config.concurrency,
            max_attempts=config.max_attempts,
            throttle=Throttle(config.rate, backoff_base=config.backoff_base),
            run_timeout=config.run_timeout,
            backoff_base=config.backoff_base,
            reading_manifest=sync is not None and not sync.done,
            not_found_grace=config.not_found_grace,
            on_file=_before_rename(folder, events, reuser.index if reuser is not None else None),
            reuser=reuser,
            budgets=_budgets(config),
            sidecars=config.sidecar,
            references=ReferenceCheck(client) if config.check_references else None,
            events=events,
        )
        counts = ledger.counts()
        progress = Progress.create(config.progress, total=counts["pending"] + counts["running"], events=events)
        try:
            async with anyio.create_task_group() as tg:
                if config.handle_signals:
                    tg.start_soon(_watch_signals, scheduler)
                if progress is not None:
                    tg.start_soon(progress.run, scheduler.stats)
                if sync is not None and not sync.done:
                    tg.start_soon(_read_rest, sync, scheduler, progress)
                outcome = await scheduler.run(ledger.open_runs())
                tg.cancel_scope.cancel()
        finally:
            ledger.flush()  # what the scheduler queued last (run ids of creates answered while stopping)
        if progress is not None:
            progress.close(scheduler.stats)
    return scheduler, outcome


def _budgets(config: BatchConfig) -> list[tuple[Budget, Callable[[JobSpec], float]]]:
    budgets: list[tuple[Budget, Callable[[JobSpec], float]]] = []
    if config.max_runs is not None:
        budgets.append((Budget(config.max_runs, "runs"), lambda job: 1.0))
    if config.max_credits is not None:
        prices = job_prices(config.manifest, config.prices)

        def credits(job: JobSpec) -> float:
            price = prices.of(job)
            assert price is not None  # every job's price was checked before the batch started
            return price

        budgets.append((Budget(config.max_credits, "credits"), credits))
    return budgets


def _before_rename(
    folder: OutputFolder, events: Events, index: ReuseIndex | None
) -> Callable[[JobSpec, str, SavedOutput], None]:
    """What happens just before an output takes its name: the journal hears of it, and a file with other
    bytes under that name is kept aside (``OutputFolder.keep_aside``), never overwritten; the reuse index
    follows it there, so a job changed back to that request gets it again unpaid."""

    def record(spec: JobSpec, run_id: str, saved: SavedOutput) -> None:
        folder.record_file(spec.job_id, spec.spec_hash(), run_id, saved)
        kept = folder.keep_aside(saved)
        if kept is not None:
            if index is not None:
                base = folder.path.resolve()
                index.moved(base / saved.path, base / kept)
            events.emit("kept", job_id=spec.job_id, path=saved.path, kept=kept)

    return record


def _reuser(
    config: BatchConfig, ledger: Ledger, folder: OutputFolder, events: Events, notes: list[str]
) -> Reuser | None:
    if not config.reuse:
        return None
    # Images are reused only from the same service: never a simulator's image for a real request.
    service = "simulator" if config.simulate and config.transport is None else str(config.base_url)
    try:
        index = ReuseIndex(config.reuse_index or default_index_path(), service)
    except LedgerError as exc:
        # The batch goes on, every job with its own run, but the user is told: identical requests are paid again.
        notes.append(
            f"{exc}; identical requests were not looked up (each job got its own run): give --reuse-index a "
            "writable place, or set BATCHGEN_CACHE_DIR"
        )
        return None
    return Reuser(index, ledger, config.output_dir, _before_rename(folder, events, index))


async def _read_rest(sync: ManifestSync, scheduler: Scheduler, progress: Progress | None) -> None:
    """Go on reading a large manifest while the batch runs; a problem found stops the creating."""
    await sync.rest(on_chunk=scheduler.more_jobs, keep_going=lambda: scheduler.stop is Stop.RUNNING)
    if not sync.done:
        return
    if sync.error is not None:
        scheduler.manifest_rejected(sync.error)
    else:
        scheduler.manifest_read()
    if progress is not None:
        counts = sync.ledger.counts()
        progress.total = counts["pending"] + counts["running"] + scheduler.stats.succeeded + scheduler.stats.failed


@contextmanager
def _interrupts_at_once(enabled: bool) -> Iterator[None]:
    """While a batch opens and prepares (the ledger opened, the manifest's first part read, a lost ledger
    mended, the files checked: seconds to minutes for a large batch, and no await in them), SIGINT and SIGTERM
    raise KeyboardInterrupt where they land. The event loop's own handling of SIGINT would only cancel the
    batch at its next await, once all that is done, and end it without saying how to go on."""
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    for signum in previous:
        signal.signal(signum, _interrupt)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            if handler is not None:
                signal.signal(signum, handler)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


async def _watch_signals(scheduler: Scheduler) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            scheduler.interrupt()
            break
        with anyio.move_on_after(INTERRUPT_GRACE):
            async for _ in signals:  # a second signal: stop without waiting
                break
        scheduler.force_finish()


def _fingerprint(manifest: Path) -> str | None:
    """This batchgen's version and the bytes of the manifest and its rows file: equal fingerprints, equal jobs."""
    digest = hashlib.sha256(f"batchgen {__version__}\n".encode())
    if not manifest.is_file():  # a FIFO would block here; the manifest reader explains
        return None
    try:
        for source in read_manifest(manifest).sources:
            digest.update(f"{source}\n".encode())
            with open(source, "rb") as file:
                while chunk := file.read(1 << 20):
                    digest.update(chunk)
    except OSError:
        return None  # the manifest reader will report why
    return digest.hexdigest()


def _simulator_transport(config: BatchConfig) -> httpx.AsyncBaseTransport | None:
    if not config.simulate:
        return None
    from .simulator import SimConfig, Simulator

    options = {"latency": 1.0, "latency_sigma": 0.3, **config.simulator_options}
    return Simulator(SimConfig(**options)).transport()
