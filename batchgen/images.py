"""What counts as an image: the formats the model returns, recognised by their first bytes.

Only PNG, JPEG and WebP are images; the bytes decide, never the declared content type or the
URL's suffix. ``sniff_image`` names the type, ``IMAGE_TYPES`` its file extension, and
``looks_like`` says, for a message, what a body that is not an image seems to be (its bytes
themselves are never shown). ``cut_short`` tells, from its first and last bytes, an image
that stops before its format's end (a storage host serving half an upload with a matching
Content-Length): such a body starts right and is still no image.
"""

from __future__ import annotations

# The image formats the model returns, by their first bytes; nothing else is an image.
# WebP: "RIFF", four bytes of length, "WEBP".
SNIFF_BYTES = 12
IMAGE_TYPES = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}
# How each format ends: PNG with its IEND chunk (type and CRC), JPEG with the EOI marker (some
# writers pad after it, so it is looked for among the last TAIL_BYTES), WebP where the length
# in its RIFF header says.
PNG_END = b"IEND\xaeB`\x82"
JPEG_END = b"\xff\xd9"
TAIL_BYTES = 32


def sniff_image(head: bytes) -> str | None:
    """The image type (``image/png``, ``image/jpeg``, ``image/webp``) the bytes start with, or None."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return None


def cut_short(content_type: str, head: bytes, tail: bytes, size: int) -> str | None:
    """What is wrong with an image of ``content_type`` (from ``sniff_image``) of ``size`` bytes,
    whose first SNIFF_BYTES are ``head`` and last TAIL_BYTES ``tail``, if it stops before its
    format's end; None when it ends as its format does."""
    if content_type == "image/png":
        return None if tail.endswith(PNG_END) else "a PNG cut short (no IEND chunk at its end)"
    if content_type == "image/jpeg":
        return None if JPEG_END in tail else "a JPEG cut short (no end-of-image marker)"
    promised = int.from_bytes(head[4:8], "little") + 8  # WebP: RIFF's length counts from byte 8
    return None if size >= promised else f"a WebP cut short (its header promises {promised} bytes)"


def looks_like(head: bytes) -> str:
    """What a body that is not an image seems to be, for the message (its bytes are never shown)."""
    if not head:
        return "an empty body"
    start = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if start.startswith((b"<!doctype html", b"<html", b"<head", b"<body")):
        return "an HTML page"
    if b"<svg" in start:
        return "an SVG document"
    if start.startswith(b"<"):
        return "an XML document"
    if start.startswith((b"{", b"[")):
        return "JSON"
    if head.startswith(b"GIF8"):
        return "a GIF image"
    return "bytes of no accepted image format"
