"""Every guarantee of the HTTP layer, over each transport: aiohttp and httpx's own over real
sockets (the simulator with uvicorn, or a raw local server that misbehaves on purpose), and
httpx.ASGITransport in-process."""

from __future__ import annotations

import hashlib
import io
import json
import socket
import socketserver
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import unquote

import anyio
import httpx
import pytest

from batchgen.api import MAX_RUN_ID_LENGTH, RunbaseClient, Timeouts
from batchgen.errors import OutputUnusable, Redirected, RunIdRefused, TransientError, UnusableRun
from batchgen.models import JobSpec, image_input
from batchgen.simulator import API_PREFIX, SimConfig, Simulator, SimulatorServer
from batchgen.transport import AiohttpNetworkTransport, network_transport

from .conftest import API_KEY, BASE_URL

NETWORKS = ["aiohttp", "httpx"]
JOB = JobSpec(job_id="lamp", input=image_input("a lamp"))
SHORT = Timeouts(connect=1.0, read=0.5, write=1.0, pool=1.0)
ODD_IDS = [".", "..", "a/b", "?x", "%2e", "%2E%2E", "#frag", "a b", ".x", "x.", "...", "ü", "a;b=c", "~"]


# --- a raw HTTP/1.1 server whose answer each test chooses --------------------------------


class RawServer:
    """A loopback server that records each request's raw head and answers with ``reply(head, sock)``."""

    def __init__(self, reply: Callable[[bytes, socket.socket], None]):
        self.reply = reply
        self.heads: list[bytes] = []
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                sock: socket.socket = self.request
                sock.settimeout(10)
                data = b""
                while True:
                    while b"\r\n\r\n" not in data:
                        chunk = sock.recv(65536)
                        if not chunk:
                            return
                        data += chunk
                    head, _, data = data.partition(b"\r\n\r\n")
                    length = next(
                        (
                            int(line.split(b":")[1])
                            for line in head.split(b"\r\n")
                            if line.lower().startswith(b"content-length:")
                        ),
                        0,
                    )
                    while len(data) < length:
                        data += sock.recv(65536)
                    data = data[length:]
                    outer.heads.append(head)
                    try:
                        outer.reply(head, sock)
                    except OSError:
                        return

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}{API_PREFIX}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def request_lines(self) -> list[str]:
        return [head.split(b"\r\n")[0].decode("latin-1") for head in self.heads]

    def __enter__(self) -> RawServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def answer(status: int, body: bytes, headers: dict[str, str] | None = None) -> Callable[[bytes, socket.socket], None]:
    def reply(head: bytes, sock: socket.socket) -> None:
        lines = [
            f"HTTP/1.1 {status} X",
            f"Content-Length: {len(body)}",
            *(f"{k}: {v}" for k, v in (headers or {}).items()),
        ]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)

    return reply


def json_run(head: bytes, sock: socket.socket) -> None:
    """Answer any request with a running run whose id is the last path segment, decoded as a server would."""
    target = head.split(b" ")[1].decode("latin-1")
    run_id = unquote(target.rsplit("/", 1)[-1])
    answer(200, json.dumps({"id": run_id, "status": "running"}).encode())(head, sock)


def client_for(network: str, base_url: str, timeouts: Timeouts = SHORT, **options: Any) -> RunbaseClient:
    return RunbaseClient(base_url, API_KEY, network=network, timeouts=timeouts, **options)  # type: ignore[arg-type]


