"""The plumbing every benchmark script shares: the simulator in its own process, the real CLI
run as a measured subprocess (wall time, CPU and peak RSS from wait4), the command lines of
batchgen and of the hand-written baseline, the CSV manifests they read, the snapshot of the
batchgen package being measured and a description of the machine.

bench/run.py imports all of it (bench/grid.py reads it through the run module it is given);
bench/http_floor.py and bench/manifest_bench.py take what they use from run as well.
"""

from __future__ import annotations

import csv
import datetime
import json
import os
import platform
import random
import re
import select
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PY = sys.executable
API_KEY = "sk-bench-0123456789"
CLK_TCK = os.sysconf("SC_CLK_TCK")
# Where the measured batchgen is imported from (a snapshot, see take_snapshot) and where
# subprocesses run, so that the repository's own batchgen/ (edited meanwhile) is not on sys.path.
SOURCE: dict[str, Path | None] = {"src": None, "cwd": None}
PAGE = os.sysconf("SC_PAGE_SIZE")


# --------------------------------------------------------------------------- manifests

_SUBJECTS = ("ceramic lamp", "linen shirt", "oak chair", "glass vase", "wool throw", "steel kettle",
             "leather bag", "cotton towel", "brass clock", "walnut desk", "silk scarf", "clay mug")  # fmt: skip
_SETTINGS = ("on a light oak surface", "in soft morning light", "against a sand backdrop",
             "in a sunlit studio", "on white marble", "beside a window")  # fmt: skip


def write_manifest(path: Path, n: int, *, metadata: bool = False) -> Path:
    """A CSV of ``n`` jobs with explicit ids (the kind a catalogue export gives)."""
    if path.exists():
        return path
    rng = random.Random(n)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["id", "prompt", "aspect_ratio", "quality"] + (["sku", "category"] if metadata else []))
        for i in range(n):
            subject, setting = rng.choice(_SUBJECTS), rng.choice(_SETTINGS)
            row = [
                f"job-{i:07d}",
                f"A product photo of a {subject} {setting}, catalogue item {i}",
                ("1:1", "3:2", "2:3")[i % 3],
                ("medium", "high")[i % 2],
            ]
            if metadata:
                row += [f"SKU-{i:07d}", subject.split()[-1]]
            writer.writerow(row)
    tmp.rename(path)
    return path


# --------------------------------------------------------------------------- processes


def proc_cpu(pid: int) -> float:
    """user+sys CPU seconds of a live process (all its threads), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


class Simulator:
    """``python -m batchgen simulate --port 0 ...`` in its own process."""

    def __init__(self, args: list[str], log: Path):
        cmd = [PY, "-m", "batchgen", "simulate", "--port", "0", *args]
        self.log = open(log, "w")
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            cwd=run_cwd(),
            env=base_env(),
            start_new_session=True,
        )
        self.base_url = self._read_url()
        self.origin = self.base_url.removesuffix("/api/v1")

    def _read_url(self) -> str:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 20.0)
        line = self.proc.stdout.readline() if ready else ""
        match = re.search(r"(http://\S+/api/v1)", line)
        if not match:
            self.stop()
            raise RuntimeError(f"the simulator did not print its URL (got {line!r}); see {self.log.name}")
        return match[1]

    def stats(self, timeout: float = 120.0) -> dict[str, Any]:
        with urllib.request.urlopen(self.origin + "/_sim/stats", timeout=timeout) as response:
            return json.loads(response.read())

    def cpu(self) -> float:
        return proc_cpu(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()
        self.log.close()

    def __enter__(self) -> Simulator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class Finished:
    returncode: int
    wall: float
    cpu: float  # user + sys seconds
    maxrss_mb: float
    stderr_tail: str


def wait_rusage(proc: subprocess.Popen, started: float) -> tuple[int, float, float, float]:
    """Reap ``proc`` with os.wait4: (returncode, wall, cpu seconds, peak RSS MB)."""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def run_measured(cmd: list[str], env: dict[str, str], log: Path, cwd: Path | None = None) -> Finished:
    cwd = cwd or run_cwd()
    with open(log, "w") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=err, stderr=subprocess.STDOUT, env=env, cwd=cwd)
        code, wall, cpu, rss = wait_rusage(proc, started)
    return Finished(code, wall, cpu, rss, tail(log))


def tail(path: Path, lines: int = 6) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def base_env() -> dict[str, str]:
    env = dict(os.environ)
    if SOURCE["src"] is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SOURCE["src"]), env.get("PYTHONPATH")]))
    return env


def run_cwd() -> Path:
    return SOURCE["cwd"] or REPO


def client_env(base_url: str) -> dict[str, str]:
    env = base_env()
    env.update(RUNBASE_BASE_URL=base_url, RUNBASE_API_KEY=API_KEY, PYTHONUNBUFFERED="1")
    return env


def batchgen_prefix(client: str = "batchgen") -> list[str]:
    """``batchgen``, or ``batchgen[p1,p2]``: the CLI with bench/patched.py's experimental patches."""
    match = re.fullmatch(r"batchgen(?:\[([\w,]*)\])?", client)
    if not match:
        raise ValueError(f"unknown client {client!r}")
    if match[1]:
        return [PY, str(HERE / "patched.py"), match[1]]
    return [PY, "-m", "batchgen"]


