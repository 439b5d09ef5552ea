"""Before a batch runs: the ledger repaired from the folder's journal, and the files it lists checked.

* ``repair``: what the folder's journal (folder.py) recorded after the point the
  ledger's commits reach — the ledger was deleted, emptied, or lost its ``-wal``
  — is put back: a run the ledger forgot is polled again (or, when its images
  are all in the folder with the bytes recorded, adopted) instead of paid for
  twice; a create whose answer never came is counted as a possible double
  charge, and one the API refused (a 429) is forgotten, as it would have been.
* ``unknown_images``: with a ledger that has never seen a job, images in the
  folder that its journal does not list are someone else's: the runner
  refuses to write among them unless told to.
* ``check_files``: every file the ledger lists for a succeeded job is still
  there with its size; a missing or changed one is fetched again from its run
  (free while the run's URLs work), never paid for again without being asked.
"""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .folder import OutputFolder
from .ledger import Ledger
from .models import AttemptStatus, JobState, SavedOutput
from .outputs import UnsafeName, in_plain_folders, lookup_below, output_path
from .words import plural

HASH_CHUNK = 1 << 20


@dataclass
class Repair:
    runs_reopened: int = 0
    images_adopted: int = 0
    lost_creates: int = 0
    examples: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.runs_reopened or self.images_adopted or self.lost_creates)

    def describe(self) -> str:
        parts = []
        if self.images_adopted:
            parts.append(f"{self.images_adopted} {plural(self.images_adopted, 'image')} already in the folder adopted")
        if self.runs_reopened:
            parts.append(f"{self.runs_reopened} {plural(self.runs_reopened, 'run')} it had lost polled again")
        if self.lost_creates:
            parts.append(
                f"{self.lost_creates} {plural(self.lost_creates, 'create')} "
                "without an answer counted as possible double charges"
            )
        return "the ledger was behind the output folder's journal: " + ", ".join(parts) + "; nothing paid twice"


def needs_repair(ledger: Ledger, folder: OutputFolder) -> bool:
    """True when the journal holds events past the point the ledger's commits reach."""
    try:
        size = folder.journal_path.stat().st_size
    except FileNotFoundError:
        return False
    return size > ledger.journal_offset(folder.folder_id)


def unknown_images(folder: OutputFolder) -> list[str]:
    """Images in the folder that no journal line accounts for."""
    listed = {entry.data.get("path") for entry in folder.read_journal() if entry.event == "file"}
    return sorted(path for path in folder.images() if path not in listed)


def repair(ledger: Ledger, folder: OutputFolder) -> Repair:
    """Put back what the ledger lost; see the module docstring. Queues the writes and flushes them."""
    folder_id = folder.folder_id
    begun: dict[int, dict[str, Any]] = {}
    answered: set[int] = set()
    voided: dict[int, str] = {}  # attempt id -> its job: refused before any run was made
    runs: dict[str, dict[str, Any]] = {}  # run id -> its run line
    files: dict[str, dict[int, dict[str, Any]]] = defaultdict(dict)  # run id -> n -> file line
    highest, end = 0, ledger.journal_offset(folder_id)
    for entry in folder.read_journal(end):
        end, data = entry.offset, entry.data
        attempt = data.get("a")
        if isinstance(attempt, int):
            highest = max(highest, attempt)
        if entry.event == "attempt" and isinstance(attempt, int):
            begun[attempt] = data
        elif entry.event in ("run", "void") and isinstance(attempt, int):
            answered.add(attempt)
            if entry.event == "run" and isinstance(data.get("run"), str):
                runs[data["run"]] = data
            elif entry.event == "void" and isinstance(data.get("job"), str):
                voided[attempt] = data["job"]
        elif entry.event == "file" and isinstance(data.get("run"), str) and isinstance(data.get("n"), int):
            files[data["run"]][data["n"]] = data
    report = Repair()
    ledger.reserve_attempt_ids(highest)  # before anything below hands out an attempt id
    known = ledger.attempts_by_id([*begun, *voided, *(line["a"] for line in runs.values())])
    jobs = ledger.jobs_by_id([*(line["job"] for line in begun.values()), *(line["job"] for line in runs.values())])
    output_dir = Path(ledger.output_dir or folder.path)
    for run_id, line in runs.items():
        job = jobs.get(line["job"])
        status, recorded_run = known.get(line["a"], (None, None))
        if job is None or job[0] != line.get("h") or recorded_run == run_id or job[1] == JobState.SUCCEEDED:
            continue  # not this manifest's job as it is now, or the ledger already knows the run
        saved = _complete_files(output_dir, files.get(run_id, {}))
        if saved:
            ledger.job_satisfied(
                line["job"], line["h"], saved, status=AttemptStatus.ADOPTED, run_id=run_id, note="found in the folder"
            )
            report.images_adopted += len(saved)
        else:
            ledger.reopen_run(line["job"], line["h"], line["a"], run_id, float(line.get("t", 0.0)))
            report.runs_reopened += 1
        report.examples.append(line["job"])
    for attempt, job_id in voided.items():
        if known.get(attempt, ("", None))[0] == "creating":  # committed, then refused: no run to count as unknown
            ledger.not_created(attempt, job_id)
    for attempt, line in begun.items():
        job = jobs.get(line["job"])
        if attempt in answered or attempt in known or job is None or job[0] != line.get("h"):
            continue
        ledger.lost_create(line["job"], line["h"], attempt)
        report.lost_creates += 1
    ledger.set_journal_offset(folder_id, end)
    ledger.flush()
    return report