@pytest.fixture(params=NETWORKS)
def network(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def sim_server() -> Iterator[tuple[Simulator, SimulatorServer]]:
    sim = Simulator(SimConfig(latency=0.0))
    with SimulatorServer(sim) as server:
        yield sim, server


async def _create_and_download(client: RunbaseClient) -> list[bytes]:
    info = await client.create_run(JOB)
    deadline = anyio.current_time() + 30
    while not info.succeeded:
        assert anyio.current_time() < deadline, info
        await anyio.sleep(0.01)
        info = await client.get_run(info.run_id)
    bodies = []
    for url in info.urls:
        sink = io.BytesIO()
        await client.download(url, sink)
        bodies.append(sink.getvalue())
    return bodies


# --- which transport is chosen ------------------------------------------------------------------


def test_the_network_goes_through_aiohttp_and_the_simulator_through_asgi():
    """Without a transport the client uses aiohttp for the network; a given transport is used for both clients."""
    limits = httpx.Limits(max_connections=4)
    assert isinstance(network_transport(limits), AiohttpNetworkTransport)
    client = RunbaseClient(BASE_URL, API_KEY)
    assert isinstance(client._api._transport, AiohttpNetworkTransport)
    assert isinstance(client._files._transport, AiohttpNetworkTransport)
    assert client._api._transport is not client._files._transport  # no connection shared with the key-less client
    sim_transport = Simulator().transport()
    in_process = RunbaseClient(BASE_URL, API_KEY, transport=sim_transport)
    assert in_process._api._transport is sim_transport and in_process._files._transport is sim_transport
    anyio.run(client.aclose)
    anyio.run(in_process.aclose)


def test_a_proxy_in_the_environment_gets_httpx_which_honours_it(monkeypatch):
    """With HTTPS_PROXY set, the network transport is httpx's own, which applies the proxy and NO_PROXY."""
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    assert network_transport(httpx.Limits()) is None


# --- the guarantees, over both network transports -----------------------------------------------


def test_whole_run_over_sockets_and_no_key_reaches_the_files_host(network):
    """Create, poll and download over real sockets; the files origin never sees Authorization, even redirected."""
    sim = Simulator(SimConfig(latency=0.0, faults={"redirect": 1.0}))
    with SimulatorServer(sim) as server:

        async def main() -> list[bytes]:
            async with client_for(network, server.base_url) as client:
                return await _create_and_download(client)

        bodies = anyio.run(main)
    stats = sim.stats()
    assert stats["faults"]["redirect"] == 1 and stats["downloads"] == 1
    assert stats["auth_on_files"] == 0
    assert [f["sha256"] for f in stats["runs"][0]["files"]] == [hashlib.sha256(bodies[0]).hexdigest()]


def test_the_api_client_follows_no_redirect(network):
    """A 302 from the API is Redirected (the base URL is wrong); its Location is never requested (the key would
    go with it)."""
    with RawServer(answer(302, b"", {"Location": "/elsewhere"})) as server:

        async def main() -> None:
            async with client_for(network, server.base_url) as client:
                await client.get_run("run_1")

        with pytest.raises(Redirected, match="HTTP 302: the API at .* redirects to http://127.0.0.1:[0-9]+/elsewhere"):
            anyio.run(main)
        assert server.request_lines() == [f"GET {API_PREFIX}/runs/run_1 HTTP/1.1"]


def test_a_download_redirected_to_another_scheme_is_refused_for_good(network):
    """Every hop's scheme is checked: a redirect to file:// ends in OutputUnusable."""
    with RawServer(answer(302, b"", {"Location": "file:///etc/passwd"})) as server:

        async def main() -> None:
            async with client_for(network, server.base_url) as client:
                await client.download(f"http://127.0.0.1:{server.port}/files/x.png", io.BytesIO())

        with pytest.raises(OutputUnusable, match="non-http"):
            anyio.run(main)
        assert len(server.heads) == 1
        assert b"authorization" not in server.heads[0].lower()


@pytest.mark.parametrize("run_id", ODD_IDS)
def test_run_ids_reach_the_run_path_literally_on_the_wire(network, run_id):
    """An odd run id goes out as one percent-encoded segment under /runs/, never normalised into another path."""
    with RawServer(json_run) as server:

        async def main() -> None:
            async with client_for(network, server.base_url) as client:
                await client.get_run(run_id)

        anyio.run(main)
        (line,) = server.request_lines()
    method, target, _ = line.split(" ")
    assert target.startswith(f"{API_PREFIX}/runs/")
    segment = target.removeprefix(f"{API_PREFIX}/runs/")
    assert "/" not in segment and "?" not in segment and "#" not in segment
    assert unquote(segment) == run_id


@pytest.mark.parametrize("run_id", ["", "a\x1bb", "a\nb", "\u202eabc", "x" * (MAX_RUN_ID_LENGTH + 1)])
def test_run_ids_that_cannot_be_one_segment_are_refused_without_a_request(network, run_id):
    """Empty ids, control characters, bidi overrides and absurd lengths are refused, never rewritten."""
    with RawServer(json_run) as server:

        async def main() -> None:
            async with client_for(network, server.base_url) as client:
                await client.get_run(run_id)

        with pytest.raises(RunIdRefused):
            anyio.run(main)
        assert server.heads == []


def test_a_create_answered_with_an_unusable_id_made_a_run_that_cannot_be_followed(network):
    """A create answered with an id holding ESC is a run we cannot poll: UnusableRun, with the answer's status."""
    with RawServer(answer(201, b'{"id": "a\\u001b[2Jb", "status": "queued"}')) as server:

        async def main() -> None:
            async with client_for(network, server.base_url) as client:
                await client.create_run(JOB)

        with pytest.raises(UnusableRun, match="unusable id") as caught:
            anyio.run(main)
        assert caught.value.status == 201
        assert len(server.heads) == 1


def test_an_answer_about_another_run_is_refused(network):
    """A poll answered about another run (its id rewritten on the way, say by a normalising proxy) is refused."""
    with RawServer(answer(200, b'{"id": "run_other", "status": "succeeded", "output": {"urls": []}}')) as server:

        async def main() -> None:
            async with client_for(network, server.base_url) as client:
                await client.get_run("..")

        with pytest.raises(RunIdRefused, match="answered about 'run_other'"):
            anyio.run(main)


def _stall(head: bytes, sock: socket.socket) -> None:
    while sock.recv(1024):  # until the client hangs up
        pass


def _reset(head: bytes, sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()  # RST once the request has arrived


def _garbage(head: bytes, sock: socket.socket) -> None:
    sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
    sock.close()


def _truncated(head: bytes, sock: socket.socket) -> None:
    sock.sendall(b'HTTP/1.1 201 Created\r\nContent-Length: 100\r\n\r\n{"id": "run_')
    sock.close()


def _trickle(head: bytes, sock: socket.socket) -> None:
    sock.sendall(b"HTTP/1.1 201 Created\r\nContent-Length: 100000\r\n\r\n")
    for _ in range(100000):
        sock.sendall(b" ")
        time.sleep(0.05)  # each byte well inside the read timeout: only the overall deadline ends this


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (_stall, "no answer in time"),
        (_reset, "connection failed"),
        (_garbage, "connection failed"),
        (_truncated, "connection failed"),
        (_trickle, "no complete answer within"),
    ],
)
def test_a_create_that_reached_the_server_may_have_made_a_run(network, reply, message):
    """Read timeout, reset, garbage, a truncated answer, a trickle past the deadline: TransientError, maybe created."""
    with RawServer(reply) as server:

        async def main() -> None:
            async with client_for(network, server.base_url) as client:
                await client.create_run(JOB)

        with pytest.raises(TransientError, match=message) as caught:
            anyio.run(main)
    assert caught.value.maybe_created
    assert isinstance(caught.value.__cause__, httpx.HTTPError | TimeoutError)


