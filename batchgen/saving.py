"""Saving a succeeded run's outputs: download each URL into a temporary file, name it, rename it into place.

What a refusal means decides what is tried next (``batchgen.errors``):

* ``LinkRefused`` (the file host said 403, 404, 410, ...) and ``NotAnImage`` (an HTML
  sign-in page, an XML error, SVG, an empty body): signed URLs expire, so the run is
  fetched again once for fresh URLs (free). If they fail too, a refused link may
  still be cured by a new run (``retry=True``); a host that answers with something
  other than an image would answer a new run the same way (``retry=False``).
* ``OutputUnusable`` (over the size cap, a ``data:``/``file:`` URL or a redirect to
  one, a redirect loop) and a run that succeeded without URLs even when fetched again:
  the job fails with the reason, and no new run is paid for (``retry=False``).
* A run of several outputs some of which stay refused: the images that came are kept
  (``SaveFailed.saved``) and the job fails naming the dead ones; a new run would make all
  of them again, new images in place of those saved, so none is bought unless asked.
* A run all of whose links stay refused says ``refused``: the scheduler holds it until a
  download shows the host serves others (the links were the run's), or until
  ``REFUSED_STREAK`` runs in a row are refused with no download between them
  (``host_refusing``): the host refuses this client, not one job, and each new run would
  be paid for nothing.
* Transient failures (5xx, resets, truncated bodies, a host too slow) are retried
  with backoff, a bounded number of times. If they go on, the run's image exists and is
  paid for: a new run would pay again, so the run is kept open for the next session to
  fetch (``keep_run=True``).

Nothing that is not a complete PNG, JPEG or WebP ever gets a name in the output
folder: the temporary file is removed on every failure. ``OutputSaver.save``
returns the files saved, or raises ``SaveFailed`` saying whether a new run could help.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import anyio

from .api import RunbaseClient
from .errors import (
    AccountError,
    DownloadRefused,
    FilesRefused,
    JobError,
    LinkRefused,
    NotAnImage,
    OutputUnusable,
    RateLimited,
    TransientError,
)
from .models import BatchStats, JobSpec, RunInfo, SavedOutput
from .outputs import PartialFile, UnsafeName, output_name
from .throttle import Throttle, backoff
from .words import plural

MAX_DOWNLOAD_TRIES = 5
MAX_FILE_WAIT = 60.0  # the longest a file host's Retry-After is waited for, seconds
REFRESH_TRIES = 3
LISTING_TRIES = 6  # asks, backing off (about 8-16 s in all), for the URLs of a run that succeeded without them
# Runs whose links the file host refused even when fresh, in a row across the batch with no download
# between them: the host refuses this client (a block, a lost bucket), and every job would buy
# --max-attempts runs that deliver nothing. Stop instead; a dead link now and then is retried as before.
REFUSED_STREAK = 5


class SaveFailed(Exception):
    """The run's outputs could not be saved; ``retry`` says whether a new run might do better,
    ``keep_run`` that the run itself should be fetched again later instead."""

    def __init__(
        self,
        message: str,
        *,
        retry: bool = True,
        keep_run: bool = False,
        saved: list[SavedOutput] | None = None,
        refused: bool = False,
        host_refusing: FilesRefused | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.saved = saved or []  # outputs that did come: kept and recorded, not paid for again
        self.retry = retry and not keep_run and not self.saved
        self.keep_run = keep_run
        self.refused = refused  # every link of the run stayed refused: counted in OutputSaver.refused_streak
        self.host_refusing = host_refusing  # REFUSED_STREAK such runs in a row: stop buying runs


class OutputSaver:
    def __init__(
        self,
        *,
        client: RunbaseClient,
        output_dir: Path,
        throttle: Throttle,
        stats: BatchStats,
        backoff_base: float = 0.5,
        on_file: Callable[[JobSpec, str, SavedOutput], None] | None = None,
    ):
        self.client = client
        self.on_file = on_file  # told of each file before it takes its name (the folder's journal)
        self.output_dir = output_dir
        self.throttle = throttle
        self.stats = stats
        self.backoff_base = backoff_base
        # Outputs saved whose host declared another type than their bytes (the bytes decided).
        self.type_mismatches = 0
        self.last_type_mismatch: str | None = None
        self.refused_streak = 0  # runs whose links stayed refused since a download last came whole

    async def save(self, spec: JobSpec, info: RunInfo) -> list[SavedOutput]:
        run_id = info.run_id
        refreshed = False
        urls = list(info.urls)
        if not urls:
            refreshed = True
            urls = await self._listed_urls(run_id)
            if not urls:
                raise SaveFailed(f"run {run_id} succeeded without output URLs", retry=False)
        saved: list[SavedOutput] = []
        dead: list[str] = []  # outputs whose links stayed refused, fresh ones too
        n = tries = 0
        while n < len(urls):
            where = f"output {n + 1} of run {run_id}"
            try:
                saved.append(await self._download(spec, info.run_id, urls[n], n))
                n, tries = n + 1, 0
            except OutputUnusable as exc:
                raise SaveFailed(f"{where} cannot be saved: {exc.message}", retry=False) from exc
            except (LinkRefused, NotAnImage) as exc:
                no_fresh = ""
                if not refreshed:  # signed URLs expire and storage hosts put up sign-in pages: fresh URLs once, free
                    refreshed = True
                    self.stats.url_refreshes += 1
                    fresh = await self._refresh(run_id)
                    if fresh is not None and len(fresh.urls) == len(urls):
                        urls = list(fresh.urls)
                        continue
                    no_fresh = "; no fresh URLs"
                if isinstance(exc, NotAnImage):  # a new run would be answered the same way
                    raise SaveFailed(f"{where}: {exc.message}{no_fresh}", retry=False, saved=saved) from exc
                dead.append(f"{where}: {exc.message}{no_fresh}")
                n, tries = n + 1, 0
            except DownloadRefused as exc:  # a kind without its own rule: refuse, pay for nothing more
                raise SaveFailed(f"{where}: {exc.message}", retry=False) from exc
            except TransientError as exc:
                tries += 1
                if tries >= MAX_DOWNLOAD_TRIES:
                    raise SaveFailed(f"{where}: download kept failing: {exc.message}", keep_run=True) from exc
                self.stats.retries += 1
                # A file host's 429 or 503 may say how long to wait: never sooner, and at most a minute
                # (tries stay bounded: after them the run is kept for the next session, not bought again).
                asked = min(exc.retry_after or 0.0, MAX_FILE_WAIT)
                await anyio.sleep(max(asked, backoff(tries, base=self.backoff_base)))
            except UnsafeName as exc:
                raise SaveFailed(str(exc), retry=False) from exc
        if dead:
            raise self._refused(run_id, dead, saved)
        return saved

    def _refused(self, run_id: str, dead: list[str], saved: list[SavedOutput]) -> SaveFailed:
        """What to do with a run some of whose links stayed refused."""
        if saved:  # the host serves this run: a new run would make all its images again, new ones in place of these
            names = ", ".join(output.path for output in saved)
            came = plural(len(saved), "the image that came is", "the images that came are")
            return SaveFailed(
                f"{'; '.join(dead)}. Of its {len(saved) + len(dead)} images, {came} saved ({names}) and no new run "
                "was bought: `batchgen retry --failed` makes them all again with one",
                saved=saved,
            )
        self.refused_streak += 1
        streak = self.refused_streak
        stop = None
        if streak >= REFUSED_STREAK:
            stop = FilesRefused(
                f"the file host refused the images of {streak} runs in a row, fresh links from the API too "
                f"(the last: {dead[0]})"
            )
        return SaveFailed("; ".join(dead), refused=True, host_refusing=stop)

    async def _download(self, spec: JobSpec, run_id: str, url: str, n: int) -> SavedOutput:
        on_file = self.on_file
        before_rename = None if on_file is None else (lambda saved: on_file(spec, run_id, saved))
        with PartialFile(self.output_dir, spec.job_id, before_rename) as part:
            download = await self.client.download(url, part)
            self.stats.downloads += 1
            self.refused_streak = 0
            name = output_name(spec.stem, n, download.extension)
            saved = part.commit(name, n, download.content_type)
        if download.type_mismatch is not None:
            self.type_mismatches += 1
            self.last_type_mismatch = f"{name}: {download.type_mismatch}"
        return saved

    async def _listed_urls(self, run_id: str) -> list[str]:
        """A run may say 'succeeded' a moment before its outputs are listed (a replica behind):
        ask again, backing off, before concluding it has none."""
        for attempt in range(1, LISTING_TRIES + 1):
            self.stats.url_refreshes += 1
            fresh = await self._refresh(run_id)
            if fresh is not None and fresh.urls:
                return list(fresh.urls)
            if attempt < LISTING_TRIES:
                await anyio.sleep(backoff(attempt, base=self.backoff_base))
        return []

    async def _refresh(self, run_id: str) -> RunInfo | None:
        for attempt in range(1, REFRESH_TRIES + 1):
            await self.throttle.wait_api()
            try:
                info = await self.client.get_run(run_id)
            except RateLimited as exc:
                self.throttle.rate_limited(exc.retry_after, create=False)
                continue
            except TransientError:
                await anyio.sleep(backoff(attempt, base=self.backoff_base))
                continue
            except (JobError, AccountError):
                return None
            return info if info.succeeded else None
        return None