def _complete_files(output_dir: Path, lines: dict[int, dict[str, Any]]) -> list[SavedOutput]:
    """The run's files if every one of them, 0..k, is in the folder with the recorded bytes; else none."""
    if not lines or sorted(lines) != list(range(len(lines))):
        return []
    saved = []
    for n in sorted(lines):
        line = lines[n]
        try:  # the journal is a file in the folder: what it names is checked like any output's name
            path = output_path(output_dir, str(line.get("path", "")))
        except UnsafeName:
            return []
        if not in_plain_folders(output_dir, path) or not _has_bytes(path, line.get("bytes"), line.get("sha256")):
            return []
        saved.append(
            SavedOutput(
                n=n,
                path=str(line["path"]),
                bytes=int(line["bytes"]),
                sha256=str(line["sha256"]),
                content_type=str(line.get("type", "application/octet-stream")),
            )
        )
    return saved


def _has_bytes(path: Path, size: Any, sha256: Any) -> bool:
    try:
        if not path.is_file() or path.is_symlink() or path.stat().st_size != size:
            return False
        digest = hashlib.sha256()
        with open(path, "rb") as file:
            while chunk := file.read(HASH_CHUNK):
                digest.update(chunk)
    except OSError:
        return False
    return bool(digest.hexdigest() == sha256)


@dataclass
class FileCheck:
    checked: int = 0
    missing: list[str] = field(default_factory=list)  # paths, relative to the output folder
    changed: list[str] = field(default_factory=list)
    reopened: int = 0  # runs to fetch the files from again
    lost: list[str] = field(default_factory=list)  # jobs whose files cannot be fetched again for free


def check_files(ledger: Ledger, output_dir: Path) -> FileCheck:
    """Stat every file the ledger lists for a succeeded job; reopen the runs of those missing or changed.

    One pass over the outputs table alone, each file stat-ed by its path below the folder
    (``outputs.lookup_below``): at a
    million files the ``stat`` calls are most of the time, and joining every file with its job
    (to leave out files of jobs no longer succeeded, or no longer in the manifest, a few at most)
    cost as much again; those are left out afterwards, from the few files found missing or changed."""
    check = FileCheck()
    suspects: list[tuple[str, str, bool]] = []  # (job id, path, missing)
    stat = os.stat
    with lookup_below(os.fspath(output_dir)) as (prefix, fd):
        for rows in ledger.output_files():
            for job_id, path, size in rows:
                try:
                    if stat(prefix + path, dir_fd=fd).st_size == size:
                        continue
                    suspects.append((job_id, path, False))
                except OSError:
                    suspects.append((job_id, path, True))
    check.checked = ledger.counts()["succeeded"]
    if not suspects:
        return check
    states = ledger.jobs_by_id(job_id for job_id, _, _ in suspects)
    current = {job_id for job_id, (_, state) in states.items() if state == JobState.SUCCEEDED}
    attempts = {(o["job_id"], o["path"]): o["attempt_id"] for o in ledger.outputs_of(current)}
    broken: dict[str, int] = {}  # job id -> attempt id
    for job_id, path, missing in suspects:
        if job_id in current and (job_id, path) in attempts:
            (check.missing if missing else check.changed).append(path)
            broken[job_id] = attempts[job_id, path]
    if broken:
        runs = ledger.attempts_by_id(broken.values())
        for job_id, attempt_id in broken.items():
            run_id = runs.get(attempt_id, (None, None))[1]
            if run_id is None:
                check.lost.append(job_id)
                ledger.job_failed(job_id, "its file is missing and no run is recorded to fetch it from", "missing")
            else:
                ledger.refetch(job_id, attempt_id)
                check.reopened += 1
        ledger.flush()
    return check
