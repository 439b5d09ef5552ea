"""The fault catalogue: what a real service and the network in between do off the happy path.

``SimConfig.faults`` maps a fault name to a probability. Two kinds of draw:

* **Per request** (create, poll, file fetch, error answer): drawn from the simulator's own
  random sequence, seeded by ``seed``, at each eligible request. Every configured fault is drawn
  each time, so one fault's outcome never shifts another's sequence; the same requests in the
  same order meet the same faults.
* **Per run** (the names in ``RUN_FAULTS``): drawn once when the run is created, from a
  random sequence seeded by the seed and the run's input, and written into the run's id, so
  every poll, and every simulator process with the same seed, agrees on them.

:data:`~batchgen.simulator.catalogue.CATALOGUE` describes each fault.
"""

from __future__ import annotations

import base64
import json
import random
from collections.abc import Iterator, Mapping

from .catalogue import RUN_FAULTS
from .wire import TEXT, Request, Response

RUN_FAULT_BITS = {name: 1 << i for i, name in enumerate((*RUN_FAULTS, "control_chars"))}

ERROR_FAULTS = ("http_500", "http_502_html", "http_503")
CREATE_FAULTS = (*ERROR_FAULTS, "reset_after_create", "malformed_json")
GET_FAULTS = (*ERROR_FAULTS, "reset", "truncated", "malformed_json")
BODY_FAULTS = (
    "body_html_login", "body_xml_error", "body_empty", "body_svg_script", "body_huge", "body_bin", "png_octet_stream",
    "body_cut_image",
)  # fmt: skip
ECHOED_STATUSES = (400, 401, 402, 403, 500)

# Ids that a client which lets URL handling rewrite paths would send somewhere else. "{id}" is
# the run's plain id, so that any process can still find the run; the bare "." and ".." can
# carry nothing and are known only to the process that handed them out.
ODD_ID_TEMPLATES = (
    ".", "..", "{id}/..", "../{id}", "./{id}", "a/{id}", "?{id}", "{id}?x=1", "{id}#top", "{id}%2e",
    "%2e%2e%2f{id}", "{id}/",
)  # fmt: skip
BARE_ODD_IDS = (".", "..")
FILE_URL = "file:///etc/passwd"

# ESC[2J clears the screen, ESC]0;...BEL retitles the terminal, ESC[31m paints red, CR rewrites the line.
CONTROL_TEXT = "\x1b[2J\x1b[H\x1b]0;batchgen pwned\x07\x1b[31m{message}\x1b[0m\r\x1b[Kfake: all jobs succeeded"

LOGIN_PAGE = (
    b"<!DOCTYPE html><html><head><title>Sign in</title></head><body><h1>Sign in to continue</h1>"
    b'<form action="/login" method="post"><input name="email"><input name="password" type="password">'
    b"<button>Sign in</button></form></body></html>"
)
XML_ERROR = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
    b"<Message>Request has expired</Message><RequestId>4442587FB7D0A2F9</RequestId></Error>"
)
SVG_SCRIPT = (
    b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="64" height="64">'
    b'<script type="text/javascript">alert(document.domain)</script><rect width="64" height="64"/></svg>'
)
HUGE_CHUNK = 1 << 20


class FaultDraws:
    """The per-request sequence of fault draws (see the module docstring)."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(f"{seed}|faults")

    def draw(self, faults: Mapping[str, float], eligible: tuple[str, ...]) -> str | None:
        hit = None
        for name in eligible:
            probability = faults.get(name, 0.0)
            if probability > 0 and self.rng.random() < probability and hit is None:
                hit = name
        return hit


def draw_run_faults(faults: Mapping[str, float], rng: random.Random) -> int:
    """The per-run faults of a new run, as a bit mask; ``rng`` is the run's own sequence."""
    mask = 0
    for name, bit in RUN_FAULT_BITS.items():
        if rng.random() < faults.get(name, 0.0):
            mask |= bit
    return mask


def run_faults(mask: int) -> list[str]:
    return [name for name, bit in RUN_FAULT_BITS.items() if mask & bit]


def odd_id(template: int, plain_id: str) -> str:
    return ODD_ID_TEMPLATES[template].replace("{id}", plain_id)


def error_response(fault: str) -> Response:
    """The answer of one of :data:`ERROR_FAULTS`."""
    if fault == "http_500":
        return Response.error(500, "internal server error")
    if fault == "http_502_html":
        page = b"<html><body><h1>502 Bad Gateway</h1><p>upstream connect error</p></body></html>"
        return Response(502, page, "text/html; charset=utf-8")
    return Response(503, b"", None)


def spoil_error(response: Response, req: Request, *, echo: bool, control: bool) -> Response:
    """An error answer with the request's headers echoed and/or escape codes in its message."""
    try:
        payload = json.loads(response.body)
        message = str(payload["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return response
    error: dict[str, object] = {"message": message}
    if echo:
        headers = "; ".join(f"{name}: {value}" for name, value in req.headers.items())
        error["message"] = f"{message} (request {req.method} {req.path} with headers {headers})"
        error["request"] = {"method": req.method, "path": req.path, "headers": dict(req.headers)}
    if control:
        error["message"] = CONTROL_TEXT.format(message=error["message"])
    return Response.json(response.status, {"error": error}, response.headers)


def hostile_body(fault: str, png: bytes, huge_bytes: int) -> Response:
    """What a file fetch answers under one of :data:`BODY_FAULTS` instead of the image."""
    if fault == "body_html_login":
        return Response(200, LOGIN_PAGE, "text/html; charset=utf-8")
    if fault == "body_xml_error":
        return Response(200, XML_ERROR, "application/xml")
    if fault == "body_empty":
        return Response(200, b"", "image/png")
    if fault == "body_svg_script":
        return Response(200, SVG_SCRIPT, "image/svg+xml")
    if fault == "body_huge":
        return Response(200, content_type="image/png", chunks=_huge(png, huge_bytes), length=None)
    disposition = [(b"content-disposition", b'attachment; filename="output.bin"')]
    if fault == "body_bin":
        noise = random.Random(png).randbytes(4096)  # no image format starts like this
        return Response(200, b"\x00BIN" + noise, "application/octet-stream", disposition)
    if fault == "png_octet_stream":
        return Response(200, png, "application/octet-stream")
    if fault == "body_cut_image":  # PNG signature and header intact, the image data and IEND missing
        return Response(200, png[: len(png) // 2], "image/png")
    return Response(500, f"unknown body fault {fault}".encode(), TEXT)  # pragma: no cover


def _huge(png: bytes, size: int) -> Iterator[bytes]:
    """``size`` bytes that start as a PNG (signature and header) and go on as zeros. The same
    chunk object is sent again and again, so this holds 1 MiB whatever ``size`` is."""
    head = png[:33]  # signature and IHDR: it looks like an image to a check of the first bytes
    zeros = bytes(HUGE_CHUNK)
    first = head + zeros[len(head) :]
    sent = 0
    while sent < size:
        chunk = first if sent == 0 else zeros
        chunk = chunk[: size - sent] if size - sent < len(chunk) else chunk
        sent += len(chunk)
        yield chunk


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()
