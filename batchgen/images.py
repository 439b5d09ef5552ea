"""What counts as an image: the formats the model returns, recognised by their first bytes.

Only PNG, JPEG and WebP are images; the bytes decide, never the declared content type or the
URL's suffix. ``sniff_image`` names the type, ``IMAGE_TYPES`` its file extension, and
``looks_like`` says, for a message, what a body that is not an image seems to be (its bytes
themselves are never shown). ``cut_short`` tells, from its first and last bytes, an image
that stops before its format's end (a storage host serving half an upload with a matching
Content-Length): such a body starts right and is still no image. Only a body whose first
bytes go on as a real file's do (a PNG's IHDR chunk, a JPEG's JFIF or Exif header, a WebP's
VP8 chunk) is held to its format's end; anything else that starts with an image's signature
is an image, as the API's description has it, bytes after the end included.
"""

from __future__ import annotations

# The image formats the model returns, by their first bytes; nothing else is an image.
# WebP: "RIFF", four bytes of length, "WEBP", then its first chunk's name (VP8, VP8L, VP8X).
SNIFF_BYTES = 16
IMAGE_TYPES = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}
# How a real file of each format goes on after its signature, and how it ends: PNG with its IEND
# chunk (type and CRC), JPEG with the EOI marker, both looked for among the last TAIL_BYTES (some
# writers add bytes after them), WebP where the length in its RIFF header says.
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_IHDR = b"\x00\x00\x00\rIHDR"  # bytes 8-16: the first chunk, 13 bytes long
JPEG_HEADERS = (b"JFIF\x00", b"Exif\x00")  # bytes 6-11: the name of the APP0 or APP1 segment
WEBP_CHUNK = b"VP8"  # bytes 12-15
PNG_END = b"IEND\xaeB`\x82"
JPEG_END = b"\xff\xd9"
TAIL_BYTES = 4096


def sniff_image(head: bytes) -> str | None:
    """The image type (``image/png``, ``image/jpeg``, ``image/webp``) the bytes start with, or None."""
    if head.startswith(PNG_SIGNATURE):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return None


def cut_short(content_type: str, head: bytes, tail: bytes, size: int) -> str | None:
    """What is wrong with an image of ``content_type`` (from ``sniff_image``) of ``size`` bytes,
    whose first SNIFF_BYTES are ``head`` and last TAIL_BYTES ``tail``, if it is a real file of
    its format that stops before its format's end; None otherwise (see the module docstring)."""
    if content_type == "image/png":
        if head[8:16] != PNG_IHDR or PNG_END in tail:
            return None
        return "a PNG cut short (no IEND chunk at its end)"
    if content_type == "image/jpeg":
        if head[6:11] not in JPEG_HEADERS or JPEG_END in tail:
            return None
        return "a JPEG cut short (no end-of-image marker)"
    promised = int.from_bytes(head[4:8], "little") + 8  # WebP: RIFF's length counts from byte 8
    if head[12:15] != WEBP_CHUNK or size >= promised:
        return None
    return f"a WebP cut short (its header promises {promised} bytes)"


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
