"""Simulated runs whose every answer follows from their id, so any simulator process can give it.

A run id is ``run_`` and 50 base32 characters holding :class:`RunFacts` (masked): when the run was
created (wall clock, milliseconds), how long it generates, whether it fails or never ends, its
aspect ratio, how many outputs it has, its per-run faults, and a digest of the seed and its
input, all sealed with an HMAC keyed by the seed. A simulator with the same seed, in this
process or a later one, verifies the seal and answers GET /runs/{id} and the id's output
links exactly as the process that created it would: the status from the clock, the same URLs,
the same image bytes. A forged or altered id is just an unknown run (404).

A batch interrupted under ``batchgen run --simulate`` therefore resumes as against the real
service: the new process polls and downloads the runs the old one created.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import random
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .faults import BARE_ODD_IDS, ODD_ID_TEMPLATES, RUN_FAULT_BITS, draw_run_faults, odd_id, run_faults

if TYPE_CHECKING:
    from .config import SimConfig

RUN_ID_PREFIX = "run_"
ASPECTS = ("1:1", "3:2", "2:3")
PROVIDER_SIZES = {"1:1": (1024, 1024), "3:2": (1536, 1024), "2:3": (1024, 1536)}
FAILURE_REASONS = ("content policy violation", "model worker crashed", "upstream timeout")
STUCK = 0xFFFFFFFF  # the duration of a run that never finishes
_VERSION = 1
# version, created ms, duration ms, failure << 4 | aspect, outputs, faults, odd template, 404 tenths, digest, seq
_LAYOUT = struct.Struct(">B6sIBBBBH4sH")
_TAG_BYTES = 8
_ID_CHARS = 50  # base32 of the packed facts and the tag, without padding


def seed_secret(seed: int) -> bytes:
    """The HMAC key of run ids and output links for a seed."""
    return hashlib.sha256(f"batchgen-simulator|{seed}".encode()).digest()


@dataclass(frozen=True)
class RunFacts:
    """Everything an id says about its run."""

    created_ms: int  # wall clock, milliseconds since the Unix epoch
    duration_ms: int  # generation time; STUCK: never finishes
    failure: int  # 0: succeeds; i > 0: fails with FAILURE_REASONS[i - 1]
    aspect: int  # index into ASPECTS
    outputs: int
    faults: int  # bit mask of faults.RUN_FAULT_BITS
    odd_template: int  # index into faults.ODD_ID_TEMPLATES (used when the odd_run_id bit is set)
    not_found_ds: int  # tenths of a second the run answers 404 after its create (with its fault bit)
    digest: bytes  # 4 bytes of sha256(seed, model, input): equal inputs, equal digests
    seq: int  # tells apart runs of one input created in the same millisecond

    @property
    def created(self) -> float:
        return self.created_ms / 1000

    @property
    def ready_at(self) -> float | None:
        return None if self.duration_ms == STUCK else (self.created_ms + self.duration_ms) / 1000

    def has(self, fault: str) -> bool:
        return bool(self.faults & RUN_FAULT_BITS[fault])


def _pack(facts: RunFacts) -> bytes:
    flags = facts.failure << 4 | facts.aspect
    return _LAYOUT.pack(
        _VERSION,
        facts.created_ms.to_bytes(6, "big"),
        facts.duration_ms,
        flags,
        facts.outputs,
        facts.faults,
        facts.odd_template,
        facts.not_found_ds,
        facts.digest,
        facts.seq,
    )


class RunIds:
    """Makes and checks run ids and output link signatures for one seed."""

    def __init__(self, seed: int) -> None:
        self._secret = seed_secret(seed)

    def encode(self, facts: RunFacts) -> str:
        payload = _pack(facts)
        tag = hmac.new(self._secret, payload, hashlib.sha256).digest()[:_TAG_BYTES]
        return RUN_ID_PREFIX + base64.b32encode(self._mask(payload, tag) + tag).decode().rstrip("=").lower()

    def _mask(self, data: bytes, tag: bytes) -> bytes:
        """XOR with a keystream drawn from the tag, so ids look as unrelated as real ones do."""
        stream = hashlib.sha256(self._secret + b"|mask|" + tag).digest()
        return bytes(a ^ b for a, b in zip(data, stream, strict=False))

    def decode(self, run_id: str) -> RunFacts | None:
        """The facts of a plain id this seed made, or None (malformed, forged, another seed)."""
        body = run_id.removeprefix(RUN_ID_PREFIX)
        if len(body) != _ID_CHARS or not run_id.startswith(RUN_ID_PREFIX) or not body.isalnum():
            return None
        try:
            raw = base64.b32decode(body.upper() + "=" * (-len(body) % 8))
        except ValueError:
            return None
        tag = raw[-_TAG_BYTES:]
        payload = self._mask(raw[:-_TAG_BYTES], tag)
        expected = hmac.new(self._secret, payload, hashlib.sha256).digest()[:_TAG_BYTES]
        if len(payload) != _LAYOUT.size or not hmac.compare_digest(tag, expected):
            return None
        version, created, duration, flags, outputs, faults, odd, not_found, digest, seq = _LAYOUT.unpack(payload)
        if version != _VERSION or flags & 0xF >= len(ASPECTS):
            return None
        return RunFacts(
            int.from_bytes(created, "big"),
            duration,
            flags >> 4,
            flags & 0xF,
            outputs,
            faults,
            odd,
            not_found,
            digest,
            seq,
        )

    def sign(self, plain_id: str, n: int, expires: str) -> str:
        return hmac.new(self._secret, f"{plain_id}/{n}/{expires}".encode(), hashlib.sha256).hexdigest()


@dataclass
class SimRun:
    """A run this process created or answered for: its facts and what this process saw of it."""

    id: str  # as the client knows it (an odd id when that fault hit it)
    plain_id: str  # run_...: the id in its output links
    facts: RunFacts
    key: str  # label of the API key that created or first polled it
    created_here: bool
    input: dict[str, Any] | None = None  # known only to the process that created it
    polls: int = 0
    bare_answers: int = 0  # succeeded answers given without output URLs (SimConfig.output_lag)
    first_terminal_get_at: float | None = None  # wall clock
    answer_lost: bool = False  # the create's answer was aborted or mangled on purpose
    files: dict[int, dict[str, Any]] = field(default_factory=dict)  # n -> what was served
    pngs: dict[int, bytes] = field(default_factory=dict, repr=False)

    @property
    def aspect_ratio(self) -> str:
        return ASPECTS[self.facts.aspect]

    @property
    def error(self) -> str | None:
        return f"generation failed: {FAILURE_REASONS[self.facts.failure - 1]}" if self.facts.failure else None

    def status(self, now: float) -> str:
        """queued for the first tenth of the generation time, then running, then its outcome."""
        elapsed_ms = now * 1000 - self.facts.created_ms
        if self.facts.duration_ms == STUCK:
            return "queued" if elapsed_ms < 0 else "running"
        if elapsed_ms < 0.1 * self.facts.duration_ms:
            return "queued"
        if elapsed_ms < self.facts.duration_ms:
            return "running"
        return "failed" if self.facts.failure else "succeeded"

    def png(self, n: int, scale: float) -> bytes:
        png = self.pngs.get(n)
        if png is None:
            png = self.pngs[n] = png_for(self.plain_id, n, self.aspect_ratio, scale)
        return png

    def record(self, now: float, start: float) -> dict[str, Any]:
        """What stats() shows of it; times in seconds since the simulator started."""
        facts = self.facts
        return {
            "id": self.id,
            "prompt": self.input.get("prompt") if self.input else None,
            "input": self.input,
            "created_here": self.created_here,
            "created_at": _since(facts.created, start),
            "ready_at": _since(facts.ready_at, start),
            "first_terminal_get_at": _since(self.first_terminal_get_at, start),
            "status": self.status(now),
            "outputs": facts.outputs,
            "run_faults": run_faults(facts.faults),
            "polls": self.polls,
            "answer_lost": self.answer_lost,
            "files": [self.files[n] for n in sorted(self.files)],
        }


def draw_facts(
    config: SimConfig,
    seed: int,
    canonical: str,
    count: int,
    created_ms: int,
    api_input: dict[str, Any],
    taken: Callable[[str], bool],
) -> RunFacts:
    """The facts of a new run, drawn from the seed, its canonical model + input and how many
    times it was created before (``count``); ``taken`` says whether an id is in use."""
    rng = random.Random(f"{seed}|{canonical}|{count}")
    duration = max(0.0, config.latency) * math.exp(config.latency_sigma * rng.gauss(0.0, 1.0))
    stuck = rng.random() < config.stuck_rate
    fails = rng.random() < config.failure_rate
    reason = rng.randrange(len(FAILURE_REASONS))
    outputs = rng.randint(*config.outputs_range())
    faults = draw_run_faults(config.faults, rng)
    template = rng.randrange(len(ODD_ID_TEMPLATES))
    if ODD_ID_TEMPLATES[template] in BARE_ODD_IDS and taken(ODD_ID_TEMPLATES[template]):
        template += len(BARE_ODD_IDS)  # each bare id names one run only
    return RunFacts(
        created_ms=created_ms,
        duration_ms=STUCK if stuck else min(STUCK - 1, round(duration * 1000)),
        failure=1 + reason if fails else 0,
        aspect=ASPECTS.index(api_input.get("aspect_ratio", "1:1")),
        outputs=outputs,
        faults=faults,
        odd_template=template,
        not_found_ds=round(config.not_found_seconds * 10),
        digest=hashlib.sha256(f"{seed}|{canonical}".encode()).digest()[:4],
        seq=count % 65536,
    )


def public_id(plain_id: str, facts: RunFacts) -> str:
    return odd_id(facts.odd_template, plain_id) if facts.has("odd_run_id") else plain_id


def iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _since(value: float | None, start: float) -> float | None:
    return None if value is None else round(value - start, 6)


def png_for(plain_id: str, n: int, aspect_ratio: str, scale: float) -> bytes:
    width, height = PROVIDER_SIZES[aspect_ratio]
    seed = hashlib.sha256(f"{plain_id}/{n}".encode()).digest()
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return png(*size, seed, f"{plain_id}/{n}".encode())


def png(width: int, height: int, seed: bytes, comment: bytes) -> bytes:
    """A valid RGB PNG: a checkerboard whose colours and cell size come from `seed`."""
    colours, cell = (seed[0:3], seed[3:6]), 1 + seed[6] % 8
    rows = [b"\x00" + b"".join(colours[(x // cell + phase) % 2] for x in range(width)) for phase in (0, 1)]
    raw = b"".join(rows[(y // cell) % 2] for y in range(height))
    chunks = [
        (b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)),  # 8-bit RGB
        (b"tEXt", b"Comment\x00" + comment),
        (b"IDAT", zlib.compress(raw)),
        (b"IEND", b""),
    ]
    return b"\x89PNG\r\n\x1a\n" + b"".join(
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data)) for kind, data in chunks
    )
