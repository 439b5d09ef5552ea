"""The bill before paying: what ``run`` would create now, and what it would cost.

``plan()`` reads the manifest and, read-only, the ledger and the reuse index,
and sends nothing. A job counts as a run to create unless the ledger already
has it done (or a run of it in flight, for the same spec), an earlier batch's
image of the very same request is in the reuse index, or an identical job
earlier in this manifest will make the image it needs.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import compress, islice, repeat
from pathlib import Path

from .errors import LedgerError
from .ledger import Ledger
from .ledger.reuse import ReuseIndex
from .manifest import Manifest, Requests
from .manifest.ids import FingerprintSet
from .models import INPUT_FIELDS, SPEC_HASH_PREFIX, JobSpec, JobState, image_input
from .pricing import Prices
from .words import plural

CHUNK = 2000
DISTINCT_AT_ONCE = 1 << 19  # fingerprints in one set at a time to count the distinct ones (about 36 MB)


@dataclass
class Line:
    runs: int = 0
    price: float | None = None  # credits per run, when known

    @property
    def credits(self) -> float | None:
        return None if self.price is None else self.price * self.runs


@dataclass
class Plan:
    jobs: int = 0
    done: int = 0  # succeeded in the ledger, spec unchanged
    in_flight: int = 0  # a run already created for it: collected, not paid again
    failed: int = 0  # failed for good (run --retry-failed to try them again)
    reusable: int = 0  # an earlier batch made the very same request
    duplicates: int = 0  # an identical job earlier in this manifest makes its image
    changed: int = 0  # of the runs: jobs the ledger holds with another prompt or options
    again: int = 0  # of the runs: jobs the ledger holds as they are (marked by retry, failed, left unfinished)
    lines: dict[tuple[str, str, str], Line] = field(default_factory=dict)  # (model, quality, ratio) -> runs

    @property
    def runs(self) -> int:
        return sum(line.runs for line in self.lines.values())

    @property
    def unpriced(self) -> int:
        """Runs with no known price."""
        return sum(line.runs for line in self.lines.values() if line.price is None)

    @property
    def credits(self) -> float | None:
        if self.unpriced:
            return None
        return sum(line.credits or 0.0 for line in self.lines.values())

    def add(self, job: JobSpec, prices: Prices) -> None:
        self.line(_line_key(job), job, prices).runs += 1

    def line(self, key: tuple[str, str, str], job: JobSpec, prices: Prices) -> Line:
        line = self.lines.get(key)
        if line is None:  # a price depends on the model and the quality only, both in the key
            line = self.lines[key] = Line(price=prices.of(job) if prices else None)
        return line


def _line_key(job: JobSpec) -> tuple[str, str, str]:
    given = job.input
    return job.model, str(given.get("quality", "(default)")), str(given.get("aspect_ratio", "(default)"))


def plan(
    jobs: Iterable[JobSpec],
    *,
    ledger_path: Path | None,
    reuse_index: ReuseIndex | None,
    prices: Prices,
    retry_failed: bool = False,
) -> Plan:
    """What a run of ``jobs`` would create now; nothing is written and nothing is sent.

    Built for a million jobs: a spec's hash (canonical JSON and sha256, the costly part) is computed
    only for jobs the ledger knows by id, or when the reuse index holds images of this service;
    identical requests within the manifest are found by an 8-byte fingerprint of the request in a
    flat table (a million jobs in 8 MB). Two different requests share a fingerprint with a chance of
    about 3·10⁻⁸ in a million jobs; the plan would then count one run too few.
    """
    result = Plan()
    ledger = _open(ledger_path)
    if reuse_index is not None and not reuse_index.holds_any():
        reuse_index = None
    seen = FingerprintSet()
    try:
        for chunk in _chunks(jobs):
            result.jobs += len(chunk)
            known = ledger.jobs_by_id((job.job_id for job in chunk), any_manifest=True) if ledger is not None else {}
            hashes: list[str | None] = [
                job.spec_hash() if reuse_index is not None or job.job_id in known else None for job in chunk
            ]
            indexed = reuse_index.known(h for h in hashes if h) if reuse_index is not None else set()
            for job, spec_hash in zip(chunk, hashes, strict=True):
                recorded = known.get(job.job_id)
                if recorded is not None and recorded[0] == spec_hash:
                    state = recorded[1]
                    if state == JobState.SUCCEEDED:
                        result.done += 1
                        continue
                    if state == JobState.RUNNING:
                        result.in_flight += 1
                        continue
                    if state == JobState.FAILED and not retry_failed:
                        result.failed += 1
                        continue
                if seen.add_many([_request_key(job)]):
                    result.duplicates += 1
                    continue
                if spec_hash in indexed and reuse_index is not None and _reusable(reuse_index, spec_hash):
                    result.reusable += 1
                    continue
                if recorded is not None:
                    if recorded[0] == spec_hash:
                        result.again += 1
                    else:
                        result.changed += 1
                result.add(job, prices)
    finally:
        if ledger is not None:
            ledger.close()
    return result


def plan_manifest(
    manifest: Manifest,
    *,
    ledger_path: Path | None,
    reuse_index: ReuseIndex | None,
    prices: Prices,
    retry_failed: bool = False,
) -> Plan:
    """``plan()`` of a manifest's jobs, the same answer. With nothing to look up (no ledger, no reuse
    index holding images of this service), read from the reader's checked columns, without specs."""
    ledger = _open(ledger_path)
    if ledger is not None:
        ledger.close()
    if ledger is None and (reuse_index is None or not reuse_index.holds_any()):
        return count_requests(manifest.requests(), prices)
    return plan(
        manifest.jobs(), ledger_path=ledger_path, reuse_index=reuse_index, prices=prices, retry_failed=retry_failed
    )


