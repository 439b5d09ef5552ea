"""The pass over a manifest: records in, specs out, then every problem at once.

``read_jobs`` streams: it yields each valid job as soon as it is checked and,
after the last one, raises ``ManifestError`` listing every problem, so a
consumer writing inside a transaction can roll back. Jobs whose id or file
name may repeat an earlier one are held back until the end (see ``ids``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from ..models import JobSpec
from .fields import check_filename, check_id
from .ids import Claims, GeneratedIds, Suspect, repeat_message
from .problems import Invalid, Problems
from .records import Batch, JobBuilder, Record, Requests, describe_place

# Yields a manifest's records (or checked batches) and reports into the Problems it is given.
RecordSource = Callable[[Problems], Iterator[Record | Batch]]


def read_jobs(
    records: RecordSource,
    problems: Problems,
    model: str,
    *,
    build: bool,
    expected_jobs: int = 0,
    requests: bool = False,
) -> Iterator[JobSpec | Requests | int]:
    """Yield each valid job (when not building, counts of valid jobs instead), then raise if anything was wrong.

    ``requests``: a CSV chunk whose jobs all passed comes as one ``Requests`` (what they ask for, column by
    column) instead of its specs: what the plan needs, at a fraction of the cost."""
    ids, names = Claims(expected_jobs), Claims()
    generated = GeneratedIds(lambda: (job_id for _position, job_id, _where in _keys_again(records, "id", "")))
    builder = JobBuilder(problems, model, ids, names, generated)
    jobs = 0  # also each job's position in the stream
    try:
        for item in records(problems):
            if isinstance(item, Record):
                jobs += 1
                outcome = builder.check(item, jobs, build)
                if outcome is not None:
                    yield 1 if outcome is True else outcome
                continue
            built: list[JobSpec] = item.specs() if build and not requests else []
            held: set[int] = set()
            if item.ids is not None:
                payloads = _payloads(item, built) if build else _valid
                held = ids.claim_many(item.ids, item.lines, jobs + 1, payloads)
                if item.names and builder.batch_claims_names():
                    held |= _claim_names(names, item, item.ids, held, jobs + 1, payloads)
            jobs += len(item.lines)
            if not build:
                yield len(item.lines) - len(held)
                continue
            if requests and not held:
                yield item.requests()
                continue
            for position, spec in enumerate(built or item.specs()):
                if position not in held:
                    yield spec if spec.job_id else _with_generated_id(spec, generated)
    except OSError as error:
        problems.add(None, None, f"cannot read the file: {error.strerror or error}")
    if jobs == 0 and not problems:
        problems.add(None, None, "the manifest has no jobs")
    if ids.suspects or names.suspects:
        yield from _resolve(records, problems, builder, ids, names, build)
    problems.raise_if_any()


def _valid(index: int) -> bool:
    return True


def _payloads(batch: Batch, built: list[JobSpec]) -> Callable[[int], JobSpec]:
    """What a held-back job of the batch is kept as: its spec, the batch's specs built on first need."""

    def payload(index: int) -> JobSpec:
        if not built:
            built.extend(batch.specs())
        return built[index]

    return payload


def _claim_names(
    names: Claims, batch: Batch, keys: list[str], held: set[int], first: int, payloads: Callable[[int], Any]
) -> set[int]:
    """Claim a batch's ids as its file names, as JobBuilder.check does: not those already held back as ids."""
    if not held:
        return names.claim_many(keys, batch.lines, first, payloads)
    return {
        index
        for index, key in enumerate(keys)
        if index not in held and not names.claim(key, first + index, payloads(index), batch.lines[index])
    }


def _with_generated_id(spec: JobSpec, generated: GeneratedIds) -> JobSpec:
    return JobSpec(generated.generate(spec), spec.input, spec.model, spec.metadata, spec.sample, spec.filename)


def _resolve(
    records: RecordSource, problems: Problems, builder: JobBuilder, ids: Claims, names: Claims, build: bool
) -> Iterator[JobSpec | Requests | int]:
    """Name every true repeat, and release the jobs held back by a mere fingerprint collision."""
    repeated: set[int] = set()
    cleared: list[Suspect] = []
    for claims, field, kind in ((ids, "id", "id"), (names, "filename", "file name")):
        if not claims.suspects:
            continue
        repeats, fine = claims.resolve(_keys_again(records, field, problems.where_kind))
        for suspect, where, spelling in repeats:
            message = repeat_message(kind, suspect.key, spelling, where)
            row = suspect.prefix.rstrip(": ")
            if row and (where == row or where.endswith(" " + row)):  # two jobs of one row: its variants or copies
                message += f" (another variant or copy of this same row: make {field} differ by variant)"
            problems.add(suspect.line, field, suspect.prefix + message)
            repeated.add(id(suspect.payload))
        cleared += fine
    released: set[int] = set()
    for suspect in cleared:
        payload = suspect.payload
        if payload is None or id(payload) in repeated or id(payload) in released:
            continue
        released.add(id(payload))
        if isinstance(payload, tuple):
            yield builder.build(*payload) if build else 1
        else:
            yield 1 if payload is True else payload


def _keys_again(records: RecordSource, field: str, where_kind: str) -> Iterator[tuple[int, str, str]]:
    """Every valid id (or file name) of the manifest with its position and place, read again, problems ignored."""
    check: Callable[[Any], str] = check_id if field == "id" else check_filename
    position = 0
    try:
        for item in records(Problems("", "line", limit=0)):
            if isinstance(item, Batch):
                if (field == "id" or item.names) and item.ids is not None:
                    for offset, (line, key) in enumerate(zip(item.lines, item.ids, strict=True)):
                        yield position + offset + 1, key, f"{where_kind} {line}"
                position += len(item.lines)
                continue
            position += 1
            value, rule = item.values.get(field), check
            if value is None and field == "filename":  # saved under its id: its file name is that
                value, rule = item.values.get("id"), check_id
            if value is not None:
                try:
                    yield position, rule(value), describe_place(item, where_kind)
                except Invalid:
                    pass
    except OSError:
        return  # the main pass reported it
