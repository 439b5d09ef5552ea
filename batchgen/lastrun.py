"""``DIR/last-run.json``: the final summary of the last ``batchgen run`` on a folder, and the command that continues it.

Written atomically (a temporary file renamed over the old one) while holding the
output folder's lock, so a program reading it sees one run's whole summary or the
previous one's, and a run that found the folder busy (exit 5) leaves the running
one's summary alone. ``status`` and ``retry`` read it back to tell the user the exact
command that continues the batch.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import BatchgenError
from .folder import OutputFolder
from .models import LAST_RUN_NAME, LEDGER_NAME
from .outputs import NEW_FILE, TEMP_PREFIX, TEMP_SUFFIX

# Options of `run` that are not carried into the command that continues a batch.
_NOT_CARRIED = {"--retry-failed": 0}


def write_last_run(output_dir: Path, summary: dict[str, Any]) -> Path | None:
    """Write ``summary`` to ``output_dir/last-run.json``; None when the folder does not exist or is busy."""
    if not output_dir.is_dir():
        return None  # a run refused before it made the folder leaves nothing behind
    path = output_dir / LAST_RUN_NAME
    folder = OutputFolder(output_dir)
    try:
        folder.lock()
    except BatchgenError:
        return None  # another run holds the folder: its own summary will be written when it ends
    # A new file under a name no one could have guessed, never through a symlink under it.
    temp = output_dir / f"{TEMP_PREFIX}last-run-{secrets.token_hex(8)}{TEMP_SUFFIX}"
    try:
        data = json.dumps(summary, indent=2, ensure_ascii=False, default=str) + "\n"
        with os.fdopen(os.open(temp, NEW_FILE, 0o666), "w", encoding="utf-8") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except OSError:
        temp.unlink(missing_ok=True)
        return None
    finally:
        folder.close()
    return path


def read_last_run(output_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((output_dir / LAST_RUN_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def continue_command(
    *,
    manifest: str | None,
    output_dir: Path,
    ledger_path: Path,
    last_run: dict[str, Any] | None = None,
    cwd: Path | None = None,
) -> list[str]:
    """The ``batchgen run ...`` command (as argv) that continues the batch of ``output_dir``.

    When the folder's last-run.json records the command used, it is repeated (less
    ``--retry-failed``), prefixed by ``cd`` when it was run from another folder.
    Otherwise it is built from the ledger: the manifest path as recorded (found from
    here or next to the output folder) and ``--output``/``--ledger`` when not the defaults.
    """
    cwd = (cwd or Path.cwd()).absolute()
    if last_run is not None and not _same_folder(last_run.get("output_dir"), output_dir):
        last_run = None  # the folder was moved or copied since: its recorded command is elsewhere
    if last_run is not None and isinstance(last_run.get("argv"), list) and last_run.get("cwd"):
        argv = [str(a) for a in last_run["argv"]]
        argv = [a for a in argv if a not in _NOT_CARRIED]
        ran_in = Path(str(last_run["cwd"]))
        command = ["batchgen", *argv]
        if ran_in.absolute() != cwd:
            command = ["cd", str(ran_in), "&&", *command]
        return command
    command = ["batchgen", "run", _manifest_argument(manifest, output_dir, cwd)]
    absolute_output = output_dir.absolute()
    if absolute_output != cwd / "output":
        command += ["--output", _shown(absolute_output, cwd)]
    if ledger_path.absolute() != absolute_output / LEDGER_NAME:
        command += ["--ledger", _shown(ledger_path.absolute(), cwd)]
    return command


def shell_line(command: Sequence[str]) -> str:
    """The command as one line to paste into a shell (``&&`` left unquoted)."""
    return " ".join(part if part == "&&" else shlex.quote(part) for part in command)


def _manifest_argument(manifest: str | None, output_dir: Path, cwd: Path) -> str:
    if not manifest:
        return "MANIFEST"
    given = Path(manifest)
    if given.is_absolute():
        return _shown(given, cwd)
    for base in (cwd, output_dir.absolute().parent):
        if (base / given).is_file():
            return _shown(base / given, cwd)
    return manifest


def _same_folder(recorded: Any, output_dir: Path) -> bool:
    try:
        return isinstance(recorded, str) and Path(recorded).resolve() == output_dir.resolve()
    except OSError:
        return False


def _shown(path: Path, cwd: Path) -> str:
    """``path`` relative to ``cwd`` when it lies below it, else absolute."""
    try:
        return str(path.relative_to(cwd))
    except ValueError:
        return str(path)
