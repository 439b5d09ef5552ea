"""ReportData → one self-contained HTML page.

The page holds everything it needs: its CSS and script inline, the jobs as JSON
in a ``<script type="application/json">`` element, and images linked by paths
relative to the page, so the output folder can be zipped and opened anywhere.

Nothing that came from a manifest or a server is ever parsed as HTML: the
summary is escaped here with ``html.escape``, the JSON is written so that no
``<``, ``>`` or ``&`` appears in it literally (``</script>`` in a prompt stays
text), and the script builds cards with ``textContent`` only. Terminal control
sequences and bidirectional overrides are taken out of every string first. A
Content-Security-Policy allows only this page's own script (by hash), no
network at all, and images from the page's folder.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
import os
import re
import time
from collections.abc import Callable
from dataclasses import asdict
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..words import plural
from .data import CardState, FileStatus, JobRecord, ReportData, Summary, fix_command

# ESC [ ... final, ESC ] ... BEL/ST, and two-byte ESC sequences: what terminals interpret.
_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_])")
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_SCRIPT_ESCAPES = (
    ("<", "\\u003c"),
    (">", "\\u003e"),
    ("&", "\\u0026"),
    ("\u2028", "\\u2028"),
    ("\u2029", "\\u2029"),
)
_PLACEHOLDER = re.compile(r"\{\{([A-Z_]+)\}\}")


def clean_text(text: str) -> str:
    """``text`` without terminal escape sequences; other control characters written out (``\\x07``)."""
    if _CONTROLS.search(text) is None:  # nearly always: nothing to do
        return text
    return _CONTROLS.sub(_visible, _ANSI.sub("", text))


def _visible(match: re.Match[str]) -> str:
    return f"\\x{ord(match.group()):02x}" if ord(match.group()) < 0x100 else f"\\u{ord(match.group()):04x}"


def _cleaned(value: Any) -> Any:
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        return {clean_text(str(k)): _cleaned(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_cleaned(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def script_json(payload: Any) -> str:
    """JSON safe inside a ``<script>`` element: no ``<``, ``>``, ``&`` or line separators literally."""
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    for char, escape in _SCRIPT_ESCAPES:
        text = text.replace(char, escape)
    return text


def render_html(data: ReportData, report_path: Path) -> str:
    """The page for ``data``, with image links relative to where it will be written."""
    href = _linker(Path(data.summary.output_dir), report_path.parent.resolve())
    payload = {
        "summary": _cleaned(_summary_payload(data)),
        "states": [s.value for s in CardState],
        "jobs": [_cleaned(_job_payload(job, data.summary, href)) for job in data.jobs],
    }
    css = _asset("report.css")
    script = _asset("report.js")
    csp = "; ".join(
        (
            "default-src 'none'",
            f"script-src '{_csp_hash(script)}'",
            f"style-src '{_csp_hash(css)}'",
            "img-src 'self' file: data:",
            "base-uri 'none'",
            "form-action 'none'",
        )
    )
    values = {
        "CSP": html.escape(csp),
        "TITLE": html.escape(_title(data.summary)),
        "HEADING": html.escape(_title(data.summary)),
        "SUMMARY": _summary_html(data, report_path.parent.resolve()),
        "CSS": css,
        "SCRIPT": script,
        "DATA": script_json(payload),
    }
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], _asset("template.html"))


def _asset(name: str) -> str:
    return resources.files(__package__).joinpath("assets", name).read_text(encoding="utf-8")


def _csp_hash(text: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii")


def _linker(output_dir: Path, report_dir: Path) -> Callable[[str], str]:
    base = os.path.relpath(output_dir, report_dir)

    def href(path: str) -> str:
        relative = path if base == "." else f"{base}/{path}"
        return quote(relative.replace(os.sep, "/"), safe="/")

    return href


def _title(summary: Summary) -> str:
    name = Path(summary.manifest).name if summary.manifest else Path(summary.output_dir).name
    return clean_text(f"batchgen report: {name}")


def _summary_payload(data: ReportData) -> dict[str, Any]:
    summary = data.summary
    return {
        "manifest": summary.manifest,
        "location": summary.location_args,
        "counts": data.card_counts(),
        "generated_at": summary.generated_at,
    }


def _job_payload(job: JobRecord, summary: Summary, href: Callable[[str], str]) -> dict[str, Any]:
    files = [
        {
            "path": o.path,
            "href": None if o.status == FileStatus.OUTSIDE else href(o.path),
            "status": o.status.value,
            "bytes": o.bytes,
            "disk": o.size_on_disk,
            "sha256": o.sha256,
            "w": o.width,
            "h": o.height,
        }
        for o in job.outputs
    ]
    earlier = [
        {
            "path": e.path,
            "href": href(e.path) if e.linkable else None,
            "at": e.replaced_at,
            "exists": e.exists,
            "w": e.width,
            "h": e.height,
        }
        for e in job.earlier
    ]
    record: dict[str, Any] = {
        "id": job.job_id,
        "state": job.card_state.value,
        "ledger_state": job.state,
        "input": job.input,
        "meta": job.metadata,
        "attempts": job.attempts,
        "unknown": job.unknown_creates,
        "run": job.run_id,
        "error": job.error,
        "kind": job.error_kind,
        "source": job.source,
        "fix": fix_command(job, summary),
        "ratio": _ratio(job),
        "files": files,
        "earlier": earlier,
    }
    if job.attempt_log is not None:
        record["log"] = [asdict(a) for a in job.attempt_log]
    return record


def _ratio(job: JobRecord) -> list[int]:
    """Width and height to size the thumbnail before it loads: the file's, else the asked aspect ratio."""
    for output in job.outputs:
        if output.width and output.height:
            return [output.width, output.height]
    ratio = job.input.get("aspect_ratio")
    if isinstance(ratio, str) and re.fullmatch(r"\d{1,4}:\d{1,4}", ratio):
        width, height = (int(part) for part in ratio.split(":"))
        if width and height:
            return [width, height]
    return [1, 1]


