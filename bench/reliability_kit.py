"""What bench/reliability.py's sections share: the report they add rows to, the CLI run as a user runs it
(every command's output kept, to search for the key), and the checks of an output folder against what
the simulator served."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path
from typing import Any

import yaml

from batchgen import run_batch
from batchgen.simulator import Simulator

KEY = "sk-reliability-7f3a9c0e5b1d"
IN_PROCESS_URL = "http://api.runbase.test/api/v1"


class Report:
    def __init__(self, root: Path) -> None:
        self.rows: list[dict[str, Any]] = []
        self.texts: list[str] = []  # everything batchgen printed, searched for the key
        self.root = root  # every folder batchgen wrote to is under here
        self.section = ""

    def check(self, what: str, figure: object, ok: bool) -> None:
        """A promise: ``ok`` says whether it held."""
        self._add(what, figure, ok)

    def info(self, what: str, figure: object) -> None:
        """A figure for information: no verdict."""
        self._add(what, figure, None)

    def _add(self, what: str, figure: object, ok: bool | None) -> None:
        row = {"section": self.section, "what": what, "figure": str(figure), "check": ok is not None, "ok": ok}
        self.rows.append(row)
        mark = "" if ok is None else ("  ok" if ok else "  <-- BROKEN")
        print(f"  {what}: {figure}{mark}", file=sys.stderr, flush=True)

    def folder(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(parents=True)
        return path


def env_for(base_url: str, report: Report) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNBASE_")}
    env.update(RUNBASE_BASE_URL=base_url, RUNBASE_API_KEY=KEY, BATCHGEN_CACHE_DIR=str(report.root / "cache"))
    return env


def cli(report: Report, base_url: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "batchgen", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env_for(base_url, report),
    )


def cli_done(report: Report, base_url: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    process = cli(report, base_url, *args)
    stdout, stderr = process.communicate(timeout=timeout)
    report.texts += [stdout, stderr]
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def run_args(manifest: Path, out: Path, *extra: str) -> tuple[str, ...]:
    return ("run", str(manifest), "--output", str(out), "--no-progress", *extra)


def write_manifest(folder: Path, jobs: int, prefix: str = "item") -> Path:
    path = folder / "catalogue.yaml"
    items = [{"id": f"{prefix}-{i:04d}", "prompt": f"catalogue photo of {prefix} {i}"} for i in range(jobs)]
    path.write_text(yaml.safe_dump({"jobs": items}), encoding="utf-8")
    return path


def ledger_rows(out: Path, sql: str, ledger: Path | None = None) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(f"file:{ledger or out / 'batchgen.sqlite'}?mode=ro", uri=True)) as db:
        return db.execute(sql).fetchall()


OUTPUTS_SQL = "SELECT o.path, o.n, o.sha256, a.run_id FROM outputs o JOIN attempts a USING (attempt_id)"


def file_sha256(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def requests_seen(sim: Simulator) -> int:
    stats = sim.stats(logs=False)
    return stats["create_requests"] + stats["gets"] + stats["downloads"]


def check_folder(report: Report, label: str, out: Path, sim: Simulator, jobs: int) -> dict[str, int]:
    """Jobs, files and runs against the server's records (ledger read-only)."""
    stats = sim.stats(logs=False)
    served = {run["id"]: {f["n"]: f["sha256"] for f in run["files"]} for run in stats["runs"]}
    states = dict(ledger_rows(out, "SELECT state, count(*) FROM jobs GROUP BY state"))
    failed_without_reason = ledger_rows(out, "SELECT count(*) FROM jobs WHERE state = 'failed' AND error IS NULL")
    lost = jobs - states.get("succeeded", 0) - states.get("failed", 0) + failed_without_reason[0][0]
    outputs = ledger_rows(out, OUTPUTS_SQL)
    bad_files = sum(
        1 for path, n, sha, run_id in outputs if not file_sha256(out / path) == sha == served.get(run_id, {}).get(n)
    )
    recorded = {r[0] for r in ledger_rows(out, "SELECT run_id FROM attempts WHERE run_id IS NOT NULL")}
    unknown = ledger_rows(out, "SELECT count(*) FROM attempts WHERE status = 'unknown'")[0][0]
    never_recorded = len(set(served) - recorded)
    leftovers = len(list(out.rglob(".batchgen-*.part")))
    report.check(f"{label}: jobs lost (neither succeeded nor failed with a reason)", lost, lost == 0)
    report.check(f"{label}: files not what the server sent for that job's run", bad_files, bad_files == 0)
    beyond = max(0, never_recorded - unknown)
    report.check(f"{label}: runs the ledger never recorded, beyond its 'unknown' count", beyond, beyond == 0)
    report.info(f"{label}: runs never recorded / creates counted 'unknown'", f"{never_recorded} / {unknown}")
    report.info(f"{label}: server runs / jobs", f"{len(served)} / {jobs}")
    report.check(f"{label}: temporary files left", leftovers, leftovers == 0)
    return {"never_recorded": never_recorded, "unknown": unknown, "runs": len(served)}


def in_process(
    report: Report, folder: str, sim: Simulator, jobs: int, *, again: bool = False, **options: Any
) -> tuple[Any, Path]:
    """``run_batch`` of a manifest of ``jobs`` in a new folder, or (``again``) the same command once more."""
    base = report.root / folder if again else report.folder(folder)
    manifest = base / "catalogue.yaml" if again else write_manifest(base, jobs, prefix=folder)
    options.setdefault("reuse_index", report.root / "cache" / "reuse.sqlite")
    result = run_batch(
        manifest,
        output_dir=base / "out",
        transport=sim.transport(),
        api_key=KEY,
        base_url=IN_PROCESS_URL,
        progress="none",
        backoff_base=0.05,
        **options,
    )
    report.texts += [result.message, repr(result)]
    return result, base / "out"


def check_folder_quiet(out: Path, stats: dict[str, Any]) -> dict[str, int]:
    served = {run["id"]: {f["n"]: f["sha256"] for f in run["files"]} for run in stats["runs"]}
    outputs = ledger_rows(out, OUTPUTS_SQL)
    bad = sum(
        1
        for path, n, sha, run_id in outputs
        if (digest := file_sha256(out / path)) is None or digest != served.get(run_id, {}).get(n)
    )
    listed = {path for path, *_ in outputs}
    stray = [
        p
        for p in out.rglob("*")
        if p.is_file()
        and not p.name.startswith("batchgen.sqlite")
        and ".batchgen" not in p.relative_to(out).parts
        and p.relative_to(out).as_posix() not in listed
    ]
    states = dict(ledger_rows(out, "SELECT state, count(*) FROM jobs GROUP BY state"))
    reasons = ledger_rows(out, "SELECT count(*) FROM jobs WHERE state = 'failed' AND error IS NOT NULL")[0][0]
    return {
        "bad_files": bad,
        "stray_files": len(stray),
        "succeeded": states.get("succeeded", 0),
        "failed_with_reason": reasons,
    }


def files_holding_key(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.is_file() and KEY.encode() in p.read_bytes())
