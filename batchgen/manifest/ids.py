"""Job ids: uniqueness without holding every id in memory, and stable generated ids.

Ids must be unique ignoring case, since they become file names. Holding a
million ids in a Python set costs ~100 bytes each, so ``Claims`` keeps an
8-byte fingerprint per key in an open-addressing table (``FingerprintSet``).
A fingerprint seen before makes the key a *suspect*: the job is held back and,
once the file has been read, one more pass finds each suspect's first use. A
true repeat becomes a problem naming both places; a fingerprint collision
between two different keys (about one chance in 10^6 for 5 million keys) is
cleared and its job released after all, so the answer is always exact.

A job without ``id`` gets ``<first words of the prompt>-<10 hex of its spec hash>``,
suffixed ``-2``, ``-3``... when that is taken, so the same manifest always gives
the same ids. Generated ids avoid every explicit id in the file: only explicit ids
shaped like generated ones can clash, and those are collected exactly.
"""

from __future__ import annotations

import hashlib
import re
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NamedTuple

from ..models import SPEC_HASH_PREFIX, JobSpec

_NOT_SLUG_CHAR_RE = re.compile(r"[^A-Za-z0-9 ]+")
# What a generated id looks like (ignoring case): anything else can never equal one.
GENERATED_SHAPE_RE = re.compile(r"(?i).*-[0-9a-f]{10}(-[0-9]+)?")
_MIN_SLOTS = 1 << 12
_MAX_LOAD = 0.7


class FingerprintSet:
    """A set of 64-bit fingerprints in a flat array: 8 bytes a slot, linear probing."""

    def __init__(self, expected: int = 0):
        self._allocate(max(_MIN_SLOTS, 1 << int(expected / _MAX_LOAD).bit_length()))
        self.count = 0

    def _allocate(self, slots: int) -> None:
        self._table = array("q", bytes(8 * slots))
        self._mask = slots - 1
        self._limit = int(slots * _MAX_LOAD)

    def add_many(self, fingerprints: Sequence[int]) -> list[int]:
        """Add each (0 is not a fingerprint); return those that were already present."""
        while self.count + len(fingerprints) > self._limit:  # grow first: a full table would probe forever
            self._grow()
        table, mask = self._table, self._mask
        present: list[int] = []
        added = 0
        for fingerprint in fingerprints:
            slot = fingerprint & mask
            while True:
                current = table[slot]
                if not current:
                    table[slot] = fingerprint
                    added += 1
                    break
                if current == fingerprint:
                    present.append(fingerprint)
                    break
                slot = (slot + 1) & mask
        self.count += added
        return present

    def add(self, fingerprint: int) -> bool:
        """Add one (not 0); False when it was already present. ``add_many`` for a single value, without its lists."""
        if self.count >= self._limit:
            self._grow()
        table, mask = self._table, self._mask
        slot = fingerprint & mask
        while current := table[slot]:
            if current == fingerprint:
                return False
            slot = (slot + 1) & mask
        table[slot] = fingerprint
        self.count += 1
        return True

    def __contains__(self, fingerprint: int) -> bool:
        table, mask = self._table, self._mask
        slot = fingerprint & mask
        while (current := table[slot]) != 0:
            if current == fingerprint:
                return True
            slot = (slot + 1) & mask
        return False

    def copy(self) -> FingerprintSet:
        twin = FingerprintSet.__new__(FingerprintSet)
        twin._table, twin._mask, twin._limit, twin.count = array("q", self._table), self._mask, self._limit, self.count
        return twin

    def _grow(self) -> None:
        old = self._table
        self._allocate(2 * len(old))
        table, mask = self._table, self._mask
        for value in old:
            if value:
                slot = value & mask
                while table[slot]:
                    slot = (slot + 1) & mask
                table[slot] = value


class Suspect(NamedTuple):
    position: int  # the job's place in the manifest's stream of jobs
    key: str  # as written
    payload: Any  # what the caller held back (the job, or what builds it; None when it is invalid anyway)
    line: int  # where a problem about it is reported
    prefix: str  # put before that problem's message