def _cut_file(head: bytes, sock: socket.socket) -> None:
    sock.sendall(
        b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 100\r\n\r\n\x89PNG\r\n\x1a\n" + bytes(20)
    )
    sock.close()


def test_a_download_cut_short_says_so_in_words(network):
    """A file body that stops before its Content-Length: a TransientError saying the body ended early (how much
    came, with aiohttp), without a parser's internal status code."""
    with RawServer(_cut_file) as server:

        async def main() -> None:
            async with client_for(network, server.base_url) as client:
                await client.download(server.base_url + "/out.png", io.BytesIO())

        with pytest.raises(TransientError) as caught:
            anyio.run(main)
    said = {"aiohttp": "the body ended early: Not enough data", "httpx": "without sending complete message body"}
    assert said[network] in caught.value.message and "400" not in caught.value.message, caught.value.message


def test_a_refused_connection_made_no_run(network):
    """Nothing listening: 'could not connect', and the create certainly made no run."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed when the block ends: nothing listens there

    async def main() -> None:
        async with client_for(network, f"http://127.0.0.1:{port}{API_PREFIX}") as client:
            await client.create_run(JOB)

    with pytest.raises(TransientError, match="could not connect") as caught:
        anyio.run(main)
    assert not caught.value.maybe_created


def test_a_deadline_that_ends_the_wait_for_a_slot_is_not_a_send():
    """A create whose deadline passes while it waits for a connection slot never called before_send: not sent."""
    sent: list[str] = []

    async def before_send() -> None:
        sent.append("sent")

    async def main() -> None:
        client = RunbaseClient(BASE_URL, API_KEY, transport=Simulator().transport(), timeouts=SHORT, max_connections=1)
        hanging_request = object()
        async with client:
            await client._api_slots.limiter.acquire_on_behalf_of(hanging_request)  # the only slot, taken
            await client.create_run(JOB, before_send=before_send)

    with pytest.raises(TransientError, match="no complete answer") as caught:
        anyio.run(main)
    assert sent == [] and not caught.value.maybe_created


def test_run_ids_reach_the_run_path_literally_in_process():
    """Through ASGITransport too, each odd id arrives as one segment that decodes to exactly the id."""
    seen: list[tuple[bytes, str]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append((scope["raw_path"], scope["path"]))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        run_id = unquote(scope["raw_path"].decode("ascii").rsplit("/", 1)[-1])
        await send({"type": "http.response.body", "body": json.dumps({"id": run_id, "status": "running"}).encode()})

    async def main() -> None:
        async with RunbaseClient(BASE_URL, API_KEY, transport=httpx.ASGITransport(app=app)) as client:
            for run_id in ODD_IDS:
                await client.get_run(run_id)

    anyio.run(main)
    prefix = f"{API_PREFIX}/runs/"
    for run_id, (raw_path, path) in zip(ODD_IDS, seen, strict=True):
        segment = raw_path.decode("ascii").removeprefix(prefix)
        assert "/" not in segment and unquote(segment) == run_id
        assert path == prefix + run_id


def test_a_files_host_that_trickles_is_given_up(network):
    """A download whose bytes come too slowly for its deadline (each within the read timeout) is a TransientError."""

    def trickle_png(head: bytes, sock: socket.socket) -> None:
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n\x89PNG\r\n\x1a\n\x00\x00\x00\x0d")
        for _ in range(100000):
            sock.sendall(b"\x00")
            time.sleep(0.05)

    with RawServer(trickle_png) as server:
        sink = io.BytesIO()

        async def main() -> None:
            quick = Timeouts(connect=0.2, read=0.3, write=0.3, pool=1.0)  # a 0.8 s deadline
            async with client_for(network, server.base_url, quick) as client:
                await client.download(f"http://127.0.0.1:{server.port}/files/x.png", sink)

        with pytest.raises(TransientError, match="too slow"):
            anyio.run(main)
    assert sink.getvalue().startswith(b"\x89PNG")  # it was an image, only too slow


def test_odd_run_ids_from_the_simulator_over_sockets(network):
    """Runs the simulator names '.', '..', '../x', '?x', 'x%2e'... are polled and downloaded over real sockets."""
    sim = Simulator(SimConfig(latency=0.0, faults={"odd_run_id": 1.0}, seed=3))
    with SimulatorServer(sim) as server:

        async def main() -> list[bytes]:
            bodies: list[bytes] = []
            async with client_for(network, server.base_url) as client:
                for _ in range(60):  # until both bare ids were handed out (each names one run only)
                    bodies += await _create_and_download(client)
                    if {".", ".."} <= {r["id"] for r in sim.stats()["runs"]}:
                        break
            return bodies

        bodies = anyio.run(main)
    stats = sim.stats()
    assert {".", ".."} <= {r["id"] for r in stats["runs"]}
    assert any("/" in r["id"] for r in stats["runs"])
    assert sorted(hashlib.sha256(b).hexdigest() for b in bodies) == sorted(
        f["sha256"] for r in stats["runs"] for f in r["files"]
    )
