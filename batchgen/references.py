"""Reference images checked before anything is paid for them.

A job whose ``image_urls`` name a dead link would be paid for and fail at the
API. Before a job's run is created, each of its reference URLs is asked once
(HEAD, or a one-byte GET where HEAD is not allowed) by the key-less file client;
the answer is kept, so a URL shared by many rows is asked once. A definite
refusal (a 4xx, a non-http(s) URL, a refused redirect) fails the job with the
reason and kind ``reference``, unpaid. When the link cannot be told (no network
from here, a timeout, a 5xx) the job goes on: the API may well reach it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

import anyio

from .api import RunbaseClient
from .errors import TransientError
from .models import JobSpec

CACHE = 100_000  # URLs remembered at most; a catalogue rarely repeats one far apart
CONCURRENCY = 16


class ReferenceCheck:
    def __init__(self, client: RunbaseClient):
        self.client = client
        self.checked = 0  # URLs asked
        self.dead: dict[str, str] = {}  # URL -> why, for the summary (bounded by CACHE too)
        self.unknown = 0  # URLs that could not be told
        self._answers: OrderedDict[str, str | None] = OrderedDict()
        self._asking: dict[str, anyio.Event] = {}
        self._slots = anyio.CapacityLimiter(CONCURRENCY)

    async def dead_reference(self, job: JobSpec) -> str | None:
        """Why one of the job's reference images is dead, or None."""
        urls = job.input.get("image_urls")
        if not isinstance(urls, list):
            return None
        for url in urls:
            if isinstance(url, str) and (reason := await self._answer(url)) is not None:
                return f"reference image is not reachable ({reason}): {url}"
        return None

    async def _answer(self, url: str) -> str | None:
        while url not in self._answers:
            if url in self._asking:  # another job asks it now: wait for that answer
                await self._asking[url].wait()
                continue
            self._asking[url] = event = anyio.Event()
            try:
                async with self._slots:
                    answer = await self.client.check_link(url)
            except TransientError:
                answer = None
                self.unknown += 1
            finally:
                del self._asking[url]
                event.set()
            self.checked += 1
            self._answers[url] = answer
            if answer is not None and len(self.dead) < CACHE:
                self.dead[url] = answer
            if len(self._answers) > CACHE:
                self._answers.popitem(last=False)
        self._answers.move_to_end(url)
        return self._answers[url]


async def check_all(
    client: RunbaseClient, jobs: Iterable[JobSpec], *, examples: int = 5
) -> tuple[dict[str, DeadLink], int]:
    """Every distinct reference URL of ``jobs`` asked once (16 at a time); the dead ones with the jobs
    that use them (the first few ids, and how many), and how many URLs could not be told."""
    check = ReferenceCheck(client)
    users: dict[str, list[str]] = {}
    counts: dict[str, int] = {}
    for job in jobs:
        urls = job.input.get("image_urls")
        for url in urls if isinstance(urls, list) else ():
            counts[url] = counts.get(url, 0) + 1
            if len(ids := users.setdefault(url, [])) < examples:
                ids.append(job.job_id)
    dead: dict[str, DeadLink] = {}

    async def ask(url: str) -> None:
        reason = await check._answer(url)
        if reason is not None:
            dead[url] = DeadLink(reason, tuple(users[url]), counts[url])

    async with anyio.create_task_group() as tg:
        for url in users:
            tg.start_soon(ask, url)
    return dead, check.unknown


@dataclass(frozen=True)
class DeadLink:
    reason: str
    jobs: tuple[str, ...]  # the first few jobs using it
    uses: int  # how many jobs use it