# -- the summary, rendered here so it reads without the script ----------------------


def _summary_html(data: ReportData, report_dir: Path) -> str:
    s = data.summary
    cards = data.card_counts()
    total = len(data.jobs)
    not_recorded = "not recorded by this ledger"
    pending_note = f"{s.jobs.get('running', 0):,} with a run in flight" if s.jobs.get("running") else ""
    attempts = sum(n for k, n in s.attempts.items() if k != "creating")
    tiles = [
        ("jobs", "jobs", f"{total:,}", ""),
        ("succeeded", "succeeded", f"{cards[CardState.SUCCEEDED]:,}", ""),
        ("failed", "failed", f"{cards[CardState.FAILED]:,}", ""),
        ("pending", "pending", f"{cards[CardState.PENDING]:,}", pending_note),
        ("missing", "missing or changed files", f"{cards[CardState.MISSING]:,}", ""),
        ("runs", "runs created", f"{s.runs_created:,}", ""),
        ("attempts", "attempts", f"{attempts:,}", _detail(s.attempts)),
        ("rate-limited", "429s", _count(s.rate_limited), "" if s.rate_limited is not None else not_recorded),
        ("retries", "retries", _count(s.retries), "" if s.retries is not None else not_recorded),
        ("double", "possible double charges", f"{s.possible_double_charges:,}", "creates sent whose answer never came"),
        ("wall", "wall time of the last run", _duration(s.wall_time_s), ""),
        ("pace", "images per minute", _rate(s.images_per_minute), _images_note(s)),
        ("last-run", "last run", _when(s.last_run.started_at) if s.last_run else "never", _outcome(s)),
    ]
    parts = ['<dl class="stats">']
    for key, label, value, note in tiles:
        small = f'<dd class="note">{html.escape(note)}</dd>' if note else ""
        parts.append(
            f'<div class="stat stat-{key}" data-stat="{key}"><dt>{html.escape(label)}</dt>'
            f'<dd class="value">{html.escape(value)}</dd>{small}</div>'
        )
    parts.append("</dl>")
    # Paths relative to the page: they stay true when the folder is zipped, and name no home folder.
    images = os.path.relpath(s.output_dir, report_dir)
    where = [
        f"manifest {s.manifest}" if s.manifest else "",
        "images beside this page" if images == os.curdir else f"images in {images}",
        f"ledger {os.path.relpath(Path(s.ledger).resolve(), report_dir)}",
    ]
    generated = f"generated {_when(s.generated_at)}" + (", files verified by sha256" if s.verified else "")
    parts.append(f'<p class="where">{html.escape(clean_text(" · ".join(w for w in where if w)))}</p>')
    parts.append(f'<p class="where">{html.escape(generated)}</p>')
    return "".join(parts)


def _count(value: int | None) -> str:
    return "n/a" if value is None else f"{value:,}"


def _detail(attempts: dict[str, int]) -> str:
    return ", ".join(f"{n:,} {status}" for status, n in sorted(attempts.items()))


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def _rate(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}" if value < 100 else f"{value:,.0f}"


def _images_note(s: Summary) -> str:
    if s.images_in_last_run is None:
        return "the last run did not finish" if s.last_run else ""
    return f"{s.images_in_last_run:,} {plural(s.images_in_last_run, 'image')} saved in the last run"


def _when(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M %Z", time.localtime(epoch))


def _outcome(s: Summary) -> str:
    if s.last_run is None:
        return ""
    if s.last_run.finished_at is None:
        return "did not finish (crashed, or still running)"
    return f"finished {_when(s.last_run.finished_at)}: {s.last_run.outcome or 'unknown outcome'}"