def batchgen_cmd(
    manifest: Path, output: Path, concurrency: int, rate: float | None = None, client: str = "batchgen"
) -> list[str]:
    # --no-reuse: every job is created. Otherwise the user's reuse index (keyed by the base URL, whose
    # port a later simulator may get again) can hand a run an earlier run's images, and it creates nothing.
    cmd = [*batchgen_prefix(client), "run", str(manifest), "--output", str(output), "--no-progress",
           "--concurrency", str(concurrency), "--no-reuse"]  # fmt: skip
    if rate:
        cmd += ["--rate", repr(rate)]
    return cmd


def baseline_cmd(
    manifest: Path, output: Path, concurrency: int, rate: float | None = None, poll_interval: float = 1.0
) -> list[str]:
    cmd = [PY, str(HERE / "baseline.py"), str(manifest), "--output", str(output),
           "--concurrency", str(concurrency), "--poll-interval", repr(poll_interval)]  # fmt: skip
    if rate:
        cmd += ["--rate", repr(rate)]
    return cmd


# --------------------------------------------------------------------------- source snapshot


def take_snapshot(source: str, work: Path) -> dict[str, str]:
    """Copy the batchgen package to measure into ``work/src`` and run everything from there.

    Other people edit batchgen/ while a long benchmark runs; without a snapshot, each
    subprocess would import whatever the files hold at that moment. ``worktree``
    copies the files as they are now; anything else is a git revision (``git archive``,
    which changes nothing in the repository).
    """
    import hashlib
    import shutil

    src = work / "src"
    if src.exists():
        shutil.rmtree(src)
    src.mkdir(parents=True)
    if source == "worktree":
        shutil.copytree(REPO / "batchgen", src / "batchgen", ignore=shutil.ignore_patterns("__pycache__"))
    else:
        archive = subprocess.run(["git", "archive", source, "batchgen"], cwd=REPO, capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(src)], input=archive.stdout, check=True)
    digest = hashlib.sha256()
    for path in sorted((src / "batchgen").rglob("*.py")):
        digest.update(path.relative_to(src).as_posix().encode() + b"\0" + path.read_bytes())
    cwd = work / "cwd"
    cwd.mkdir(exist_ok=True)
    SOURCE["src"], SOURCE["cwd"] = src, cwd
    check = subprocess.run([PY, "-c", "import batchgen; print(batchgen.__file__)"], env=base_env(), cwd=cwd,
                           capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    if not check.startswith(str(src)):
        raise RuntimeError(f"the snapshot is not what gets imported ({check})")
    return {"source": source, "snapshot_sha256": digest.hexdigest()[:12]}


# --------------------------------------------------------------------------- machine


def machine() -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {
        "cores": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(shlex.quote(a) for a in ["python", "bench/run.py", *sys.argv[1:]]),
        "git_head": git("rev-parse", "--short", "HEAD"),
        "git_dirty": git("status", "--short", "--", "batchgen"),
    }
