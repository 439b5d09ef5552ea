"""The hosts other than the API that the Simulator also plays: the file host serving the output links
(signed, expiring, on another origin than the API) and the web hosts of reference images.

``FileHost`` is mixed into ``Simulator``, which provides the state and the helpers declared here."""

from __future__ import annotations

import hashlib
import hmac
import re
from collections import Counter
from collections.abc import Callable
from urllib.parse import parse_qs

from .config import SimConfig
from .faults import BODY_FAULTS, FaultDraws, hostile_body
from .runs import RunFacts, RunIds, SimRun, png
from .wire import TEXT, Request, Response, Send

REFERENCE_PNG = png(4, 4, b"reference image", b"reference")
NO_EXPIRY = 32503680000.0  # the `expires` of links when output_ttl is None: the year 3000
_FILE_NAME = re.compile(r"(\d+)\.png")
# Refusals of the file host that fresh links do not cure: what it answers under each fault.
REFUSALS = {"file_forbidden": (403, b"access denied"), "file_gone": (410, b"gone")}


class FileHost:
    """The file host's and the reference hosts' routes; mixed into ``Simulator``."""

    config: SimConfig
    _clock: Callable[[], float]
    _ids: RunIds
    _draws: FaultDraws
    _counts: Counter[str]
    _fetched_urls: set[str]
    _file_holds: dict[str, float]
    _by_plain: dict[str, SimRun]

    def _inject(self, fault: str) -> str:  # pragma: no cover - Simulator's
        raise NotImplementedError

    def _adopt(self, plain: str, facts: RunFacts, key: str) -> SimRun:  # pragma: no cover - Simulator's
        raise NotImplementedError

    async def _reference(self, req: Request, send: Send) -> None:
        """A reference image on some web host: there, unless the config lists its URL as a dead link."""
        self._counts["reference_checks"] += 1
        url = f"{req.headers.get('host', '')}{req.path}"
        if any(dead in url for dead in self.config.dead_links):
            return await Response(404, b"not found", "text/plain").send(send)
        body = b"" if req.method == "HEAD" else REFERENCE_PNG
        await Response(200, body, "image/png", [(b"x-reference", b"1")]).send(send)

    def _output_urls(self, run: SimRun, wall: float, req: Request) -> list[str]:
        # Links are minted per answer and live output_ttl seconds from then: a client holding
        # an expired link can GET the run again for fresh ones.
        origin = (self.config.files_origin or files_origin(req.headers.get("host", ""))).rstrip("/")
        if self.config.relative_output_urls:
            origin = ""
        ttl = self.config.output_ttl
        expires = f"{NO_EXPIRY if ttl is None else wall + ttl:.3f}"
        return [
            f"{origin}/files/{run.plain_id}/{n}.png?expires={expires}&sig={self._ids.sign(run.plain_id, n, expires)}"
            for n in range(run.facts.outputs)
        ]

    # --- output files ---

    async def _download(self, req: Request, send: Send) -> None:
        same_origin = self.config.relative_output_urls
        if "authorization" in req.headers and not (same_origin and self.config.files_behind_key):
            self._counts["auth_on_files"] += 1  # the client leaked its API key to the files host
        key, expected = req.bearer(), self.config.api_key
        if self.config.files_behind_key and (key is None or (expected is not None and key != expected)):
            self._counts["unauthorized"] += 1
            return await Response(401, b"missing API key", TEXT).send(send)
        run, n = self._file_run(req.segments)
        wall = self._clock()
        if run is None or n >= run.facts.outputs or run.status(wall) != "succeeded":
            return await Response(404, b"not found", TEXT).send(send)
        query = parse_qs(req.query)
        expires, sig = query.get("expires", [""])[0], query.get("sig", [""])[0]
        if not hmac.compare_digest(sig.encode(), self._ids.sign(run.plain_id, n, expires).encode()):
            return await Response(403, b"invalid signature", TEXT).send(send)
        if float(expires) < wall:
            return await Response(403, b"link expired", TEXT).send(send)
        url_key = f"{run.plain_id}/{n}?expires={expires}&sig={sig}"
        if wall < self._file_holds.get(f"{run.plain_id}/{n}", -1.0):
            self._counts["file_retry_after_violations"] += 1
        eligible: tuple[str, ...] = ("file_unavailable", "truncated", "file_rate_limited", *REFUSALS)
        if n > 0:
            eligible = ("later_output_gone", *eligible)
        if "hop" not in query:  # the target of a redirect is served straight
            eligible += ("redirect", "redirect_bad_scheme")
            if url_key not in self._fetched_urls:
                eligible = ("expire_first_fetch", *eligible)
        eligible += BODY_FAULTS
        self._fetched_urls.add(url_key)
        fault = self._draws.draw(self.config.faults, eligible)
        if fault in ("expire_first_fetch", "file_unavailable"):
            self._inject(fault)
            status, text = (403, b"link expired") if fault == "expire_first_fetch" else (503, b"unavailable")
            return await Response(status, text, TEXT).send(send)
        if fault == "file_rate_limited":
            self._inject(fault)
            self._file_holds[f"{run.plain_id}/{n}"] = wall + 1.0
            return await Response(429, b"slow down", TEXT, [(b"retry-after", b"1")]).send(send)
        if fault in REFUSALS or fault == "later_output_gone":
            self._inject(fault)
            status, text = REFUSALS.get(fault, (410, b"gone"))
            if fault == "file_gone" and self._draws.rng.random() < 0.5:
                status, text = 404, b"not found"
            return await Response(status, text, TEXT).send(send)
        if fault in ("redirect", "redirect_bad_scheme"):
            self._inject(fault)
            host = req.headers.get("host", "")
            target = f"{req.scheme}://{host}{req.path}?{req.query}&hop=1"
            if fault == "redirect_bad_scheme":
                target = self._draws.rng.choice(("file:///etc/passwd", f"ftp://{host}{req.path}"))
            return await Response(302, b"", None, [(b"location", target.encode())]).send(send)
        png = run.png(n, self.config.image_scale)
        if fault in BODY_FAULTS:
            self._inject(fault)
            response = hostile_body(fault, png, self.config.huge_body_bytes)
            if response.body != png:
                return await response.send(send)
        else:
            response = Response(200, png, "image/png")
        if fault == "truncated":
            self._inject(fault)
            return await response.send(send, "truncated")
        await response.send(send)  # the image, maybe labelled application/octet-stream: it is served
        self._counts["downloads"] += 1
        run.files.setdefault(n, {"n": n, "sha256": hashlib.sha256(png).hexdigest(), "bytes": len(png)})

    def _file_run(self, segments: tuple[str, ...]) -> tuple[SimRun | None, int]:
        if len(segments) != 3 or not (name := _FILE_NAME.fullmatch(segments[2])):
            return None, 0
        plain, n = segments[1], int(name[1])
        run = self._by_plain.get(plain)
        if run is None and (facts := self._ids.decode(plain)) is not None:
            run = self._adopt(plain, facts, "")
        return run, n


def files_origin(host: str) -> str:
    """Another origin for output files than the API's, so a leaked API key is caught."""
    for name, other in (("127.0.0.1", "localhost"), ("localhost", "127.0.0.1"), ("[::1]", "localhost")):
        if host == name or host.startswith(name + ":"):
            return "http://" + other + host[len(name) :]
    return "http://files." + host
