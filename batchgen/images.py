"""What counts as an image: the formats the model returns, recognised by their first bytes.

Only PNG, JPEG and WebP are images; the bytes decide, never the declared content type or the
URL's suffix. ``sniff_image`` names the type, ``IMAGE_TYPES`` its file extension, and
``looks_like`` says, for a message, what a body that is not an image seems to be (its bytes
themselves are never shown).
"""

from __future__ import annotations

# The image formats the model returns, by their first bytes; nothing else is an image.
# WebP: "RIFF", four bytes of length, "WEBP".
SNIFF_BYTES = 12
IMAGE_TYPES = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}


def sniff_image(head: bytes) -> str | None:
    """The image type (``image/png``, ``image/jpeg``, ``image/webp``) the bytes start with, or None."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return None


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