def count_requests(items: Iterable[JobSpec | Requests], prices: Prices) -> Plan:
    """The plan when nothing is known yet: every distinct request is a run, every repeat a duplicate.

    Each job leaves its request's fingerprint (8 bytes) and its line's number (4 bytes) in flat tables;
    the distinct fingerprints are counted once the manifest is read, in sets of at most half a million. Only
    when some request repeats are they counted line by line (a repeat is always on its original's line).
    """
    result = Plan()
    keys: list[tuple[str, str, str]] = []  # line number -> its key
    numbers: dict[tuple[str, str, str], int] = {}  # line key -> its number
    columns: dict[tuple[str, str, str], int] = {}  # (model, quality, ratio) as a CSV chunk has them -> line number
    fingerprints, lines = array("q"), array("I")

    def number(key: tuple[str, str, str], job: JobSpec) -> int:
        if key not in numbers:
            numbers[key] = len(keys)
            keys.append(key)
            result.line(key, job, prices)
        return numbers[key]

    for item in items:
        if isinstance(item, JobSpec):
            fingerprints.append(_request_key(item))
            lines.append(number(_line_key(item), item))
            continue
        count = len(item.prompts)
        urls = item.image_urls if item.image_urls is not None else repeat((), count)
        row_keys = list(zip(repeat(item.model), item.qualities, item.aspect_ratios, strict=False))
        for model, quality, ratio in set(row_keys).difference(columns):
            job = JobSpec("", image_input("", ratio or None, quality or None), model)
            columns[(model, quality, ratio)] = number(_line_key(job), job)
        hashed = list(
            map(hash, zip(repeat(item.model), repeat(1), item.prompts, item.aspect_ratios, item.qualities, urls))
        )
        if 0 in hashed:  # as _request_key: 0 is not a fingerprint
            hashed = [value or 1 for value in hashed]
        fingerprints.extend(hashed)
        lines.extend(map(columns.__getitem__, row_keys))
    result.jobs = len(fingerprints)
    repeats = _distinct(fingerprints) < len(fingerprints)
    for index, key in enumerate(keys):
        if repeats:  # a repeat is always on its original's line: count the distinct ones line by line
            result.lines[key].runs = _distinct(array("q", compress(fingerprints, map(index.__eq__, lines))))
        else:  # each job is a run on its line
            result.lines[key].runs = lines.count(index)
    result.duplicates = result.jobs - result.runs
    return result


