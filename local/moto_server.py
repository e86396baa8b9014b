"""moto's server mode on 127.0.0.1, for S3 / DynamoDB / Secrets Manager / SQS over real HTTP.

Point boto3 at it with the environment only (`aws_env(stack.endpoint_url)`): boto3 honours
`AWS_ENDPOINT_URL`, so no code of ours passes `endpoint_url` to a client.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Self

import httpx
from moto.server import ThreadedMotoServer

if TYPE_CHECKING:
    from types import TracebackType

__all__ = ["DEFAULT_REGION", "MotoStack", "aws_env"]

DEFAULT_REGION = "us-east-1"


def aws_env(endpoint_url: str, region: str = DEFAULT_REGION) -> dict[str, str]:
    """The environment variables that send every boto3 client to `endpoint_url`.

    Fake static credentials, so nothing falls through to a real profile or instance role. An
    `AWS_PROFILE` set in the surrounding environment still wins over them: unset it too.
    """
    return {
        "AWS_ENDPOINT_URL": endpoint_url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": region,
        "AWS_REGION": region,
    }


class _BoundedMotoServer(ThreadedMotoServer):
    """ThreadedMotoServer whose start() cannot hang when the server fails to bind."""

    error: BaseException | None = None

    def _server_entry(self) -> None:
        try:
            super()._server_entry()
        except BaseException as exc:  # noqa: BLE001 - reported by MotoStack.start()
            self.error = exc
            self._server_ready_event.set()  # unblock start(); MotoStack sees `error`


class MotoStack:
    """moto's ThreadedMotoServer on `host`:`port` (0 = a free port chosen by the OS).

    `start()` returns once the server answers HTTP (or raises within `start_timeout`); `reset()`
    wipes every moto backend (`POST /moto-api/reset`); `stop()` shuts it down and joins its
    thread. Usable as a context manager. moto keeps its state per process, so two MotoStacks in
    one process share their data.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        start_timeout: float = 15.0,
        region: str = DEFAULT_REGION,
    ) -> None:
        self.host = host
        self.start_timeout = start_timeout
        self.region = region
        self._requested_port = port
        self._server: _BoundedMotoServer | None = None
        self._endpoint_url: str | None = None

    @property
    def endpoint_url(self) -> str:
        """e.g. `http://127.0.0.1:41234` (no trailing slash)."""
        if self._endpoint_url is None:
            msg = "the moto server is not running"
            raise RuntimeError(msg)
        return self._endpoint_url

    @property
    def env(self) -> dict[str, str]:
        """`aws_env(self.endpoint_url, self.region)`."""
        return aws_env(self.endpoint_url, self.region)

    def start(self) -> Self:
        if self._server is not None:
            msg = "the moto server is already running"
            raise RuntimeError(msg)
        _quiet_werkzeug()
        server = _BoundedMotoServer(ip_address=self.host, port=self._requested_port, verbose=False)
        self._server = server
        server.start()  # returns once the server is bound, or failed to bind (see above)
        if server.error is not None:
            self._server = None
            msg = f"the moto server did not start on {self.host}:{self._requested_port}"
            raise RuntimeError(msg) from server.error
        host, port = server.get_host_and_port()
        self._endpoint_url = f"http://{host}:{port}"
        try:
            self._wait_until_answering(time.monotonic() + self.start_timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_until_answering(self, deadline: float) -> None:
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                response = httpx.get(f"{self.endpoint_url}/moto-api/", timeout=2.0)
            except httpx.TransportError as exc:
                last = exc
                time.sleep(0.05)
                continue
            if response.status_code < 500:
                return
            time.sleep(0.05)
        msg = f"the moto server at {self.endpoint_url} did not answer in time"
        raise TimeoutError(msg) from last

    def reset(self) -> None:
        """Forget every resource in every moto backend."""
        response = httpx.post(f"{self.endpoint_url}/moto-api/reset", timeout=30.0)
        response.raise_for_status()

    def stop(self) -> None:
        server = self._server
        if server is None:
            return
        self._server = None
        self._endpoint_url = None
        server.stop()  # shutdown() returns once serve_forever has ended; then it joins the thread

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _quiet_werkzeug() -> None:
    """Stop werkzeug's per-request INFO lines unless someone configured its logger already."""
    logger = logging.getLogger("werkzeug")
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.WARNING)
