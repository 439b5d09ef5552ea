"""The Simulator: the Runbase runs API as an ASGI app (routes, accounting; output files and reference images: files.py).

Routes: POST /api/v1/runs, GET /api/v1/runs/{id}, GET /files/{id}/{n}.png (the output links,
served on another origin than the API), and the control routes under /_sim/ (see control).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import anyio
import httpx

from ..models import DEFAULT_MODEL
from .catalogue import RUN_FAULTS
from .config import SimConfig
from .control import control
from .faults import (
    CONTROL_TEXT,
    CREATE_FAULTS,
    ECHOED_STATUSES,
    ERROR_FAULTS,
    FILE_URL,
    GET_FAULTS,
    FaultDraws,
    data_url,
    error_response,
    spoil_error,
)
from .files import (
    FileHost,
    files_origin as files_origin,  # re-exported: the package exports it from here
)
from .limits import Limiter, LimitHistory, RetryAfterWatch
from .runs import RUN_ID_PREFIX, RunFacts, RunIds, SimRun, draw_facts, iso, public_id
from .validation import validate_create
from .wire import JSON, Receive, Request, Response, Scope, Send, read_request

API = ("api", "v1")
API_PREFIX = "/api/v1"
COUNTERS = (
    "create_requests", "gets", "downloads", "rate_limited_creates", "rate_limited_gets", "unauthorized",
    "payment_required", "forbidden", "bad_requests", "lost_create_answers", "auth_on_files", "adopted",
    "reference_checks", "moved", "deduplicated", "file_retry_after_violations",
)  # fmt: skip
_PLAIN_ID = re.compile(RUN_ID_PREFIX + "[a-z2-7]{50}")


def key_label(key: str) -> str:
    """How stats name an API key: never the key itself."""
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:8]


class Simulator(FileHost):
    """The Runbase API as an ASGI app. ``config`` may be changed while it runs.

    ``clock`` is the wall clock (seconds since the Unix epoch): run ids carry their creation
    time on it, so that a simulator in another process can answer for them. Tests pass a
    clock they move by hand. Times in ``stats()`` are seconds since this simulator started.
    The seed is read once, here: ids and links made under one seed stay valid.
    """

    def __init__(self, config: SimConfig | None = None, *, clock: Callable[[], float] = time.time):
        self.config = config if config is not None else SimConfig()
        self.runs: dict[str, SimRun] = {}  # by the id the client knows
        self._by_plain: dict[str, SimRun] = {}
        self._clock = clock
        self._start = clock()
        self._ids = RunIds(self.config.seed)
        self._seed = self.config.seed
        self._draws = FaultDraws(self.config.seed)
        self._lock = threading.Lock()  # stats() and add_credits() may come from another thread
        self._counts: Counter[str] = Counter()
        self._fault_counts: Counter[str] = Counter()
        self._rate_limited_by: Counter[str] = Counter()
        self._creates_per_input: Counter[str] = Counter()
        self._limiter = Limiter()
        self._watch = RetryAfterWatch()
        self._history = LimitHistory(self.config.limits(), 0.0)
        self._create_log: list[list[Any]] = []
        self._fetched_urls: set[str] = set()
        self._file_holds: dict[str, float] = {}  # file URL -> until when its 429 asked the client to wait
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

    def update_config(self, changes: dict[str, Any]) -> None:
        """Change config fields at once, after checking them all (TypeError, ValueError)."""
        updated = dataclasses.replace(self.config, **changes)  # refuses unknown fields, runs the checks
        with self._lock:
            for name in changes:  # in place: callers may hold the config object
                setattr(self.config, name, getattr(updated, name))
        self._history.note(self.config.limits(), self.now())

    def stats(self, *, logs: bool = True) -> dict[str, Any]:
        """What the simulator saw; the keys are described in the package docstring."""
        with self._lock:
            runs = list(self.runs.values())
            create_log = list(self._create_log) if logs else None
        now, wall = self.now(), self._clock()
        self._history.note(self.config.limits(), now)
        watch = self._watch
        out: dict[str, Any] = {
            **{name: self._counts[name] for name in COUNTERS},
            "creates": sum(run.created_here for run in runs),
            "faults": dict(self._fault_counts),
            "max_in_flight": self._max_in_flight,
            "in_flight_now": len(runs) - self._terminal_seen,
            "creates_per_prompt_max": max(self._creates_per_input.values(), default=0),
            "credits": self.config.credits,
            "now": round(now, 6),
            "started_at": round(self._start, 6),
            "rate_limited_by": dict(self._rate_limited_by),
            "max_unfinished_runs": self._limiter.max_unfinished,
            "retry_after_violations": sum(watch.by_key.values()),
            "retry_after_violations_by_key": dict(watch.by_key),
            "retry_after_violations_by_kind": dict(watch.by_kind),
            "limit_timeline": self._history.timeline(now),
            "runs": [run.record(wall, self._start) for run in runs],
        }
        if logs:
            out["create_log"] = create_log
            out["retry_after_violation_log"] = list(watch.log)
        return out

    # --- ASGI entry point and routing ---

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # no lifespan or websockets: servers treat a returning app as "unsupported"
        req = await read_request(scope, receive, self.now())
        path, method = req.segments, req.method
        if self.config.moved_to and path[: len(API)] == API:  # the API lives elsewhere now: 308, keep the method
            self._counts["moved"] += 1
            target = self.config.moved_to.rstrip("/") + req.path.removeprefix(API_PREFIX)
            await Response.error(308, "moved", [(b"location", target.encode())]).send(send)
        elif path[:1] == ("files",) and method == "GET":
            await self._download(req, send)
        elif path == (*API, "runs") and method == "POST":
            await self._create(req, send)
        elif len(path) == len(API) + 2 and path[:-1] == (*API, "runs") and method == "GET":
            await self._get(req, send, path[-1])
        elif path[:1] == ("_sim",):
            await control(self, req).send(send)
        elif method in ("GET", "HEAD") and path[: len(API)] != API and path[:1] != ("files",):
            await self._reference(req, send)
        else:
            await Response.json(404, {"error": "not found"}).send(send)

    def _admit(self, req: Request, kind: str) -> tuple[str, Response | None, str]:
        """Auth, then the rate limits: (the key, None, "") to go on, or (key, the 401 or 429,
        which limit refused it: kept for the stats, never sent)."""
        key, expected = req.bearer(), self.config.api_key
        if key is None or (expected is not None and key != expected):
            self._counts["unauthorized"] += 1
            missing = "authorization" not in req.headers
            return "", self._error(req, 401, "missing API key" if missing else "invalid API key"), ""
        now, config = self.now(), self.config
        self._watch.arrived(key, key_label(key), kind, req.arrived, config.violation_grace)
        limits = config.limits()
        self._history.note(limits, now)
        refusal = self._limiter.check(key, limits, now, create=kind == "create")
        if refusal is None:
            return key, None, ""
        self._counts["rate_limited_creates" if kind == "create" else "rate_limited_gets"] += 1
        self._rate_limited_by[refusal.why] += 1
        headers, advertised = config.retry_after_mode().headers(refusal.wait, self._clock())
        self._watch.refused(key, now, advertised)
        if refusal.why == "max_running":
            message = f"too many runs in progress: at most {limits.max_running} unfinished runs per API key"
        else:
            message = "rate limit exceeded"
        return key, Response.error(429, message, headers), refusal.why

    def _error(self, req: Request, status: int, message: str) -> Response:
        return self._spoil(req, Response.error(status, message))

    def _spoil(self, req: Request, response: Response) -> Response:
        """Maybe echo the request's headers and/or add escape codes to an error answer."""
        if response.status not in ECHOED_STATUSES or response.content_type != JSON:
            return response
        echo = self._draws.draw(self.config.faults, ("echo_headers",)) is not None
        escapes = self._draws.draw(self.config.faults, ("control_chars",)) is not None
        if not (echo or escapes):
            return response
        for name, hit in (("echo_headers", echo), ("control_chars", escapes)):
            if hit:
                self._inject(name)
        return spoil_error(response, req, echo=echo, control=escapes)

    def _inject(self, fault: str) -> str:
        self._fault_counts[fault] += 1
        return fault

    async def _maybe_slow(self, req: Request) -> bool:
        """Inject the "slow" fault, maybe; True if the client hung up meanwhile."""
        if not self._draws.draw(self.config.faults, ("slow",)):
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

    async def _create(self, req: Request, send: Send) -> None:
        self._counts["create_requests"] += 1
        key, refusal, why = self._admit(req, "create")
        if refusal:
            self._log_create(req, refusal, why)
            return await refusal.send(send)
        fault = self._draws.draw(self.config.faults, CREATE_FAULTS)
        run = None
        if fault in ERROR_FAULTS:
            response = self._spoil(req, error_response(self._inject(fault)))  # the run is not created
        else:
            response, run = self._create_run(req, key)
        self._log_create(req, response)
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
        if run is not None and self.config.create_redirect_to_run:  # the POST/redirect/GET pattern
            location = f"{API_PREFIX}/runs/{quote(run.id, safe='')}".encode()
            response = Response(self.config.create_redirect_to_run, b"", headers=[(b"location", location)])
        if run is not None and fault in ("reset_after_create", "malformed_json"):
            self._lose_answer(run)
            self._inject(fault)
            if fault == "malformed_json":
                response = Response(201, f'{{"id": {json.dumps(run.id)}, "status": "que'.encode())
            else:
                mode = "reset"
        await response.send(send, mode)

    def _log_create(self, req: Request, response: Response, why: str = "") -> None:
        with self._lock:
            self._create_log.append([round(req.arrived, 6), response.status, why])

    def _create_run(self, req: Request, key: str) -> tuple[Response, SimRun | None]:
        payload, problem = validate_create(req.body)
        if problem:
            self._counts["bad_requests"] += 1
            return self._error(req, 400, problem), None
        refused = self.config.refuse_prompts_containing
        if refused and refused in payload["input"]["prompt"]:
            self._counts["bad_requests"] += 1
            return self._error(req, 400, "input.prompt was refused by the content policy"), None
        if self.config.forbidden:
            self._counts["forbidden"] += 1
            return self._error(req, 403, "forbidden: the API key's spending cap is exceeded"), None
        with self._lock:
            earlier = self._same_request(payload, key)
            if earlier is not None:
                self._counts["deduplicated"] += 1
                return Response.json(200, {"id": earlier.id, "status": "queued", "model": DEFAULT_MODEL}), None
            credits = self.config.credits
            if credits is not None and credits <= 0:
                self._counts["payment_required"] += 1
                return self._error(req, 402, "insufficient credits"), None
            if credits is not None:
                self.config.credits = credits - 1
            run = self._new_run(payload["model"], payload["input"], key)
            self._register(run)
        self._run_started(key, run)
        created = {"id": run.id, "status": "queued", "model": DEFAULT_MODEL, "created_at": iso(run.facts.created)}
        return Response.json(201, created), run

    def _same_request(self, payload: dict[str, Any], key: str) -> SimRun | None:
        """With ``dedupe_creates``, the key's earlier run of exactly this request."""
        if not self.config.dedupe_creates:
            return None
        label = key_label(key)
        return next((r for r in self.runs.values() if r.input == payload["input"] and r.key == label), None)

    def _new_run(self, model: str, api_input: dict[str, Any], key: str) -> SimRun:
        # A run's fate comes from the seed, its input and how many times this process created
        # that input before, not from arrival order, so concurrent clients see the same outcomes.
        canonical = json.dumps({"model": model, "input": api_input}, sort_keys=True, separators=(",", ":"))
        self._creates_per_input[canonical] += 1
        count = self._creates_per_input[canonical]
        created_ms = math.floor(self._clock() * 1000 + 1e-6)  # never after now: a 0 s run is done at once
        facts = draw_facts(self.config, self._seed, canonical, count, created_ms, api_input, self.runs.__contains__)
        plain = self._ids.encode(facts)
        for name in RUN_FAULTS:
            if facts.has(name):
                self._inject(name)
        return SimRun(public_id(plain, facts), plain, facts, key_label(key), True, input=api_input)

    def _register(self, run: SimRun) -> None:
        self.runs[run.id] = run
        self._by_plain[run.plain_id] = run
        self._max_in_flight = max(self._max_in_flight, len(self.runs) - self._terminal_seen)

    def _run_started(self, key: str, run: SimRun) -> None:
        ready = run.facts.ready_at
        self._limiter.started(key, None if ready is None else ready - self._start, self.now())

    def _find(self, run_id: str, key: str) -> SimRun | None:
        """The run a client names, adopting one another process created (same seed)."""
        run = self.runs.get(run_id)
        if run is not None:
            return run
        match = _PLAIN_ID.search(run_id)
        facts = self._ids.decode(match[0]) if match else None
        if match is None or facts is None or public_id(match[0], facts) != run_id:
            return None  # unknown, forged, or a plain id of a run that was given an odd one
        return self._adopt(match[0], facts, key)

    def _adopt(self, plain: str, facts: RunFacts, key: str) -> SimRun:
        with self._lock:
            run = self._by_plain.get(plain)
            if run is not None:
                return run
            run = SimRun(public_id(plain, facts), plain, facts, key_label(key) if key else "", False)
            self._register(run)
            self._counts["adopted"] += 1
        if key:
            self._run_started(key, run)
        return run

    async def _get(self, req: Request, send: Send, run_id: str) -> None:
        self._counts["gets"] += 1
        key, refusal, _ = self._admit(req, "get")
        if refusal:
            return await refusal.send(send)
        run = self._find(run_id, key)
        if run is not None:
            run.polls += 1
        fault = self._draws.draw(self.config.faults, GET_FAULTS)
        status, wall = None, self._clock()
        if fault in ERROR_FAULTS:
            response = self._spoil(req, error_response(self._inject(fault)))
        elif run is None:
            response = Response.json(404, {"error": "run not found"})
        elif run.facts.has("not_found_after_create") and wall < run.facts.created + run.facts.not_found_ds / 10:
            self._inject("not_found_after_create")  # counted per answer here, per run at create
            response = Response.json(404, {"error": "run not found"})
        else:
            status = run.status(wall)
            response = Response.json(200, self._run_view(run, status, wall, req))
        if await self._maybe_slow(req):
            return  # nobody to answer
        mode = "full"
        if status is not None and fault in ("reset", "truncated", "malformed_json"):
            self._inject(fault)
            if fault == "malformed_json":
                response = Response(200, f'{{"id": {json.dumps(run_id)}, "status": "{status}", '.encode())
            else:
                mode = fault
        await response.send(send, mode)
        terminal = status in ("succeeded", "failed")
        if run is not None and terminal and mode == "full" and fault != "malformed_json":
            if run.first_terminal_get_at is None:
                run.first_terminal_get_at = self._clock()
                self._terminal_seen += 1

    def _run_view(self, run: SimRun, status: str, wall: float, req: Request) -> dict[str, Any]:
        facts = run.facts
        duration = 0.0 if facts.ready_at is None else facts.ready_at - facts.created
        view: dict[str, Any] = {
            "id": run.id,
            "status": status,
            "model": DEFAULT_MODEL,
            "created_at": iso(facts.created),
            # Fields batchgen does not know, so a client proves it ignores them.
            "metrics": {"queue_time": round(0.1 * duration, 3)},
            "logs": "",
        }
        if run.input is not None:  # only the creating process knows the input
            view["input"] = run.input
        if status in ("succeeded", "failed"):
            view["completed_at"] = iso(facts.created + duration)
            view["metrics"]["predict_time"] = round(0.9 * duration, 3)
        if status == "succeeded":
            self._add_output(view, run, wall, req)
        elif status == "failed":
            message = run.error or ""
            view["error"] = {"message": CONTROL_TEXT.format(message=message) if facts.has("control_chars") else message}
        return view

    def _add_output(self, view: dict[str, Any], run: SimRun, wall: float, req: Request) -> None:
        facts = run.facts
        if run.bare_answers < self.config.output_lag:
            run.bare_answers += 1
            view["output"] = None  # a replica that has the status and not yet the outputs
            return
        if facts.has("no_output_urls"):
            variant = facts.digest[0] % 4  # each run always answers the same way
            if variant < 3:
                view["output"] = ({"urls": []}, {}, None)[variant]
            return
        if facts.has("output_file_url"):
            urls = [FILE_URL] * facts.outputs
        elif facts.has("output_data_url"):
            urls = [data_url(run.png(n, self.config.image_scale)) for n in range(facts.outputs)]
        else:
            urls = self._output_urls(run, wall, req)
        view["output"] = {"urls": urls}
