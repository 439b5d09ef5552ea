"""What a create request must hold: the checks the real API makes, with its 400 messages."""

from __future__ import annotations

import json
from typing import Any

from ..models import ASPECT_RATIOS, DEFAULT_MODEL, MAX_PROMPT_LENGTH, QUALITIES

INPUT_FIELDS = ("prompt", "aspect_ratio", "quality", "image_urls")


def validate_create(body: bytes) -> tuple[dict[str, Any], str | None]:
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
    unknown = sorted(set(api_input) - set(INPUT_FIELDS))
    if unknown:
        return payload, f"input.{unknown[0]} is not a parameter of {DEFAULT_MODEL}"
    return payload, None