class Claims:
    """Keys (ids, file names) that must be unique ignoring case; see the module docstring."""

    def __init__(self, expected: int = 0, fingerprint: Callable[[str], int] = hash):
        self._fingerprints = FingerprintSet(expected)
        self._fingerprint = fingerprint
        self.suspects: list[Suspect] = []

    def claim(self, key: str, position: int, payload: Any = None, line: int = 0, prefix: str = "") -> bool:
        """Record ``key``; False (and the key becomes a suspect) when it may be taken."""
        if not self._fingerprints.add(self._fingerprint(key.lower()) or 1):
            self.suspects.append(Suspect(position, key, payload, line or position, prefix))
            return False
        return True

    def adopt(self, other: Claims) -> None:
        """Hold every key ``other`` holds, as if each had been claimed here as well (for keys that were
        claimed in both until now, or were to be: see JobBuilder.names_follow_ids)."""
        self._fingerprints = other._fingerprints.copy()

    def claim_many(
        self, keys: list[str], lines: Sequence[int], first_position: int, payloads: Callable[[int], Any]
    ) -> set[int]:
        """Record ``keys`` (on ``lines``, at positions from ``first_position``); return the indexes held back."""
        lowered = "\n".join(keys).lower().split("\n") if all(map(str.isascii, keys)) else [k.lower() for k in keys]
        fingerprints = list(map(self._fingerprint, lowered))
        if 0 in fingerprints:  # 0 marks an empty slot
            fingerprints = [value or 1 for value in fingerprints]
        present = self._fingerprints.add_many(fingerprints)
        if not present:
            return set()
        # A value reported as often as it occurs was in the table before this batch: every use is held;
        # otherwise its first use in the batch was new and only the later ones are held.
        before = {value for value in set(present) if present.count(value) == fingerprints.count(value)}
        held: set[int] = set()
        seen: set[int] = set()
        for index, value in enumerate(fingerprints):
            if value in before or value in seen:
                held.add(index)
                suspect = Suspect(first_position + index, keys[index], payloads(index), lines[index], "")
                self.suspects.append(suspect)
            elif value in present:
                seen.add(value)
        return held

    def resolve(
        self, keys_again: Iterator[tuple[int, str, str]]
    ) -> tuple[list[tuple[Suspect, str, str]], list[Suspect]]:
        """Read every (position, key, where) again: repeats with where and how the key was first written,
        and the suspects cleared (a fingerprint collision, not a repeat)."""
        wanted = {suspect.key.lower() for suspect in self.suspects}
        first: dict[str, tuple[int, str, str]] = {}
        for position, key, where in keys_again:
            lowered = key.lower()
            if lowered in wanted and lowered not in first:
                first[lowered] = (position, key, where)
        repeats, cleared = [], []
        for suspect in self.suspects:
            position, spelling, where = first.get(suspect.key.lower(), (suspect.position, suspect.key, ""))
            if position < suspect.position:
                repeats.append((suspect, where, spelling))
            else:
                cleared.append(suspect)
        return repeats, cleared


def repeat_message(kind: str, key: str, first_spelling: str, where: str) -> str:
    if first_spelling == key:
        return f"{kind} {key!r} is already used on {where}"
    return (
        f"{kind} {key!r} differs only in letter case from {first_spelling!r} on {where}; "
        f"{'ids become file names, and ' if kind == 'id' else ''}some file systems ignore case"
    )


class GeneratedIds:
    """Allocates ``<slug>-<hash>`` ids, exactly and the same on every run."""

    def __init__(self, explicit_ids_in_file: Callable[[], Iterable[str]]):
        self._explicit_ids_in_file = explicit_ids_in_file
        self._shaped_explicit: set[str] | None = None
        # A deterministic fingerprint, unlike hash(): a collision costs a needless suffix, the same every run.
        self._taken = FingerprintSet()
        self._next_suffix: dict[str, int] = {}

    def _is_taken(self, candidate: str) -> bool:
        assert self._shaped_explicit is not None
        return candidate in self._shaped_explicit or _stable_fingerprint(candidate) in self._taken

    def generate(self, spec: JobSpec) -> str:
        if self._shaped_explicit is None:  # an explicit id may come later in the file: one pass collects them
            self._shaped_explicit = {
                job_id.lower() for job_id in self._explicit_ids_in_file() if GENERATED_SHAPE_RE.fullmatch(job_id)
            }
        base = generated_id_base(spec)
        candidate = base
        if self._is_taken(candidate):
            suffix = self._next_suffix.get(base, 2)
            while self._is_taken(candidate := f"{base}-{suffix}"):
                suffix += 1
            self._next_suffix[base] = suffix + 1
        self._taken.add_many((_stable_fingerprint(candidate),))
        return candidate


def fingerprint(text: str) -> int:
    """hash(), never 0 (the empty slot). Differs between processes: used only where exactness is checked."""
    return hash(text) or 1


def _stable_fingerprint(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little", signed=True)


def generated_id_base(spec: JobSpec) -> str:
    first_words = " ".join(spec.prompt.split(maxsplit=5)[:5])
    slug = "-".join(_NOT_SLUG_CHAR_RE.sub("", first_words).lower().split())[:40].rstrip("-") or "job"
    return f"{slug}-{spec.spec_hash()[len(SPEC_HASH_PREFIX) :][:10]}"
