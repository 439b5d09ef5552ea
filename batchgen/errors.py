"""The exception tree.

Every error batchgen raises on purpose is a ``BatchgenError``::

    BatchgenError
    ├── UsageError               an option's value cannot be used (bad URL, concurrency 0)
    ├── ManifestError            the manifest is unusable; carries every problem found
    ├── LedgerError              the ledger cannot be opened, read or written
    │   └── LedgerBusy           another runner holds the ledger
    ├── OutputError              an output file cannot be written (disk full, permissions)
    ├── CapReached               --max-runs / --max-credits reached: the batch stops creating
    └── ApiError                 anything the Runbase API (or the way to it) answered
        ├── TransientError       worth retrying: 5xx, timeouts, resets, malformed bodies;
        │   │                    ``maybe_created``: a create that may have made a run
        │   └── RateLimited      429; carries ``retry_after`` seconds when the server gave one
        ├── AccountError         about the account, not the job: stop creating runs
        │   ├── Unauthorized     401
        │   ├── OutOfCredits     402
        │   ├── Forbidden        403
        │   └── Misaddressed     the base URL is not where the API answers: 404/405 on create
        │       └── Redirected   3xx on any API request (never followed: it carries the key)
        └── JobError             about one job or run; the batch goes on
            ├── BadRequest       400 on create: the job fails for good
            ├── RunNotFound      404 on a poll: the run is gone, try a new one
            │   └── RunIdRefused a run id that cannot be one literal path segment (empty, control
            │                    characters), or whose answer is about another run: never rewritten
            ├── UnusableRun      a create answered 2xx with an id that cannot be polled: the run
            │                    exists and may be charged; a new create would meet the same
            └── DownloadRefused  an output URL did not give an image; which kind says what can help:
                ├── LinkRefused      the file host refused the link (403, 404, 410, ...):
                │                    fresh URLs from the API may help, then a new run may
                ├── NotAnImage       a body that is not PNG, JPEG or WebP (an HTML sign-in page,
                │                    an XML error, SVG, empty): fresh URLs may help; a new run
                │                    would meet the same host, so none is paid for
                └── OutputUnusable   nothing helps, neither fresh URLs nor a new run: over the
                                     size cap, a data:/file: URL or a redirect to one, too many
                                     redirects, a run that succeeded without output URLs

Every message of an ``ApiError`` that holds server text was scrubbed of the API key
and Authorization values and made printable in ``batchgen.api`` (``batchgen.text``).

A job's failure is recorded in the ledger, not raised out of the batch; only
batch-level failures (manifest, ledger, account) leave the scheduler.
"""

from __future__ import annotations

from dataclasses import dataclass


class BatchgenError(Exception):
    """Base class of every error batchgen raises on purpose."""


class UsageError(BatchgenError):
    """An option's value cannot be used; nothing was done."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a manifest, and where."""

    path: str
    line: int | None  # YAML/JSONL line or CSV row; None when the file itself is the problem
    field: str | None
    message: str
    where_kind: str = "line"  # "line" for YAML and JSONL, "row" for CSV

    def __str__(self) -> str:
        where = self.path
        if self.line is not None:
            where += f", {self.where_kind} {self.line}"
        if self.field:
            where += f", field '{self.field}'"
        return f"{where}: {self.message}"


class ManifestError(BatchgenError):
    """The manifest cannot be used; ``problems`` lists everything found, in order."""

    def __init__(self, problems: list[Problem], count: int | None = None):
        self.problems = list(problems)
        # How many problems there are: those listed, less the lines that only add to another ('... and the same
        # on 5 more rows'), plus those not listed. All that are listed when not given.
        self.count = len(self.problems) if count is None else count
        first = str(self.problems[0]) if self.problems else "invalid manifest"
        more = len(self.problems) - 1
        super().__init__(first + (f" (and {more} more)" if more > 0 else ""))


class LedgerError(BatchgenError):
    """The ledger cannot be opened, read or written."""


class LedgerBusy(LedgerError):
    """Another ``batchgen run`` holds this ledger."""


class OutputError(BatchgenError):
    """An output file cannot be written; the batch stops, nothing recorded is lost."""


class CapReached(BatchgenError):
    """What one invocation may create is used up (``--max-runs``, ``--max-credits``)."""


class ApiError(BatchgenError):
    """The API, or the network on the way to it, answered something we cannot use."""

    def __init__(self, message: str, *, status: int | None = None):
        super().__init__(message)
        self.message = message
        self.status = status


class TransientError(ApiError):
    """Worth retrying after a pause.

    ``maybe_created`` is True when a create request may have reached the server
    although no answer came back (a read timeout, a reset after sending): the
    run may exist and be paid for. ``retry_after`` is the wait in seconds the server asked
    for, if it said (a 429 or 503 of a file host).
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        maybe_created: bool = False,
        retry_after: float | None = None,
    ):
        super().__init__(message, status=status)
        self.maybe_created = maybe_created
        self.retry_after = retry_after


class RateLimited(TransientError):
    """429. ``retry_after`` is the server's wait in seconds, or None when it gave none."""

    def __init__(self, message: str, *, retry_after: float | None = None):
        super().__init__(message, status=429, retry_after=retry_after)


class FilesRefused(TransientError):
    """The file host refused the outputs of several runs in a row, fresh links too: the batch stops
    buying runs whose images it could not download (``batchgen.saving.REFUSED_STREAK``)."""


class AccountError(ApiError):
    """The account cannot create runs; more requests only burn the rate limit."""


class Unauthorized(AccountError):
    """401: the key is missing or refused."""


class OutOfCredits(AccountError):
    """402: the account has no credits left."""


class Forbidden(AccountError):
    """403: IP not allowed, or the key's spending cap is reached."""


class Misaddressed(AccountError):
    """The base URL is not where the API answers (404 or 405 to a create): no job is at fault."""


class Redirected(Misaddressed):
    """A 3xx from the API: its base URL is not where the API answers. Never followed, since the
    request carries the key; ``location`` is where the server pointed (without its query)."""

    def __init__(self, message: str, *, status: int | None = None, location: str | None = None):
        super().__init__(message, status=status)
        self.location = location


class JobError(ApiError):
    """Concerns one job or run; the batch goes on."""


class BadRequest(JobError):
    """400 on create: the API refuses this job's input."""


class RunNotFound(JobError):
    """404 on a poll: the run no longer exists."""


class RunIdRefused(RunNotFound):
    """A run id that cannot be one literal path segment (empty, control characters), or one
    the API answered about another run for: never rewritten, and no wait would help."""


class UnusableRun(JobError):
    """A create answered 2xx with an id that cannot be one URL path segment: a run was made that
    cannot be polled. Another create would be answered the same way, so none is sent."""


class DownloadRefused(JobError):
    """An output URL did not give an image; the subclass says whether fresh URLs or a new run can help."""


class LinkRefused(DownloadRefused):
    """The file host refused the link (an HTTP 4xx): fresh URLs may help, and failing that a new run."""


class NotAnImage(DownloadRefused):
    """The body is not a PNG, JPEG or WebP image: fresh URLs may help; a new run would meet it again."""


class OutputUnusable(DownloadRefused):
    """Neither fresh URLs nor a new run can help: too big, a non-http(s) URL or redirect, no URLs at all."""
