"""``batchgen simulate`` as a user runs it (subprocesses): clear errors, a complete --help, the new
limit options, and uvicorn as an optional extra that ``run --simulate`` does not need."""

from __future__ import annotations

import argparse
import json
import re
import select
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from batchgen.cli import build_parser
from batchgen.models import DEFAULT_MODEL
from batchgen.simulator import CATALOGUE, default_burst
from batchgen.simulator.server import INSTALL_HINT

from .conftest import API_KEY, REPO, batchgen_cli

WITHOUT_UVICORN = (
    "import sys; sys.modules['uvicorn'] = None; from batchgen.cli import main; sys.exit(main(sys.argv[1:]))"
)


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("batchgen: error: "), result.stderr
    return lines[0]


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_a_busy_port_is_one_clear_line(busy_port):
    """`simulate --port P` on a port another program listens on: one line naming the port and the cause, exit 2."""
    line = one_line_error(batchgen_cli("simulate", "--port", str(busy_port), timeout=30))
    assert f"127.0.0.1:{busy_port}" in line and "in use" in line and "--port" in line


@pytest.mark.parametrize("port", ["99999", "-1", "65536"])
def test_a_port_out_of_range_is_one_clear_line(port):
    """A port outside 0-65535 is refused with one line, exit 2."""
    assert "0 to 65535" in one_line_error(batchgen_cli("simulate", "--port", port, timeout=30))


def test_an_address_not_of_this_machine_is_one_clear_line():
    """--host that this machine cannot listen on is one line, exit 2."""
    assert "cannot listen on 192.0.2.1:0" in one_line_error(
        batchgen_cli("simulate", "--host", "192.0.2.1", "--port", "0")
    )


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--fault", "http_501=1"], "unknown fault http_501"),
        (["--fault", "slow=often"], "NAME=PROBABILITY"),
        (["--fault", "slow=2"], "between 0 and 1"),
        (["--outputs-per-run", "3-1"], "outputs_per_run"),
        (["--retry-after", "sometimes"], "retry_after must be one of"),
    ],
)
def test_bad_option_values_are_one_clear_line(args, complaint):
    """Values SimConfig refuses are one line naming the problem, exit 2, before anything listens."""
    assert complaint in one_line_error(batchgen_cli("simulate", "--port", "0", *args, timeout=30))


def test_a_bad_schedule_is_a_usage_error_naming_the_piece():
    """--create-rate 30,15 is refused by the parser with what is wrong and an example, exit 2."""
    result = batchgen_cli("simulate", "--create-rate", "30,15")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "'15' needs @SECONDS" in result.stderr and "30,15@6,30@12" in result.stderr


def test_help_lists_every_fault_with_its_description():
    """`simulate --help` names every fault with its description, and the Retry-After modes."""
    result = batchgen_cli("simulate", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for name, description in CATALOGUE.items():
        assert f"{name} {' '.join(description.split())}" in text, name
    for mode in ("precise", "precise-ms", "fixed:N", "date", "none"):
        assert mode in text


def test_every_simulate_option_says_its_default():
    """Each option's help states its default (or says it is a switch that is off, or an alias)."""
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    simulate = commands.choices["simulate"]
    for action in simulate._actions:
        if action.dest == "help":
            continue
        assert action.help and re.search(r"default|same as", action.help), action.option_strings


def test_simulate_without_uvicorn_says_how_to_install_it():
    """Without uvicorn, `simulate` says which extra to install, exit 2, no traceback."""
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_UVICORN, "simulate", "--port", "0"],
        capture_output=True, text=True, cwd=REPO, timeout=30,
    )  # fmt: skip
    assert INSTALL_HINT in one_line_error(result)


def test_run_simulate_needs_no_uvicorn(tmp_path, write_manifest):
    """`run --simulate` works where uvicorn is missing: the simulator runs in-process."""
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_UVICORN, "run", str(write_manifest(3)), "--simulate", "--output", str(out),
         "--no-progress"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert len(list(out.glob("*.png"))) == 3


def test_the_parser_and_the_simulator_load_without_uvicorn_or_httpx_where_not_needed():
    """Building the CLI parser loads neither httpx nor uvicorn; a Simulator in-process loads no uvicorn."""
    code = (
        "import sys; from batchgen.cli import build_parser; build_parser(); a = 'httpx' in sys.modules; "
        "from batchgen.simulator import SimConfig, Simulator, SimulatorServer, FAULTS; Simulator(SimConfig()); "
        "print(a, 'uvicorn' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=30)
    assert result.stdout.split() == ["False", "False"], result.stderr


def test_simulate_serves_the_limit_shapes_given_on_the_command_line():
    """--create-rate/--create-burst/--retry-after/--max-running/--polls-count reach the server; stats report them."""
    args = ["--create-rate", "5,50@3600", "--create-burst", "2", "--retry-after", "fixed:3", "--max-running", "4",
            "--polls-count", "--latency", "0"]  # fmt: skip
    server = subprocess.Popen(
        [sys.executable, "-m", "batchgen", "simulate", "--port", "0", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip
    try:
        ready, _, _ = select.select([server.stdout], [], [], 15)
        assert ready, "the simulator printed nothing within 15 s"
        base_url = re.search(r"(http://\S+/api/v1)", server.stdout.readline())[1]
        with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10) as client:
            body = {"model": DEFAULT_MODEL, "input": {"prompt": "p"}}
            answers = [client.post("/runs", json=body) for _ in range(3)]
            poll = client.get(f"/runs/{answers[0].json()['id']}")  # --polls-count: the create bucket is empty
            stats = httpx.get(base_url.removesuffix("/api/v1") + "/_sim/stats", timeout=10).json()
        server.send_signal(signal.SIGINT)
        _, err = server.communicate(timeout=15)
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()
    assert [a.status_code for a in answers] == [201, 201, 429] and answers[2].headers["retry-after"] == "3"
    assert stats["limit_timeline"]["create_rate"] == [[0.0, 5.0, 2]]
    assert stats["limit_timeline"]["max_running"] == [[0.0, 4]]
    assert [[t > 0, status, why] for t, status, why in stats["create_log"]] == [
        [True, 201, ""], [True, 201, ""], [True, 429, "create_rate"],
    ]  # fmt: skip
    assert default_burst(5) != 2  # two creates at once: the burst came from --create-burst
    assert poll.status_code == 429 and stats["rate_limited_by"] == {"create_rate": 2}
    assert server.returncode == 0 and "Traceback" not in err
    assert API_KEY not in json.dumps(stats)
