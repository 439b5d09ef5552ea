"""A stand-in for the Runbase runs API, as a plain ASGI app.

Realistic enough to exercise a client (auth, validation, credits, rate limits, signed
output links on another origin), deterministic under a seed, and it records what it saw
so tests and benchmarks can assert on it. It also injects the faults that a real service
and the network in between produce. Run it in-process through ``httpx.ASGITransport`` or
over real sockets with ``SimulatorServer`` (uvicorn in a thread).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import logging
import math
import random
import re
import struct
import threading
import time
import zlib
from asyncio import CancelledError
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qs

import anyio
import httpx
import uvicorn

from .models import ASPECT_RATIOS, DEFAULT_MODEL, MAX_PROMPT_LENGTH, QUALITIES

API_PREFIX = "/api/v1"
FAULTS = (
    "http_500", "http_502_html", "http_503", "reset_after_create", "reset", "slow",
    "truncated", "malformed_json", "expire_first_fetch", "redirect", "redirect_bad_scheme",
)  # fmt: skip
_ERROR_FAULTS = ("http_500", "http_502_html", "http_503")
_CREATE_FAULTS = (*_ERROR_FAULTS, "reset_after_create", "malformed_json")
_GET_FAULTS = (*_ERROR_FAULTS, "reset", "truncated", "malformed_json")
_COUNTERS = (
    "create_requests", "gets", "downloads", "rate_limited_creates", "rate_limited_gets",
    "unauthorized", "payment_required", "forbidden", "bad_requests", "lost_create_answers",
    "auth_on_files",
)  # fmt: skip
_INPUT_FIELDS = ("prompt", "aspect_ratio", "quality", "image_urls")
_PROVIDER_SIZES = {"1:1": (1024, 1024), "3:2": (1536, 1024), "2:3": (1024, 1536)}
_FAILURE_REASONS = ("content policy violation", "model worker crashed", "upstream timeout")
# created_at timestamps are this epoch plus simulator time, so they are deterministic too.
_EPOCH = datetime(2025, 1, 1)  # UTC
_NO_EXPIRY = 1e9  # the `expires` of links when output_ttl is None
_TEXT = "text/plain; charset=utf-8"
_RUN_PATH = re.compile(API_PREFIX + r"/runs/([^/]+)")
_FILE_PATH = re.compile(r"/files/([^/]+)/(\d+)\.png")


@dataclass
class SimConfig:
    """How the simulated service behaves; fields may be changed while it runs."""

    latency: float = 0.05  # generation time in seconds (the median when latency_sigma > 0)
    latency_sigma: float = 0.0  # > 0: lognormal generation time around `latency`
    failure_rate: float = 0.0
    create_rate: float | None = None  # creates per second per key; None = unlimited
    request_rate: float | None = None  # all API requests per second per key; None = unlimited
    retry_after: bool = True  # send Retry-After on 429
    credits: int | None = None  # runs that can still be created before 402; None = unlimited
    forbidden: bool = False  # every create answers 403 (spend cap)
    api_key: str | None = None  # None: any non-empty bearer token is accepted
    output_ttl: float | None = None  # seconds an output link stays valid once handed out
    outputs_per_run: int = 1
    image_scale: float = 1 / 16  # PNG size = provider size times this
    faults: dict[str, float] = field(default_factory=dict)  # fault name -> probability per request
    stuck_rate: float = 0.0  # probability a run stays "running" forever
    seed: int = 0
    files_origin: str | None = None  # None: derived from the request's Host
    slow_seconds: float = 30.0  # the delay of the "slow" fault
    refuse_prompts_containing: str | None = None  # such prompts get 400, as a content policy would

    def __post_init__(self) -> None:
        unknown = sorted(set(self.faults) - set(FAULTS))
        if unknown:
            raise ValueError(f"unknown fault(s) {unknown}; known: {', '.join(FAULTS)}")
        for name in ("create_rate", "request_rate"):
            rate = getattr(self, name)
            if rate is not None and rate <= 0:
                raise ValueError(f"{name} must be > 0 or None")


@dataclass
class SimRun:
    """One run as the simulator sees it; its status follows from the clock."""

    id: str
    model: str
    input: dict[str, Any]
    created_at: float
    duration: float  # generation time drawn at create
    stuck: bool
    error: str | None  # set when the run is going to fail
    outputs: int
    polls: int = 0
    first_terminal_get_at: float | None = None
    answer_lost: bool = False  # the create's answer was aborted or mangled on purpose
    files: dict[int, dict[str, Any]] = field(default_factory=dict)  # n -> what was served
    pngs: dict[int, bytes] = field(default_factory=dict, repr=False)

    @property
    def ready_at(self) -> float | None:
        return None if self.stuck else self.created_at + self.duration

    def status(self, now: float) -> str:
        elapsed = now - self.created_at
        if elapsed < 0.1 * self.duration:
            return "queued"
        if self.stuck or elapsed < self.duration:
            return "running"
        return "failed" if self.error else "succeeded"

    def record(self, now: float) -> dict[str, Any]:
        return {
            "id": self.id,
            "prompt": self.input.get("prompt"),
            "input": self.input,
            "created_at": _round(self.created_at),
            "ready_at": _round(self.ready_at),
            "first_terminal_get_at": _round(self.first_terminal_get_at),
            "status": self.status(now),
            "polls": self.polls,
            "answer_lost": self.answer_lost,
            "files": [self.files[n] for n in sorted(self.files)],
        }


class SimulatedDisconnect(httpx.RemoteProtocolError):
    """Raised inside the app to abort a response. Through ASGITransport the client sees this
    (an httpx transport error); under uvicorn the connection is closed mid-response."""


@dataclass
class _Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    scheme: str
    receive: Callable


@dataclass
class _Response:
    status: int
    body: bytes = b""
    content_type: str | None = "application/json"
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)

    @classmethod
    def json(cls, status: int, payload: Any, headers: list[tuple[bytes, bytes]] | None = None) -> _Response:
        return cls(status, json.dumps(payload, separators=(",", ":")).encode(), headers=headers or [])

    @classmethod
    def error(cls, status: int, message: str, headers: list[tuple[bytes, bytes]] | None = None) -> _Response:
        return cls.json(status, {"error": {"message": message}}, headers)

    async def send(self, send: Callable, mode: str = "full") -> None:
        """Send it whole, or abort after the headers ("reset"), or stop halfway ("truncated")."""
        headers = list(self.headers) + [(b"content-length", str(len(self.body)).encode())]
        if self.content_type:
            headers.append((b"content-type", self.content_type.encode()))
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        if mode == "reset":
            raise SimulatedDisconnect("simulated connection reset")
        if mode == "truncated":
            await send({"type": "http.response.body", "body": self.body[: len(self.body) // 2], "more_body": True})
            try:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            except Exception as exc:  # a real server refuses to end a short body: drop the connection
                raise SimulatedDisconnect("simulated truncated body") from exc
            return
        await send({"type": "http.response.body", "body": self.body})


class _TokenBucket:
    def __init__(self, rate: float, now: float):
        self.tokens = max(1.0, rate)
        self.updated = now

    def wait(self, rate: float, now: float) -> float:
        """Refill at `rate` (the config may have changed) and return seconds until a token."""
        self.tokens = min(max(1.0, rate), self.tokens + (now - self.updated) * rate)
        self.updated = now
        return 0.0 if self.tokens >= 1 else (1 - self.tokens) / rate


class Simulator:
    """The Runbase API as an ASGI app. ``config`` may be changed while it runs."""

    def __init__(self, config: SimConfig | None = None, *, clock: Callable[[], float] = time.monotonic):
        self.config = config if config is not None else SimConfig()
        self.runs: dict[str, SimRun] = {}
        self._clock = clock
        self._start = clock()
        seed = self.config.seed
        self._fault_rng = random.Random(f"{seed}|faults")
        self._secret = hashlib.sha256(f"batchgen-simulator|{seed}".encode()).digest()
        self._lock = threading.Lock()  # stats() and add_credits() may come from another thread
        self._counts: Counter[str] = Counter()
        self._fault_counts: Counter[str] = Counter()
        self._creates_per_input: Counter[str] = Counter()
        self._buckets: dict[tuple[str, str], _TokenBucket] = {}
        self._fetched_urls: set[str] = set()
        self._terminal_seen = 0
        self._max_in_flight = 0

    def now(self) -> float:
        """Seconds since the simulator started, on its clock."""
        return self._clock() - self._start

    def transport(self) -> httpx.ASGITransport:
        """An httpx transport that serves every host (API and files origins) from this app."""
        return httpx.ASGITransport(app=self)

    def add_credits(self, n: int) -> None:
        with self._lock:
            if self.config.credits is not None:
                self.config.credits += n

    def stats(self) -> dict[str, Any]:
        with self._lock:
            runs = list(self.runs.values())
        now = self.now()
        return {
            **{name: self._counts[name] for name in _COUNTERS},
            "creates": len(runs),
            "faults": dict(self._fault_counts),
            "max_in_flight": self._max_in_flight,
            "in_flight_now": len(runs) - self._terminal_seen,
            "creates_per_prompt_max": max(self._creates_per_input.values(), default=0),
            "credits": self.config.credits,
            "now": _round(now),
            "runs": [run.record(now) for run in runs],
        }

    # --- ASGI entry point and routing ---

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return  # no lifespan or websockets: servers treat a returning app as "unsupported"
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        query = scope.get("query_string", b"").decode("latin-1")
        if "host" not in headers and scope.get("server"):
            headers["host"] = "{}:{}".format(*scope["server"])
        body = await _read_body(receive)
        req = _Request(scope["method"], scope["path"], query, headers, body, scope.get("scheme", "http"), receive)
        path, method = req.path, req.method
        if path.startswith("/files/") and method == "GET":
            await self._download(req, send)
        elif path == API_PREFIX + "/runs" and method == "POST":
            await self._create(req, send)
        elif (match := _RUN_PATH.fullmatch(path)) and method == "GET":
            await self._get(req, send, match[1])
        elif path.startswith("/_sim/"):
            await self._control(req).send(send)
        else:
            await _Response.json(404, {"error": "not found"}).send(send)

    def _refuse(self, req: _Request, *, create: bool) -> _Response | None:
        """401 or 429 for an API request, or None to go on (having taken its rate-limit tokens)."""
        scheme, _, key = req.headers.get("authorization", "").partition(" ")
        key, expected = key.strip(), self.config.api_key
        if scheme.lower() != "bearer" or not key or (expected is not None and key != expected):
            self._counts["unauthorized"] += 1
            missing = "authorization" not in req.headers
            return _Response.error(401, "missing API key" if missing else "invalid API key")
        now = self.now()
        limits = [("request", self.config.request_rate)]
        if create:
            limits.append(("create", self.config.create_rate))
        buckets, wait = [], 0.0
        for kind, rate in limits:
            if rate is None:
                continue
            bucket = self._buckets.setdefault((key, kind), _TokenBucket(rate, now))
            wait = max(wait, bucket.wait(rate, now))
            buckets.append(bucket)
        if wait <= 0:
            for bucket in buckets:
                bucket.tokens -= 1
            return None
        self._counts["rate_limited_creates" if create else "rate_limited_gets"] += 1
        headers = [(b"retry-after", str(max(1, math.ceil(wait))).encode())] if self.config.retry_after else []
        return _Response.error(429, "rate limit exceeded", headers)

    def _draw_fault(self, eligible: tuple[str, ...]) -> str | None:
        """The fault to inject into this request, if any. Every configured fault is drawn each
        time so that one fault's outcome does not shift the others' random sequence."""
        hit = None
        for name in eligible:
            probability = self.config.faults.get(name, 0.0)
            if probability > 0 and self._fault_rng.random() < probability and hit is None:
                hit = name
        return hit

    def _inject(self, fault: str) -> str:
        self._fault_counts[fault] += 1
        return fault

    async def _maybe_slow(self, req: _Request) -> bool:
        """Inject the "slow" fault, maybe; True if the client hung up meanwhile."""
        if not self._draw_fault(("slow",)):
            return False
        self._inject("slow")
        # Wait out slow_seconds, unless uvicorn says the client left (ASGITransport never does;
        # there a client timeout cancels this task instead).
        with anyio.move_on_after(self.config.slow_seconds):
            while (await req.receive())["type"] != "http.disconnect":
                pass
            return True
        return False

    def _lose_answer(self, run: SimRun) -> None:
        self._counts["lost_create_answers"] += 1
        run.answer_lost = True

    # --- API routes ---

    async def _create(self, req: _Request, send: Callable) -> None:
        self._counts["create_requests"] += 1
        refusal = self._refuse(req, create=True)
        if refusal:
            return await refusal.send(send)
        fault = self._draw_fault(_CREATE_FAULTS)
        run = None
        if fault in _ERROR_FAULTS:
            response = _fault_response(self._inject(fault))  # the run is not created
        else:
            response, run = self._create_run(req.body)
        # The work is done before the slow answer: a client that times out may have made a run.
        client_gone = True  # stays True if the wait is cancelled (in-process client timeout)
        try:
            client_gone = await self._maybe_slow(req)
        finally:
            if client_gone and run is not None:
                self._lose_answer(run)
        if client_gone:
            return
        mode = "full"
        if run is not None and fault in ("reset_after_create", "malformed_json"):
            self._lose_answer(run)
            self._inject(fault)
            if fault == "malformed_json":
                response = _Response(201, f'{{"id": "{run.id}", "status": "que'.encode())
            else:
                mode = "reset"
        await response.send(send, mode)

    def _create_run(self, body: bytes) -> tuple[_Response, SimRun | None]:
        payload, problem = _validate_create(body)
        if problem:
            self._counts["bad_requests"] += 1
            return _Response.error(400, problem), None
        refused = self.config.refuse_prompts_containing
        if refused and refused in payload["input"]["prompt"]:
            self._counts["bad_requests"] += 1
            return _Response.error(400, "input.prompt was refused by the content policy"), None
        if self.config.forbidden:
            self._counts["forbidden"] += 1
            return _Response.error(403, "forbidden: the API key's spending cap is exceeded"), None
        with self._lock:
            credits = self.config.credits
            if credits is not None and credits <= 0:
                self._counts["payment_required"] += 1
                return _Response.error(402, "insufficient credits"), None
            if credits is not None:
                self.config.credits = credits - 1
            run = self._new_run(payload["model"], payload["input"])
            self.runs[run.id] = run
            self._max_in_flight = max(self._max_in_flight, len(self.runs) - self._terminal_seen)
        created = {"id": run.id, "status": "queued", "model": run.model, "created_at": _iso(run.created_at)}
        return _Response.json(201, created), run

    def _new_run(self, model: str, api_input: dict[str, Any]) -> SimRun:
        # A run's id and fate come from the seed, its input and how many times that input was
        # created before, not from arrival order, so concurrent clients see the same outcomes.
        canonical = json.dumps({"model": model, "input": api_input}, sort_keys=True, separators=(",", ":"))
        self._creates_per_input[canonical] += 1
        draw_key = f"{self.config.seed}|{canonical}|{self._creates_per_input[canonical]}"
        rng = random.Random(draw_key)
        cfg = self.config
        duration = max(0.0, cfg.latency) * math.exp(cfg.latency_sigma * rng.gauss(0.0, 1.0))
        stuck = rng.random() < cfg.stuck_rate
        fails = rng.random() < cfg.failure_rate
        reason = rng.choice(_FAILURE_REASONS)
        return SimRun(
            id="run_" + hashlib.sha256(draw_key.encode()).hexdigest()[:24],
            model=model,
            input=api_input,
            created_at=self.now(),
            duration=duration,
            stuck=stuck,
            error=f"generation failed: {reason}" if fails else None,
            outputs=max(0, cfg.outputs_per_run),
        )

    async def _get(self, req: _Request, send: Callable, run_id: str) -> None:
        self._counts["gets"] += 1
        refusal = self._refuse(req, create=False)
        if refusal:
            return await refusal.send(send)
        run = self.runs.get(run_id)
        if run is not None:
            run.polls += 1
        fault = self._draw_fault(_GET_FAULTS)
        status = None
        if fault in _ERROR_FAULTS:
            response = _fault_response(self._inject(fault))
        elif run is None:
            response = _Response.json(404, {"error": "run not found"})
        else:
            now = self.now()
            status = run.status(now)
            response = _Response.json(200, self._run_view(run, status, now, req))
        if await self._maybe_slow(req):
            return  # nobody to answer
        mode = "full"
        if status is not None and fault in ("reset", "truncated", "malformed_json"):
            self._inject(fault)
            if fault == "malformed_json":
                response = _Response(200, f'{{"id": "{run_id}", "status": "{status}", '.encode())
            else:
                mode = fault
        await response.send(send, mode)
        terminal = status in ("succeeded", "failed")
        if terminal and mode == "full" and fault != "malformed_json" and run.first_terminal_get_at is None:
            run.first_terminal_get_at = self.now()
            self._terminal_seen += 1

    def _run_view(self, run: SimRun, status: str, now: float, req: _Request) -> dict[str, Any]:
        view: dict[str, Any] = {
            "id": run.id,
            "status": status,
            "model": run.model,
            "input": run.input,
            "created_at": _iso(run.created_at),
            # Fields batchgen does not know, so a client proves it ignores them.
            "metrics": {"queue_time": round(0.1 * run.duration, 3)},
            "logs": "",
        }
        if status in ("succeeded", "failed"):
            view["completed_at"] = _iso(run.created_at + run.duration)
            view["metrics"]["predict_time"] = round(0.9 * run.duration, 3)
        if status == "succeeded":
            view["output"] = {"urls": self._output_urls(run, now, req)}
        elif status == "failed":
            view["error"] = {"message": run.error}
        return view

    def _output_urls(self, run: SimRun, now: float, req: _Request) -> list[str]:
        # Links are minted per answer and live output_ttl seconds from then: a client holding
        # an expired link can GET the run again for fresh ones.
        origin = (self.config.files_origin or _files_origin(req.headers.get("host", ""))).rstrip("/")
        ttl = self.config.output_ttl
        expires = f"{_NO_EXPIRY if ttl is None else now + ttl:.3f}"
        return [
            f"{origin}/files/{run.id}/{n}.png?expires={expires}&sig={self._sign(run.id, n, expires)}"
            for n in range(run.outputs)
        ]

    def _sign(self, run_id: str, n: int, expires: str) -> str:
        return hmac.new(self._secret, f"{run_id}/{n}/{expires}".encode(), hashlib.sha256).hexdigest()

    # --- output files ---

    async def _download(self, req: _Request, send: Callable) -> None:
        if "authorization" in req.headers:
            self._counts["auth_on_files"] += 1  # the client leaked its API key to the files host
        match = _FILE_PATH.fullmatch(req.path)
        run = self.runs.get(match[1]) if match else None
        n, now = int(match[2]) if match else 0, self.now()
        if run is None or n >= run.outputs or run.status(now) != "succeeded":
            return await _Response(404, b"not found", _TEXT).send(send)
        query = parse_qs(req.query)
        expires, sig = query.get("expires", [""])[0], query.get("sig", [""])[0]
        if not hmac.compare_digest(sig.encode(), self._sign(run.id, n, expires).encode()):
            return await _Response(403, b"invalid signature", _TEXT).send(send)
        if float(expires) < now:
            return await _Response(403, b"link expired", _TEXT).send(send)
        url_key = f"{run.id}/{n}?expires={expires}&sig={sig}"
        eligible: tuple[str, ...] = ("truncated",)
        if "hop" not in query:  # the target of a redirect is served straight
            eligible += ("redirect", "redirect_bad_scheme")
            if url_key not in self._fetched_urls:
                eligible = ("expire_first_fetch", *eligible)
        self._fetched_urls.add(url_key)
        fault = self._draw_fault(eligible)
        if fault == "expire_first_fetch":
            self._inject(fault)
            return await _Response(403, b"link expired", _TEXT).send(send)
        if fault in ("redirect", "redirect_bad_scheme"):
            self._inject(fault)
            host = req.headers.get("host", "")
            target = f"{req.scheme}://{host}{req.path}?{req.query}&hop=1"
            if fault == "redirect_bad_scheme":
                target = self._fault_rng.choice(("file:///etc/passwd", f"ftp://{host}{req.path}"))
            return await _Response(302, b"", None, [(b"location", target.encode())]).send(send)
        png = run.pngs.get(n)
        if png is None:
            png = run.pngs[n] = _png_for(run, n, self.config.image_scale)
        response = _Response(200, png, "image/png")
        if fault == "truncated":
            self._inject(fault)
            return await response.send(send, "truncated")
        await response.send(send)
        self._counts["downloads"] += 1
        run.files.setdefault(n, {"n": n, "sha256": hashlib.sha256(png).hexdigest(), "bytes": len(png)})

    # --- control routes (no auth): for tests and benchmarks driving another process ---

    def _control(self, req: _Request) -> _Response:
        if req.path == "/_sim/stats" and req.method == "GET":
            return _Response.json(200, self.stats())
        if req.method != "POST" or req.path not in ("/_sim/credits", "/_sim/config"):
            return _Response.json(404, {"error": "not found"})
        try:
            payload = json.loads(req.body)
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            return _Response.error(400, "body must be a JSON object")
        if req.path == "/_sim/credits":
            add = payload.get("add")
            if not isinstance(add, int) or isinstance(add, bool):
                return _Response.error(400, "add must be an integer")
            self.add_credits(add)
            return _Response.json(200, {"credits": self.config.credits})
        try:  # replace() refuses unknown fields and runs SimConfig's checks
            updated = dataclasses.replace(self.config, **payload)
        except (TypeError, ValueError) as exc:
            return _Response.error(400, str(exc))
        with self._lock:
            for name in payload:  # update in place: callers may hold the config object
                setattr(self.config, name, getattr(updated, name))
        return _Response.json(200, dataclasses.asdict(self.config))


def _validate_create(body: bytes) -> tuple[dict[str, Any], str | None]:
    """The create request's payload, or the 400 message naming what is wrong with it."""
    try:
        payload = json.loads(body)
    except ValueError:
        return {}, "request body is not valid JSON"
    if not isinstance(payload, dict):
        return {}, "request body must be a JSON object"
    if "model" not in payload:
        return payload, "model is required"
    if payload["model"] != DEFAULT_MODEL:
        return payload, f"model: unknown model {payload['model']!r}, expected {DEFAULT_MODEL!r}"
    api_input = payload.get("input")
    if not isinstance(api_input, dict):
        return payload, "input is required and must be an object"
    prompt = api_input.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        return payload, "input.prompt is required and must be a non-empty string"
    if len(prompt) > MAX_PROMPT_LENGTH:
        return payload, f"input.prompt is longer than {MAX_PROMPT_LENGTH} characters"
    for name, allowed in (("aspect_ratio", ASPECT_RATIOS), ("quality", QUALITIES)):
        if name in api_input and api_input[name] not in allowed:
            return payload, f"input.{name} must be one of {', '.join(allowed)}"
    urls = api_input.get("image_urls", [])
    if not isinstance(urls, list) or not all(
        isinstance(url, str) and url.startswith(("http://", "https://")) for url in urls
    ):
        return payload, "input.image_urls must be a list of http(s) URLs"
    unknown = sorted(set(api_input) - set(_INPUT_FIELDS))
    if unknown:
        return payload, f"input.{unknown[0]} is not a parameter of {DEFAULT_MODEL}"
    return payload, None


