"""Saving a succeeded run's outputs: download each URL into a temporary file, name it, rename it into place.

Signed URLs expire, so a refused download gets fresh URLs from the API once
before the attempt is given up; transient failures are retried with backoff.
``OutputSaver.save`` returns the files saved, or raises ``SaveFailed`` saying
whether a new run could help.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import anyio

from .api import RunbaseClient
from .errors import AccountError, DownloadRefused, JobError, RateLimited, TransientError
from .models import BatchStats, JobSpec, RunInfo, SavedOutput
from .outputs import PartialFile, UnsafeName, extension_for, output_name
from .throttle import Throttle, backoff

MAX_DOWNLOAD_TRIES = 5
REFRESH_TRIES = 3


class SaveFailed(Exception):
    """The run's outputs could not be saved; ``retry`` says whether a new run might do better."""

    def __init__(self, message: str, *, retry: bool = True):
        super().__init__(message)
        self.message = message
        self.retry = retry


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

    async def save(self, spec: JobSpec, info: RunInfo) -> list[SavedOutput]:
        urls = list(info.urls)
        if not urls:
            raise SaveFailed(f"run {info.run_id} succeeded without output URLs")
        saved: list[SavedOutput] = []
        refreshed = False
        n = tries = 0
        while n < len(urls):
            try:
                saved.append(await self._download(spec, info.run_id, urls[n], n))
                n, tries = n + 1, 0
            except DownloadRefused as exc:
                # Signed URLs expire: ask the API for fresh ones once before giving up.
                if refreshed:
                    raise SaveFailed(f"download refused: {exc.message}") from exc
                refreshed = True
                self.stats.url_refreshes += 1
                fresh = await self._refresh(info.run_id)
                if fresh is None or len(fresh.urls) != len(urls):
                    raise SaveFailed(f"download refused and no fresh URLs: {exc.message}") from exc
                urls = list(fresh.urls)
            except TransientError as exc:
                tries += 1
                if tries >= MAX_DOWNLOAD_TRIES:
                    raise SaveFailed(f"download kept failing: {exc.message}") from exc
                self.stats.retries += 1
                await anyio.sleep(backoff(tries, base=self.backoff_base))
            except UnsafeName as exc:
                raise SaveFailed(str(exc), retry=False) from exc
        return saved

    async def _download(self, spec: JobSpec, run_id: str, url: str, n: int) -> SavedOutput:
        on_file = self.on_file
        before_rename = None if on_file is None else (lambda saved: on_file(spec, run_id, saved))
        with PartialFile(self.output_dir, spec.job_id, before_rename) as part:
            download = await self.client.download(url, part)
            self.stats.downloads += 1
            name = output_name(spec.stem, n, extension_for(download.content_type, url))
            return part.commit(name, n, download.content_type or "application/octet-stream")

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
