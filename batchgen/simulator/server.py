"""Serving a Simulator over real sockets: uvicorn in a background thread.

uvicorn is the optional extra ``batchgen[sim]``; it is imported only when a server starts, so
``batchgen run --simulate`` (in-process, through httpx.ASGITransport) needs nothing more than
batchgen itself. The listening socket is bound here, before uvicorn starts, so that a busy
port or a bad address is reported as one clear :class:`ServerError` instead of a traceback.
"""

from __future__ import annotations

import errno
import logging
import socket
import threading
import time
from asyncio import CancelledError
from types import ModuleType
from typing import TYPE_CHECKING, Any

from .app import API_PREFIX
from .wire import SimulatedDisconnect

if TYPE_CHECKING:
    import uvicorn

    from .app import Simulator

INSTALL_HINT = "pip install 'batchgen[sim]'"


class ServerError(RuntimeError):
    """The simulator could not be served; the message says why and what to do."""


class MissingExtra(ServerError):
    """uvicorn, which serving over sockets needs, is not installed."""


def require_uvicorn() -> ModuleType:
    try:
        import uvicorn
    except ImportError:
        raise MissingExtra(
            f"serving the simulator over sockets needs uvicorn, which is not installed: {INSTALL_HINT} "
            "(batchgen run --simulate works without it)"
        ) from None
    return uvicorn


def bind(host: str, port: int) -> socket.socket:
    """A socket listening on host:port (port 0: a free one), or a ServerError saying why not."""
    where = f"{host}:{port}"
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ServerError(f"cannot listen on {where}: a port is a number from 0 to 65535 (0 picks a free one)")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except (socket.gaierror, UnicodeError) as exc:
        raise ServerError(f"cannot listen on {where}: {host!r} is not an address of this machine ({exc})") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            why = "the port is in use by another program; pick another with --port, or 0 for a free one"
        elif exc.errno == errno.EACCES:
            why = "permission denied (ports below 1024 need privileges); pick another with --port"
        elif exc.errno == errno.EADDRNOTAVAIL:
            why = f"{host} is not an address of this machine"
        else:
            why = exc.strerror or str(exc)
        raise ServerError(f"cannot listen on {where}: {why}") from None
    sock.setblocking(False)
    return sock


def _hide_injected_errors(record: logging.LogRecord) -> bool:
    """uvicorn logs each exception out of the app; those we cause on purpose (aborted answers,
    "slow" requests cancelled at shutdown) are noise."""
    if str(record.msg).startswith("Cancel %s running task"):
        return False
    return not (record.exc_info and isinstance(record.exc_info[1], SimulatedDisconnect | CancelledError))


class SimulatorServer:
    """Serves a Simulator (or any ASGI app) over real sockets with uvicorn in a background thread."""

    def __init__(self, simulator: Simulator, host: str = "127.0.0.1", port: int = 0, startup_timeout: float = 10.0):
        self.simulator = simulator
        self.host = host
        self.port = port
        self.startup_timeout = startup_timeout
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{API_PREFIX}"

    def __enter__(self) -> SimulatorServer:
        uvicorn_module: Any = require_uvicorn()
        self._socket = bind(self.host, self.port)
        self.port = self._socket.getsockname()[1]
        config = uvicorn_module.Config(
            self.simulator, log_level="warning", lifespan="off", ws="none",
            timeout_graceful_shutdown=1,  # cancel "slow" requests still sleeping at exit
        )  # fmt: skip
        logger = logging.getLogger("uvicorn.error")
        if _hide_injected_errors not in logger.filters:
            logger.addFilter(_hide_injected_errors)
        server: uvicorn.Server = uvicorn_module.Server(config)
        self._server = server
        self._thread = threading.Thread(target=self._run, args=(server, self._socket), name="batchgen-simulator")
        self._thread.daemon = True
        self._thread.start()
        deadline = time.monotonic() + self.startup_timeout
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise ServerError(f"the simulator did not start on {self.host}:{self.port}")
            time.sleep(0.01)
        return self

    @staticmethod
    def _run(server: uvicorn.Server, sock: socket.socket) -> None:
        try:
            server.run(sockets=[sock])
        except SystemExit:
            pass  # uvicorn exits when it cannot start; __enter__ sees the thread end and raises

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the server stops (or ``timeout`` passes); True if it has stopped."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self._thread is None or not self._thread.is_alive()

    def stop(self, timeout: float = 5.0) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout)
            if self._thread.is_alive():
                self._server.force_exit = True
                self._thread.join(timeout)
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def serve(simulator: Simulator, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve until Ctrl-C, printing the base URL first (for ``batchgen simulate``).
    Raises ServerError (or MissingExtra) before printing anything when it cannot serve."""
    with SimulatorServer(simulator, host, port) as server:
        stats_url = server.base_url.removesuffix(API_PREFIX) + "/_sim/stats"
        print(f"Runbase simulator at {server.base_url} (stats: {stats_url}); Ctrl-C stops it", flush=True)
        try:
            while not server.wait(0.5):  # a timeout, so Ctrl-C gets through
                pass
        except KeyboardInterrupt:
            pass