def _fault_response(fault: str) -> _Response:
    if fault == "http_500":
        return _Response.error(500, "internal server error")
    if fault == "http_502_html":
        page = b"<html><body><h1>502 Bad Gateway</h1><p>upstream connect error</p></body></html>"
        return _Response(502, page, "text/html; charset=utf-8")
    return _Response(503, b"", None)


def _files_origin(host: str) -> str:
    """Another origin for output files than the API's, so a leaked API key is caught."""
    for name, other in (("127.0.0.1", "localhost"), ("localhost", "127.0.0.1"), ("[::1]", "localhost")):
        if host == name or host.startswith(name + ":"):
            return "http://" + other + host[len(name) :]
    return "http://files." + host


def _png_for(run: SimRun, n: int, scale: float) -> bytes:
    width, height = _PROVIDER_SIZES[run.input.get("aspect_ratio", "1:1")]
    seed = hashlib.sha256(f"{run.id}/{n}".encode()).digest()
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return _png(*size, seed, f"{run.id}/{n}".encode())


def _png(width: int, height: int, seed: bytes, comment: bytes) -> bytes:
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


async def _read_body(receive: Callable) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break  # the client went away
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _iso(seconds: float) -> str:
    return (_EPOCH + timedelta(seconds=seconds)).isoformat(timespec="milliseconds") + "Z"


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def _hide_injected_errors(record: logging.LogRecord) -> bool:
    """uvicorn logs each exception out of the app; those we cause on purpose (aborted answers,
    "slow" requests cancelled at shutdown) are noise."""
    if str(record.msg).startswith("Cancel %s running task"):
        return False
    return not (record.exc_info and isinstance(record.exc_info[1], (SimulatedDisconnect, CancelledError)))


