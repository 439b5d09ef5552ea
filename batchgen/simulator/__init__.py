"""A stand-in for the Runbase runs API, as a plain ASGI app.

Realistic enough to exercise a client (auth, validation, credits, rate limits of several
shapes, signed output links on another origin), deterministic under a seed, and it records
what it saw so tests and benchmarks can assert on it. It injects the faults that a real
service and the network in between produce, off the happy path included. Run it in-process
through ``Simulator(...).transport()`` (httpx.ASGITransport; no extra dependency) or over
real sockets with ``SimulatorServer`` (uvicorn in a thread: ``pip install 'batchgen[sim]'``).

Modules, one job each:

* ``config``: :class:`SimConfig`, every knob, checked on creation and on change.
* ``app``: :class:`Simulator`, the ASGI app: routes, runs, output files, accounting.
* ``runs``: run ids that carry their run's facts under an HMAC of the seed, so any simulator
  process with the same seed answers for any run (a resumed ``run --simulate`` works).
* ``limits``: token buckets with their own burst, rate schedules, the running cap,
  Retry-After modes, Retry-After violations.
* ``catalogue``: every fault name with what it does (:data:`CATALOGUE`); :data:`FAULTS`,
  the network and server faults a client survives by retrying (what fault plans drawn at
  random use), and :data:`OFF_PATH_FAULTS`, what a real service does off the happy path
  (hostile bodies, odd ids, echoed keys...). :data:`ALL_FAULTS` is both; SimConfig takes any.
* ``faults``: drawing faults and building the hostile answers.
* ``wire``: requests read from raw paths (one quoted segment is one id), responses.
* ``validation``: the create request's checks and 400 messages.
* ``server``: :class:`SimulatorServer` and :func:`serve` (uvicorn, imported when used).

``stats()`` (also GET /_sim/stats) returns, times in seconds since the simulator started:

* counters: ``create_requests``, ``gets``, ``downloads`` (images served whole),
  ``rate_limited_creates``, ``rate_limited_gets``, ``unauthorized``, ``payment_required``,
  ``forbidden``, ``bad_requests``, ``lost_create_answers`` (runs made whose answer was lost),
  ``auth_on_files`` (file fetches that carried an Authorization header: a leaked key),
  ``file_retry_after_violations`` (fetches of a file before its 429's Retry-After allowed),
  ``adopted`` (runs another process created that this one answered for);
* ``creates`` (runs created here), ``credits``, ``now``, ``faults`` {name: injections; the
  per-run ones once per run at create, ``not_found_after_create`` also once per 404},
  ``max_in_flight`` / ``in_flight_now`` (runs created and not yet seen terminal by a client),
  ``creates_per_prompt_max`` (most creates of one model + input);
* rate limits: ``rate_limited_by`` {"create_rate" | "request_rate" | "max_running": 429s},
  ``max_unfinished_runs`` (most unfinished runs one key had, counted at its creates),
  ``limit_timeline`` {"create_rate": [[from, rate, burst], ...], "request_rate": [...],
  "max_running": [[from, cap], ...]} (None: unlimited), ``create_log`` [[t, status, why], ...]
  for every create request (status 201 accepted, 429 refused with why "create_rate",
  "request_rate" or "max_running", or any other answer), ``retry_after_violations`` (total),
  ``retry_after_violations_by_key`` {key label: n}, ``retry_after_violations_by_kind``
  {"create" | "get": n}, ``retry_after_violation_log`` [{t, key, kind, early_by, after_429}]
  (the first 1000; see limits.RetryAfterWatch for the definition). Keys are named
  ``key-`` and 8 hex digits of their sha256, never by the key;
* ``runs``: one record per run known here: id, prompt, input, created_here, created_at,
  ready_at (None: stuck), first_terminal_get_at, status, outputs, run_faults, polls,
  answer_lost, files [{n, sha256, bytes}] (what was served whole, to compare saved files with).

``now`` is seconds since the simulator started, ``started_at`` that start on the client's
clock (seconds since the Unix epoch), to put a client's log beside the times above.

``stats(logs=False)`` (``?logs=0``) leaves out ``create_log`` and ``retry_after_violation_log``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Names are imported on first use (PEP 562): the CLI reads the catalogue for --help without
# loading httpx, and nothing here needs uvicorn until a server starts.
_EXPORTS = {
    "API_PREFIX": "app",
    "Simulator": "app",
    "files_origin": "app",
    "key_label": "app",
    "ALL_FAULTS": "catalogue",
    "CATALOGUE": "catalogue",
    "FAULTS": "catalogue",
    "OFF_PATH_FAULTS": "catalogue",
    "RUN_FAULTS": "catalogue",
    "SimConfig": "config",
    "RETRY_AFTER_MODES": "limits",
    "RateSchedule": "limits",
    "RetryAfter": "limits",
    "default_burst": "limits",
    "MissingExtra": "server",
    "ServerError": "server",
    "SimulatorServer": "server",
    "serve": "server",
    "SimulatedDisconnect": "wire",
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from .app import (
        API_PREFIX as API_PREFIX,
        Simulator as Simulator,
        files_origin as files_origin,
        key_label as key_label,
    )
    from .catalogue import (
        ALL_FAULTS as ALL_FAULTS,
        CATALOGUE as CATALOGUE,
        FAULTS as FAULTS,
        OFF_PATH_FAULTS as OFF_PATH_FAULTS,
        RUN_FAULTS as RUN_FAULTS,
    )
    from .config import SimConfig as SimConfig
    from .limits import (
        RETRY_AFTER_MODES as RETRY_AFTER_MODES,
        RateSchedule as RateSchedule,
        RetryAfter as RetryAfter,
        default_burst as default_burst,
    )
    from .server import (
        MissingExtra as MissingExtra,
        ServerError as ServerError,
        SimulatorServer as SimulatorServer,
        serve as serve,
    )
    from .wire import SimulatedDisconnect as SimulatedDisconnect


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'batchgen.simulator' has no attribute {name!r}")
