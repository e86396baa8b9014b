"""The faults: what `StandinState` decided for a request, and the ASGI layer that applies them."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

from fastapi.responses import HTMLResponse, JSONResponse, Response

from local.standin.contract import API_KEY_HEADER

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from local.standin.records import RecordedRequest
    from local.standin.state import StandinState

_SCOPE_FORCE_202 = "vital_standin.force_202"
_DISCONNECT_GRACE_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class _Faults:
    drop: bool = False
    drop_with_reset: bool = False
    latency_seconds: float = 0.0
    status: int = 0
    force_202: bool = False
    slow_body_seconds: float = 0.0
    lose_answer: bool = False


_NO_FAULTS = _Faults()


class _FaultAndRecordMiddleware:
    """Outermost ASGI layer: records every request and applies the faults (see package doc)."""

    def __init__(self, app: ASGIApp, state: StandinState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive)
        if body is None:  # the client went away before it finished sending
            return
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        presented = _header(scope, API_KEY_HEADER)
        record, faults = self.state._arrive(scope["method"], scope["path"], query, body, presented)

        gone = asyncio.Event()
        watcher = asyncio.create_task(_watch_disconnect(receive, gone))
        try:
            await self._answer(scope, send=send, body=body, record=record, faults=faults, gone=gone)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    async def _answer(
        self,
        scope: Scope,
        *,
        send: Send,
        body: bytes,
        record: RecordedRequest,
        faults: _Faults,
        gone: asyncio.Event,
    ) -> None:
        # The answer leaves `latency_seconds` after arrival. A fault waits it out first; a real
        # answer is worked out at once and held back until then, so the stand-in's own CPU time
        # hides inside the latency, as a remote server's would, instead of queueing after it.
        answer_at = time.monotonic() + faults.latency_seconds
        if faults.latency_seconds and (faults.drop or faults.status):
            await _sleep_unless(gone, faults.latency_seconds)
        if faults.drop:
            self.state._dropped(record)
            await _drop_connection(send, reset=faults.drop_with_reset, gone=gone)
            return

        body_sent = False

        async def replay_receive() -> Message:
            nonlocal body_sent
            if not body_sent:
                body_sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        stalled = False
        lost = False

        async def recording_send(message: Message) -> None:
            nonlocal stalled, lost
            if lost:
                return  # the connection is gone: the rest of the answer goes nowhere
            if message["type"] == "http.response.start":
                if (wait := answer_at - time.monotonic()) > 0:
                    await _sleep_unless(gone, wait)
                if faults.lose_answer:
                    lost = True
                    self.state._answer_lost(record, int(message["status"]))
                    await _drop_connection(send, reset=faults.drop_with_reset, gone=gone)
                    return
                self.state._answered(record, int(message["status"]), client_gone=gone.is_set())
            elif (
                message["type"] == "http.response.body" and faults.slow_body_seconds and not stalled
            ):
                stalled = True
                await _sleep_unless(gone, faults.slow_body_seconds)
            await send(message)

        if faults.status:
            response = _fault_response(faults.status, self.state.retry_after)
            await response(scope, replay_receive, recording_send)
            return
        inner_scope = dict(scope)
        inner_scope[_SCOPE_FORCE_202] = faults.force_202
        await self.app(inner_scope, replay_receive, recording_send)


async def _read_body(receive: Receive) -> bytes | None:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _watch_disconnect(receive: Receive, gone: asyncio.Event) -> None:
    # After the body, uvicorn's receive() only returns once the client disconnects (or the
    # response is complete, which is also reported as a disconnect: harmless, we are done).
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            gone.set()
            return


async def _sleep_unless(gone: asyncio.Event, seconds: float) -> None:
    """Sleep, but stop early when the client disconnects."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(gone.wait(), seconds)


def _header(scope: Scope, name: str) -> str | None:
    wanted = name.encode("latin-1")
    for key, value in scope.get("headers", []):
        if key.lower() == wanted:
            return bytes(value).decode("latin-1")
    return None


def _fault_response(status: int, retry_after: str) -> Response:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    if status == 429:
        headers = {"Retry-After": retry_after} if retry_after else None
        return JSONResponse({"detail": phrase}, status_code=429, headers=headers)
    if status in (502, 504):
        # What a load balancer in front of the API answers: HTML, not JSON.
        html = f"<html><body><h1>{status} {phrase}</h1></body></html>"
        return HTMLResponse(html, status_code=status)
    return JSONResponse({"detail": phrase}, status_code=status)


async def _drop_connection(send: Send, *, reset: bool, gone: asyncio.Event) -> None:
    """Close the TCP connection of this request without writing a byte of response."""
    cycle = getattr(send, "__self__", None)
    transport = getattr(cycle, "transport", None)
    if not isinstance(transport, asyncio.Transport):
        msg = "cannot drop the connection: the server did not expose its transport"
        raise RuntimeError(msg)  # uvicorn turns this into a 500, which a test will notice
    if reset:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Linger 0: close() sends RST instead of FIN.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    else:
        transport.close()
    # Let uvicorn see the disconnect so it does not try to answer 500 for us.
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(gone.wait(), _DISCONNECT_GRACE_SECONDS)