def _distinct(table: array[int]) -> int:
    """How many different values ``table`` holds, with at most DISTINCT_AT_ONCE of them in a set at a time."""
    parts = 1
    while len(table) > parts * DISTINCT_AT_ONCE:
        parts *= 2
    if parts == 1:
        return len(set(table))
    if parts == 2:  # by sign: one comparison a value, and the table read once a half
        return len(set(filter((0).__gt__, table))) + len(set(filter((0).__le__, table)))
    mask = parts - 1
    return sum(len(set(compress(table, map(part.__eq__, map(mask.__and__, table))))) for part in range(parts))


def _request_key(job: JobSpec) -> int:
    """A fingerprint of what the API is asked for: equal for equal requests. Inputs of the image model's
    fields are hashed as ``count_requests`` hashes a CSV chunk's columns; other flat inputs as they are;
    anything nested goes through the spec's sha256."""
    given = job.input
    if given.keys() <= _FIELDS and all(type(value) is str for key, value in given.items() if key != "image_urls"):
        urls = given.get("image_urls")
        if urls is None or all(type(url) is str for url in urls):
            row = (job.model, job.sample, given.get("prompt"), given.get("aspect_ratio", ""), given.get("quality", ""))
            return hash((*row, tuple(urls or ()))) or 1
    items = []
    for key, value in job.input.items():
        if isinstance(value, list):
            value = tuple(value)
        items.append((key, value))
    items.sort(key=lambda item: item[0])
    try:
        return hash((job.model, job.sample, tuple(items))) or 1
    except TypeError:  # a dict somewhere inside: not hashable as it is
        spec_hash = job.spec_hash()
        return int(spec_hash[len(SPEC_HASH_PREFIX) : len(SPEC_HASH_PREFIX) + 16], 16) - (1 << 63) or 1


_FIELDS = frozenset(INPUT_FIELDS)


def _open(path: Path | None) -> Ledger | None:
    if path is None or not path.is_file():
        return None
    try:
        return Ledger(path, readonly=True)
    except LedgerError:
        return None  # a ledger of another version or a damaged one: plan as if there were none


def _reusable(index: ReuseIndex, spec_hash: str) -> bool:
    for candidate in index.find(spec_hash):
        if all(file.path.is_file() and file.path.stat().st_size == file.bytes for file in candidate.files):
            return True
    return False


def _chunks(jobs: Iterable[JobSpec]) -> Iterator[list[JobSpec]]:
    iterator = iter(jobs)
    while chunk := list(islice(iterator, CHUNK)):
        yield chunk


def describe(result: Plan) -> list[str]:
    """The plan as lines for a terminal."""
    lines = [f"{result.jobs} {plural(result.jobs, 'job')} in the manifest"]
    skipped = [
        (result.done, "already done"),
        (result.in_flight, "with a run already in flight (collected, not paid again)"),
        (result.failed, "failed for good (--retry-failed tries them again)"),
        (result.reusable, "reusing an earlier batch's image of the same request"),
        (result.duplicates, "identical to an earlier job here (made once)"),
    ]
    for count, what in skipped:
        if count:
            lines.append(f"  {count} {what}")
    kinds = [
        (result.runs - result.changed - result.again, "new"),
        (result.changed, "changed in the manifest"),
        (result.again, "retried or left unfinished"),
    ]
    told = ", ".join(f"{count} {what}" for count, what in kinds if count) if result.changed or result.again else ""
    lines.append(f"runs that would be created now: {result.runs}" + (f" ({told})" if told else ""))
    width = max((len(f"{model}  quality {q}  {r}") for model, q, r in result.lines), default=0)
    for (model, quality, ratio), line in sorted(result.lines.items()):
        label = f"{model}  quality {quality}  {ratio}".ljust(width)
        cost = (
            f"  {line.credits:g} {plural(line.credits, 'credit')}" if line.credits is not None else "  (no price given)"
        )
        lines.append(f"  {label}  {line.runs:>7} {plural(line.runs, 'run')}{cost}")
    credits = result.credits
    if credits is not None and result.lines:
        lines.append(f"credits: {credits:g}")
    elif result.unpriced:
        lines.append("credits: unknown for some runs (give their price with --price, e.g. high=2,medium=1)")
    return lines
