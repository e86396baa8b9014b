"""The stand-in as an ASGI app, and `VitalStandin`, which serves it with uvicorn in a thread."""

from __future__ import annotations

import math
import socket
import threading
import time
from typing import TYPE_CHECKING, Self

import uvicorn

from local.standin.faults import _FaultAndRecordMiddleware
from local.standin.routes import _build_api
from local.standin.state import StandinState

if TYPE_CHECKING:
    from types import TracebackType

    from starlette.types import ASGIApp


def create_app(state: StandinState) -> ASGIApp:
    """The stand-in as an ASGI app: the FastAPI routes inside the fault/record middleware."""
    return _FaultAndRecordMiddleware(_build_api(state), state)


class VitalStandin:
    """Runs the stand-in with uvicorn in a background thread on `host` (127.0.0.1).

    `port=0` (the default) lets the OS pick a free port; the listening socket is bound before the
    thread starts, so there is no race for it. `start()` returns once the server accepts TCP
    connections (or raises within `start_timeout`); `stop()` shuts down gracefully, cancels what is
    still running after `stop_timeout`, and joins the thread. Usable as a context manager.
    """

    def __init__(
        self,
        state: StandinState | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        start_timeout: float = 10.0,
        stop_timeout: float = 5.0,
    ) -> None:
        self.state = state if state is not None else StandinState()
        self.host = host
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self._requested_port = port
        self._port: int | None = None
        self._socket: socket.socket | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            msg = "the Vital stand-in is not running"
            raise RuntimeError(msg)
        return self._port

    @property
    def url(self) -> str:
        """Base URL, e.g. `http://127.0.0.1:41234` (no trailing slash)."""
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> Self:
        if self._thread is not None:
            msg = "the Vital stand-in is already running"
            raise RuntimeError(msg)
        # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP.
        # Without it every response (headers, then body) waits out the client's delayed ACK:
        # 40 ms added to every request on Linux.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self._requested_port))
        except OSError:
            sock.close()
            raise
        self._socket = sock
        self._port = int(sock.getsockname()[1])
        config = uvicorn.Config(
            create_app(self.state),
            host=self.host,
            port=self._port,
            loop="asyncio",
            http="h11",
            ws="none",
            lifespan="off",
            log_config=None,
            log_level="warning",
            access_log=False,
            proxy_headers=False,
            server_header=False,
            timeout_graceful_shutdown=max(1, math.ceil(self.stop_timeout)),
        )
        server = uvicorn.Server(config)
        self._server = server
        self._error = None
        self._thread = threading.Thread(
            target=self._serve, args=(server, sock), name=f"vital-standin:{self._port}", daemon=True
        )
        self._thread.start()
        try:
            self._wait_until_serving(server)
        except BaseException:
            self.stop()
            raise
        return self

    def _serve(self, server: uvicorn.Server, sock: socket.socket) -> None:
        try:
            server.run(sockets=[sock])
        except BaseException as exc:  # noqa: BLE001 - reported by start() in the caller's thread
            self._error = exc

    def _wait_until_serving(self, server: uvicorn.Server) -> None:
        deadline = time.monotonic() + self.start_timeout
        while not server.started:
            if self._thread is None or not self._thread.is_alive():
                msg = "the Vital stand-in stopped while starting"
                raise RuntimeError(msg) from self._error
            if time.monotonic() > deadline:
                msg = f"the Vital stand-in did not start within {self.start_timeout}s"
                raise TimeoutError(msg)
            time.sleep(0.01)
        remaining = max(0.1, deadline - time.monotonic())
        with socket.create_connection((self.host, self.port), timeout=remaining):
            pass

    def stop(self) -> None:
        thread, server, sock = self._thread, self._server, self._socket
        if thread is None or server is None:
            return
        server.should_exit = True
        # Graceful shutdown itself gives in-flight requests `stop_timeout`, then cancels them.
        thread.join(self.stop_timeout + 2.0)
        if thread.is_alive():
            server.force_exit = True
            thread.join(self.stop_timeout)
        if sock is not None:
            sock.close()
        alive = thread.is_alive()
        self._thread = self._server = self._socket = None
        self._port = None
        if alive:
            msg = "the Vital stand-in did not stop in time"
            raise RuntimeError(msg)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