class SimulatorServer:
    """Serves a Simulator over real sockets with uvicorn in a background thread."""

    def __init__(self, simulator: Simulator, host: str = "127.0.0.1", port: int = 0, startup_timeout: float = 10.0):
        self.simulator = simulator
        self.host = host
        self.port = port
        self.startup_timeout = startup_timeout
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{API_PREFIX}"

    def __enter__(self) -> SimulatorServer:
        config = uvicorn.Config(
            self.simulator, host=self.host, port=self.port, log_level="warning", lifespan="off",
            ws="none", timeout_graceful_shutdown=1,  # cancel "slow" requests still sleeping at exit
        )  # fmt: skip
        logger = logging.getLogger("uvicorn.error")
        if _hide_injected_errors not in logger.filters:
            logger.addFilter(_hide_injected_errors)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, name="batchgen-simulator", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + self.startup_timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the simulator did not start on {self.host}:{self.port}")
            time.sleep(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    def _run(self) -> None:
        try:
            self._server.run()
        except SystemExit:
            pass  # uvicorn exits when it cannot bind; __enter__ sees the thread end and raises

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self, timeout: float = 5.0) -> None:
        if self._server is None or self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(timeout)


def serve(config: SimConfig, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run the simulator until Ctrl-C, printing its base URL (for `batchgen simulate`)."""
    with SimulatorServer(Simulator(config), host, port) as server:
        try:
            stats_url = server.base_url.removesuffix(API_PREFIX) + "/_sim/stats"
            print(f"Runbase simulator at {server.base_url} (stats: {stats_url}); Ctrl-C stops it", flush=True)
            while server._thread is not None and server._thread.is_alive():
                server._thread.join(0.5)  # a timeout, so Ctrl-C gets through
        except KeyboardInterrupt:
            pass
