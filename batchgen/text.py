"""Text that came from a server, made safe to store and to show.

Two separate jobs, in this order:

* ``scrub(text, secrets)`` removes what must never be stored or shown: the API key
  (given by the caller, who knows it), the value of anything shaped like
  ``Bearer <token>`` or an ``Authorization`` header, and the query string of URLs
  (signed output links carry their credentials there). Servers do echo requests,
  headers included, in their error bodies.
* ``printable(text)`` escapes what a terminal would act on rather than show: C0 and
  C1 control characters (ESC sequences among them), DEL, bidirectional overrides and
  isolates, line and paragraph separators, lone surrogates. Each becomes a visible
  ``\\xNN`` or ``\\uNNNN``; everything else, including non-Latin text, is kept.
  It is idempotent: escaped text contains nothing it would escape again.

``server_text`` does both, collapses whitespace and shortens: what ``batchgen.api``
puts in every message and ``RunInfo`` field that holds server text.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable
from urllib.parse import quote

REDACTED = "[redacted]"
MAX_SERVER_TEXT = 300
MIN_SECRET_LENGTH = 4  # shorter "secrets" would redact ordinary words
# A key this long found in a run id or an output URL is the key, not chance: such an id or URL is
# refused (holds_secret). A shorter one is a test's key ("test", "fake-key"), which a fake server's
# ids and addresses may hold by chance (files.test): masked in text all the same, never refused.
MIN_REFUSED_SECRET_LENGTH = 16

# "Bearer <token>" anywhere, whatever the case and quoting around it.
_BEARER = re.compile(r"(?i)\b(bearer)(\s+|%20|\+)(?!\[redacted\])[^\s\"'<>,;)}\]]+")
# An Authorization header or field echoed back: "Authorization: X", "authorization=X", '"Authorization": "X"'.
# The value runs to the end of the line or to a closing quote; a scheme word before it is kept visible.
_AUTHORIZATION = re.compile(
    r"(?i)((?:proxy-)?authorization[\"']?\s*[:=]\s*[\"']?)(?!(?:\w+\s+)?\[redacted\])(?:(basic|bearer|token|digest)\s+)?[^\s\"'<>,;)}\]]+"
)
_URL_QUERY = re.compile(r"(?i)\b((?:https?|wss?|ftp)://[^\s?#\"'<>]*)\?[^\s#\"'<>]*")
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_SEPARATORS = frozenset("\u2028\u2029\x85")


def _secret_forms(secrets: Iterable[str]) -> set[str]:
    """Each secret long enough to be one, as written and as URLs and JSON may escape it."""
    return {form for secret in secrets if len(secret) >= MIN_SECRET_LENGTH for form in _forms(secret)}


@functools.lru_cache(maxsize=8)  # a run has one key: its forms are built once, not per text scrubbed
def _forms(secret: str) -> tuple[str, ...]:
    return secret, quote(secret, safe=""), quote(secret), json.dumps(secret)[1:-1]


def holds_secret(text: str, secrets: Iterable[str]) -> bool:
    """Whether ``text`` holds one of ``secrets`` of at least MIN_REFUSED_SECRET_LENGTH characters, in a
    form ``scrub`` would remove."""
    return any(form in text for form in _refused_forms(tuple(secrets)))


@functools.lru_cache(maxsize=8)  # a run has one key: its forms are built once, not per id or URL checked
def _refused_forms(secrets: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(_secret_forms(secret for secret in secrets if len(secret) >= MIN_REFUSED_SECRET_LENGTH))


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` without the given secrets, Authorization/Bearer values and URL query strings."""
    for form in _secret_forms(secrets):
        text = text.replace(form, REDACTED)
    text = _AUTHORIZATION.sub(lambda m: m[1] + (m[2] + " " if m[2] else "") + REDACTED, text)
    text = _BEARER.sub(lambda m: m[1] + " " + REDACTED, text)
    return _URL_QUERY.sub(lambda m: m[1] + "?" + REDACTED, text)


def printable(text: str) -> str:
    """``text`` with every character a terminal would act on escaped (``\\x1b``, ``\\u202e``)."""
    if text.isprintable():  # the common case, and fast: isprintable() is False for all we escape
        return text
    return "".join(_escape(ch) if _unsafe(ch) else ch for ch in text)


def _unsafe(ch: str) -> bool:
    code = ord(ch)
    return (
        code < 0x20
        or 0x7F <= code <= 0x9F
        or ch in _BIDI
        or ch in _SEPARATORS
        or 0xD800 <= code <= 0xDFFF
        or ch == "\ufeff"
    )


def _escape(ch: str) -> str:
    code = ord(ch)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def one_line(text: str, limit: int = MAX_SERVER_TEXT) -> str:
    """Whitespace collapsed to single spaces, cut to ``limit`` characters with an ellipsis."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def server_text(text: str, secrets: Iterable[str] = (), limit: int = MAX_SERVER_TEXT) -> str:
    """Server text as batchgen stores and shows it: scrubbed first (so no cut can leave part of a
    secret), then on one line and shortened, then printable."""
    return printable(one_line(scrub(text, secrets), limit))
