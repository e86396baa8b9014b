"""A stand-in for Vital's Link Migration API, served by uvicorn on 127.0.0.1.

It implements what `DESIGN.md` ("Vital API facts") documents:

* `POST /v2/link/bulk_import` - `x-vital-api-key` auth (401), optional `team_id` query (403 on a
  mismatch), Link Migration switch (403), FastAPI's own 422 body validation, 200
  `{"user_ids_imported", "user_ids_failed"}` or 202 with an empty body.
* `GET /v2/link/bulk_op` - the bulk ops, newest first, paginated with an opaque `next_cursor`.
* `GET /v2/user/providers/{user_id}` - the providers imported for a known user.

Everything a test wants to switch lives on `StandinState` (thread-safe; the server reads it under
its lock, tests may assign attributes at any time). Faults apply to `bulk_import` only and are
decided when a request arrives, in this order:

1. `drop_script` (pop) / `drop_every` - close the connection without any response;
2. `status_script` (pop) - 429 (with `Retry-After`), any other 4xx/5xx, or 202 (forced);
3. `throttle_every` - every n-th request answers 429 with `Retry-After`;
4. `force_202` - accept, enqueue, answer 202 with an empty body.

Every answer (or drop) leaves `latency_seconds` after its request arrived: a request takes that
long, whatever the stand-in's own processing costs, unless that is longer. `slow_body_seconds`
stalls between the response headers and the body. Faults come before auth and validation, as a
gateway's would.
Every request is recorded in `StandinState.requests` (never the API key: only whether it matched).

How a connection is dropped: an outer ASGI middleware reads the whole request body, then reaches
the connection's asyncio transport through uvicorn's ASGI `send` callable (a bound method of the
request cycle, which holds `transport`) and closes it - or aborts it with `SO_LINGER` 0 so the
peer sees a TCP reset. It then waits for uvicorn to notice the disconnect and returns without
sending anything; uvicorn sees a disconnected cycle and does not write its fallback 500.
Clients see `httpx.RemoteProtocolError` (close) or `httpx.ReadError` (reset), never a status.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import hmac
import json
import math
import re
import socket
import struct
import threading
import time
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from http import HTTPStatus
from typing import TYPE_CHECKING, Annotated, Any, Literal, NotRequired, Self, TypedDict, get_args
from urllib.parse import parse_qsl
from uuid import UUID

import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, StringConstraints, TypeAdapter, ValidationError
from pydantic_core import to_json

from bulk_import import models

if TYPE_CHECKING:
    from types import TracebackType

    from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "BULK_IMPORT_PATH",
    "BULK_OP_PATH",
    "DEFAULT_API_KEY",
    "MIGRATION_DISABLED_DETAIL",
    "PROVIDERS",
    "USER_PROVIDERS_PATH",
    "BulkImportBody",
    "ConnectionRecipe",
    "Provider",
    "RecordedRequest",
    "StandinState",
    "VitalStandin",
    "create_app",
]

BULK_IMPORT_PATH = "/v2/link/bulk_import"
BULK_OP_PATH = "/v2/link/bulk_op"
USER_PROVIDERS_PATH = "/v2/user/providers/{user_id}"
API_KEY_HEADER = "x-vital-api-key"
DEFAULT_API_KEY = "sk_local_standin_key"
MIGRATION_DISABLED_DETAIL = (
    "Link Migration is not enabled for this team. Contact Vital support to enable it."
)

# The documented provider enum: one list, the importer's (DESIGN.md's "Providers").
Provider = Literal[tuple(sorted(models.PROVIDERS))]  # type: ignore[valid-type]
PROVIDERS: tuple[str, ...] = get_args(Provider)

BulkOpStatus = Literal["in_progress", "success", "failure", "aborted"]

_SCOPE_FORCE_202 = "vital_standin.force_202"
_DISCONNECT_GRACE_SECONDS = 5.0


# --------------------------------------------------------------------------------------------
# Request bodies (FastAPI validates them and answers its standard 422 shape)
# --------------------------------------------------------------------------------------------


class ConnectionRecipe(BaseModel):
    """One connection as Vital's `bulk_import` takes it."""

    user_id: UUID
    access_token: str
    refresh_token: str
    provider_id: str
    expires_at: int
    oauth_scopes: list[str] | None = None


class BulkImportBody(BaseModel):
    """The body of `POST /v2/link/bulk_import`."""

    provider: Provider
    connections: list[ConnectionRecipe]
    wait_for_completion: bool = True


_CANONICAL_UUID = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"


class _CanonicalRecipe(TypedDict):
    """ConnectionRecipe's fields and types, but ``user_id`` only as canonical UUID text."""

    user_id: Annotated[str, StringConstraints(pattern=_CANONICAL_UUID)]
    access_token: str
    refresh_token: str
    provider_id: str
    expires_at: int
    oauth_scopes: NotRequired[list[str] | None]


class _CanonicalBody(TypedDict):
    """A subset of the bodies BulkImportBody takes: the ones whose user ids are canonical.

    For those, ``str(UUID(user_id)) == user_id``, so the ids can stay text: no UUID object is
    built and printed again for each of the hundreds of connections in a request.
    """

    provider: Provider
    connections: list[_CanonicalRecipe]
    wait_for_completion: NotRequired[bool]


_VALIDATE_CANONICAL = TypeAdapter(_CanonicalBody).validator.validate_json


@dataclass(frozen=True, slots=True)
class _Accepted:
    """What the stand-in needs of a valid body."""

    provider: str
    user_ids: list[str]
    wait_for_completion: bool


# --------------------------------------------------------------------------------------------
# State
# --------------------------------------------------------------------------------------------


_UNPARSED: Any = object()


@dataclass(slots=True, eq=False)
class RecordedRequest:
    """One request the stand-in received.

    `status` is None while the request is in flight, the status the stand-in answered with
    afterwards, and 0 when the connection was dropped. `client_disconnected` is True when the
    client had already gone (e.g. timed out) by the time the answer was ready: the stand-in still
    processed the request, as the real API would. `body` is the parsed JSON body (None when
    absent or not JSON), parsed on first access: the server only keeps the bytes, so recording
    costs it nothing per request. With `slim`, `body` keeps only what `_slim_body` keeps. The API
    key is never stored: `api_key_ok` says whether it matched.
    """

    seq: int
    method: str
    path: str
    query: dict[str, str]
    raw: bytes = field(repr=False)
    api_key_ok: bool
    timestamp: float
    slim: bool = False
    status: int | None = None
    dropped: bool = False
    client_disconnected: bool = False
    _body: Any = field(default=_UNPARSED, repr=False, compare=False)

    @property
    def body(self) -> Any:
        if self._body is _UNPARSED:
            self._body = _slim_body(self.raw) if self.slim else _parse_json(self.raw)
            if self.slim:
                self.raw = b""  # no tokens kept once slimmed
        return self._body

    @property
    def connections(self) -> list[dict[str, Any]]:
        """The `connections` of a bulk_import body (empty when absent or malformed)."""
        if not isinstance(self.body, dict):
            return []
        items = self.body.get("connections")
        if not isinstance(items, list):
            return []
        return [item for item in items if isinstance(item, dict)]

    @property
    def provider(self) -> str | None:
        """The `provider` of a bulk_import body, if any."""
        if isinstance(self.body, dict) and isinstance(self.body.get("provider"), str):
            return str(self.body["provider"])
        return None

    @property
    def user_ids(self) -> list[str]:
        """The user_ids of a bulk_import body, as sent."""
        return [str(item.get("user_id")) for item in self.connections]


@dataclass(frozen=True, slots=True)
class _Faults:
    drop: bool = False
    drop_with_reset: bool = False
    latency_seconds: float = 0.0
    status: int = 0
    force_202: bool = False
    slow_body_seconds: float = 0.0


_NO_FAULTS = _Faults()


@dataclass(slots=True)
class _BulkOp:
    seq: int
    provider: str
    size: int
    started_at: float
    completes_at: float
    final_status: BulkOpStatus
    imported: tuple[str, ...]

    def status_at(self, now: float) -> BulkOpStatus:
        return self.final_status if now >= self.completes_at else "in_progress"

    def view(self, now: float) -> dict[str, Any]:
        done = now >= self.completes_at
        return {
            "type": "link_bulk_import",
            "status": self.status_at(now),
            "provider": self.provider,
            "pending": 0 if done else self.size,
            "processed": self.size if done else 0,
            "started_at": _iso(self.started_at),
            "ended_at": _iso(self.completes_at) if done else None,
        }


@dataclass(frozen=True, slots=True)
class _ImportResult:
    enqueued: bool
    imported: list[str]
    failed: list[str]


@dataclass(eq=False)
class StandinState:
    """Configuration, faults and records of a `VitalStandin`; safe to share across threads.

    Tests may assign any public attribute at any time. `reset()` puts every constructor field
    back to the value it had at construction and forgets requests, bulk ops and counters.
    `known_users`, `reject_user_ids` and `reject_unattributed` match user_ids case-insensitively
    (UUIDs are compared in canonical form).
    """

    # The account.
    api_key: str = field(default=DEFAULT_API_KEY, repr=False)
    team_id: str | None = None
    link_migration_enabled: bool = True
    known_users: set[str] = field(default_factory=set)
    # Faults (bulk_import only).
    latency_seconds: float = 0.0
    force_202: bool = False
    status_script: list[int] = field(default_factory=list)
    throttle_every: int = 0
    retry_after: str = "1"
    drop_script: list[bool] = field(default_factory=list)
    drop_every: int = 0
    drop_with_reset: bool = False
    slow_body_seconds: float = 0.0
    reject_user_ids: set[str] = field(default_factory=set)
    reject_unattributed: set[str] = field(default_factory=set)
    # Bulk ops answered 202 finish this long after they started, with this status.
    op_complete_after_seconds: float = 0.2
    op_final_status: BulkOpStatus = "success"
    # False: a recorded body keeps only provider, wait_for_completion and each connection's
    # user_id and provider_id, and drops its bytes (with the tokens) once it is first read.
    record_full_bodies: bool = True
    # Records.
    requests: list[RecordedRequest] = field(default_factory=list, init=False)
    bulk_import_count: int = field(default=0, init=False)
    _ops: list[_BulkOp] = field(default_factory=list, init=False, repr=False)
    _seq: int = field(default=0, init=False, repr=False)
    _op_seq: int = field(default=0, init=False, repr=False)
    _lock: threading.RLock = field(default_factory=threading.RLock, init=False, repr=False)
    _initial: dict[str, Any] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self._initial = {
            f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self) if f.init
        }

    # ---- helpers for tests ---------------------------------------------------------------

    def reset(self) -> None:
        """Back to the constructor's values; forget requests, bulk ops and counters."""
        with self._lock:
            for name, value in self._initial.items():
                setattr(self, name, copy.deepcopy(value))
            self.requests = []
            self.bulk_import_count = 0
            self._ops = []
            self._seq = 0  # bulk op cursors stay monotonic across resets

    def add_known_users(self, *user_ids: str) -> None:
        """Add users whose connections import (thread-safe)."""
        with self._lock:
            self.known_users.update(user_ids)

    def recorded(self) -> list[RecordedRequest]:
        """A snapshot of every request received, in arrival order."""
        with self._lock:
            return list(self.requests)

    def bulk_import_requests(self) -> list[RecordedRequest]:
        """Every `POST /v2/link/bulk_import` received, in arrival order, whatever its answer."""
        with self._lock:
            return [r for r in self.requests if _is_bulk_import(r.method, r.path)]

    def posted_connections(self, *, include_undelivered: bool = True) -> list[tuple[str, str]]:
        """(provider, user_id as sent) of every connection in a bulk_import answered 200/202.

        With `include_undelivered=False`, requests whose client had gone before the answer
        (`client_disconnected`) are left out; by default they count, since Vital accepted them.
        """
        pairs: list[tuple[str, str]] = []
        for record in self.bulk_import_requests():
            if record.status not in (200, 202):
                continue
            if record.client_disconnected and not include_undelivered:
                continue
            provider = record.provider or ""
            pairs.extend((provider, user_id) for user_id in record.user_ids)
        return pairs

    def bulk_ops(self) -> list[dict[str, Any]]:
        """Every bulk op as `GET /v2/link/bulk_op` shows it, newest first, unpaginated."""
        now = time.time()
        with self._lock:
            return [op.view(now) for op in reversed(self._ops)]

    # ---- used by the server (under the lock) -----------------------------------------------

    def _key_matches(self, presented: str | None) -> bool:
        if presented is None:
            return False
        return hmac.compare_digest(presented.encode(), self.api_key.encode())

    def _arrive(
        self,
        method: str,
        path: str,
        query: dict[str, str],
        body: bytes,
        presented_key: str | None,
    ) -> tuple[RecordedRequest, _Faults]:
        with self._lock:
            self._seq += 1
            record = RecordedRequest(
                seq=self._seq,
                method=method,
                path=path,
                query=query,
                raw=body,
                api_key_ok=self._key_matches(presented_key),
                timestamp=time.time(),
                slim=not self.record_full_bodies,
            )
            self.requests.append(record)
            if not _is_bulk_import(method, path):
                return record, _NO_FAULTS
            self.bulk_import_count += 1
            return record, self._decide_faults(self.bulk_import_count)

    def _decide_faults(self, n: int) -> _Faults:
        drop = self.drop_script.pop(0) if self.drop_script else False
        drop = bool(drop) or (self.drop_every > 0 and n % self.drop_every == 0)
        status = 0
        force_202 = self.force_202
        if not drop:
            scripted = self.status_script.pop(0) if self.status_script else 0
            if scripted == 202:
                force_202 = True
            elif 400 <= scripted <= 599:
                status = scripted
            if status == 0 and self.throttle_every > 0 and n % self.throttle_every == 0:
                status = 429
        return _Faults(
            drop=drop,
            drop_with_reset=self.drop_with_reset,
            latency_seconds=max(0.0, self.latency_seconds),
            status=status,
            force_202=force_202,
            slow_body_seconds=max(0.0, self.slow_body_seconds),
        )

    def _answered(self, record: RecordedRequest, status: int, *, client_gone: bool) -> None:
        with self._lock:
            record.status = status
            record.client_disconnected = client_gone

    def _dropped(self, record: RecordedRequest) -> None:
        with self._lock:
            record.status = 0
            record.dropped = True

    def _rejections(self, user_ids: list[str]) -> list[dict[str, Any]]:
        with self._lock:
            unattributed = {_canon(u) for u in self.reject_unattributed}
            rejected = {_canon(u) for u in self.reject_user_ids}
        if not unattributed and not rejected:
            return []
        if any(_canon(u) in unattributed for u in user_ids):
            return [
                {
                    "type": "value_error",
                    "loc": ["body"],
                    "msg": "Value error, the bulk import could not be processed",
                }
            ]
        return [
            {
                "type": "value_error",
                "loc": ["body", "connections", index, "user_id"],
                "msg": "Value error, user_id cannot be imported",
                "input": user_id,
            }
            for index, user_id in enumerate(user_ids)
            if _canon(user_id) in rejected
        ]

    def _import(self, provider: str, user_ids: list[str], *, enqueue: bool) -> _ImportResult:
        now = time.time()
        with self._lock:
            known = {_canon(u) for u in self.known_users}
            canon = [_canon(u) for u in user_ids]
            imported = [u for u, c in zip(user_ids, canon, strict=True) if c in known]
            failed = [u for u, c in zip(user_ids, canon, strict=True) if c not in known]
            self._op_seq += 1
            self._ops.append(
                _BulkOp(
                    seq=self._op_seq,
                    provider=provider,
                    size=len(user_ids),
                    started_at=now,
                    completes_at=now + max(0.0, self.op_complete_after_seconds) if enqueue else now,
                    final_status=self.op_final_status if enqueue else "success",
                    imported=tuple(_canon(u) for u in imported),
                )
            )
        return _ImportResult(enqueued=enqueue, imported=imported, failed=failed)

    def _list_ops(
        self, before: int | None, page_size: int
    ) -> tuple[list[dict[str, Any]], int | None]:
        now = time.time()
        with self._lock:
            newest_first = [op for op in reversed(self._ops) if before is None or op.seq < before]
        page = newest_first[:page_size]
        more = len(newest_first) > page_size
        return [op.view(now) for op in page], (page[-1].seq if more and page else None)

    def _user_providers(self, user_id: str) -> list[dict[str, Any]] | None:
        now = time.time()
        wanted = _canon(user_id)
        with self._lock:
            if wanted not in {_canon(u) for u in self.known_users}:
                return None
            ops = list(self._ops)
        providers: dict[str, dict[str, Any]] = {}
        for op in ops:
            if op.provider in providers or wanted not in op.imported:
                continue
            if op.status_at(now) != "success":
                continue
            providers[op.provider] = {
                "name": op.provider.replace("_", " ").title(),
                "slug": op.provider,
                "logo": f"https://storage.googleapis.com/vital-assets/{op.provider}.png",
                "created_on": _iso(op.completes_at),
                "status": "connected",
                "error_details": None,
                "resource_availability": {},
            }
        return list(providers.values())


def _slim_body(body: bytes) -> Any:
    parsed = _parse_json(body)
    if not isinstance(parsed, dict):
        return parsed
    slim = {key: parsed[key] for key in ("provider", "wait_for_completion") if key in parsed}
    connections = parsed.get("connections")
    if isinstance(connections, list):
        slim["connections"] = [
            {key: c[key] for key in ("user_id", "provider_id") if key in c}
            for c in connections
            if isinstance(c, dict)
        ]
    return slim


def _is_bulk_import(method: str, path: str) -> bool:
    return method == "POST" and path == BULK_IMPORT_PATH


_CANONICAL = re.compile(_CANONICAL_UUID)


@functools.lru_cache(maxsize=1 << 20)
def _canon(user_id: str) -> str:
    """Canonical UUID text; cached, since every request compares hundreds of ids."""
    if _CANONICAL.fullmatch(user_id):
        return user_id
    try:
        return str(UUID(user_id))
    except ValueError:
        return user_id.strip().lower()


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat()


def _parse_json(body: bytes) -> Any:
    if not body:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return None


# --------------------------------------------------------------------------------------------
# The app
# --------------------------------------------------------------------------------------------


def create_app(state: StandinState) -> ASGIApp:
    """The stand-in as an ASGI app: the FastAPI routes inside the fault/record middleware."""
    api = FastAPI(title="Vital stand-in", docs_url=None, redoc_url=None)

    async def authenticate(request: Request) -> None:
        with state._lock:
            ok = state._key_matches(request.headers.get(API_KEY_HEADER))
        if not ok:
            raise HTTPException(status_code=401, detail="Invalid or missing API key.")

    async def link_migration_allowed(request: Request) -> None:
        await authenticate(request)
        requested_team = request.query_params.get("team_id")
        with state._lock:
            team_id, enabled = state.team_id, state.link_migration_enabled
        if requested_team and team_id and requested_team != team_id:
            raise HTTPException(status_code=403, detail="The team_id does not match the API key.")
        if not enabled:
            raise HTTPException(status_code=403, detail=MIGRATION_DISABLED_DETAIL)

    @api.post(BULK_IMPORT_PATH, dependencies=[Depends(link_migration_allowed)])
    async def bulk_import(request: Request) -> Response:
        body = _bulk_import_body(await request.body())
        user_ids = body.user_ids
        errors = state._rejections(user_ids)
        if errors:
            return JSONResponse({"detail": errors}, status_code=422)
        enqueue = bool(request.scope.get(_SCOPE_FORCE_202)) or not body.wait_for_completion
        result = state._import(body.provider, user_ids, enqueue=enqueue)
        if result.enqueued:
            return Response(status_code=202)
        content = to_json({"user_ids_imported": result.imported, "user_ids_failed": result.failed})
        return Response(content, media_type="application/json")

    @api.get(BULK_OP_PATH, dependencies=[Depends(link_migration_allowed)])
    async def list_bulk_ops(
        page_size: Annotated[int, Query(ge=1, le=50)] = 10,
        next_cursor: str | None = None,
    ) -> Response:
        before: int | None = None
        if next_cursor:
            try:
                before = int(next_cursor)
            except ValueError:
                detail = [
                    {
                        "type": "value_error",
                        "loc": ["query", "next_cursor"],
                        "msg": "Value error, invalid cursor",
                        "input": next_cursor,
                    }
                ]
                return JSONResponse({"detail": detail}, status_code=422)
        data, last = state._list_ops(before, page_size)
        return JSONResponse({"data": data, "next_cursor": None if last is None else str(last)})

    @api.get(USER_PROVIDERS_PATH, dependencies=[Depends(authenticate)])
    async def user_providers(user_id: UUID) -> Response:
        providers = state._user_providers(str(user_id))
        if providers is None:
            return JSONResponse({"detail": "User not found."}, status_code=404)
        return JSONResponse({"providers": providers})

    return _FaultAndRecordMiddleware(api, state)


def _bulk_import_body(raw: bytes) -> _Accepted:
    """The body as FastAPI's own body parameter would take it, 422 included, in one parse.

    pydantic-core parses and validates the bytes in one step, first against ``_CanonicalBody``
    (no Python object per connection), then against BulkImportBody itself; only a body that
    fails both goes through FastAPI's two steps (``json.loads``, then validation of the Python
    objects) to raise exactly the error FastAPI raises. Declaring ``body: BulkImportBody`` takes
    those two steps for every body, about four times the CPU: the stand-in, not the client,
    became the bottleneck of a benchmark (8 requests in flight each wanted 6 ms of its one
    thread inside a 50 ms latency). tests/integration/test_local_stack.py compares the errors
    with FastAPI's own; tests/unit/test_standin_body.py the accepted ids with BulkImportBody's.
    """
    try:
        fast = _VALIDATE_CANONICAL(raw)
    except ValidationError:
        pass
    else:
        return _Accepted(
            fast["provider"],
            [c["user_id"] for c in fast["connections"]],
            fast.get("wait_for_completion", True),
        )
    try:
        return _accepted(BulkImportBody.model_validate_json(raw))
    except ValidationError:
        pass
    if not raw:
        error = {"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}
        raise RequestValidationError([error])
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        error = {
            "type": "json_invalid",
            "loc": ("body", exc.pos),
            "msg": "JSON decode error",
            "input": {},
            "ctx": {"error": exc.msg},
        }
        raise RequestValidationError([error], body=exc.doc) from exc
    except ValueError as exc:  # not UTF-8, or a number too long: FastAPI's catch-all answer
        raise HTTPException(status_code=400, detail="There was an error parsing the body") from exc
    try:
        return _accepted(BulkImportBody.model_validate(data, from_attributes=True))  # as FastAPI
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        raise RequestValidationError(errors, body=data) from exc


def _accepted(body: BulkImportBody) -> _Accepted:
    return _Accepted(
        body.provider, [str(c.user_id) for c in body.connections], body.wait_for_completion
    )


class _FaultAndRecordMiddleware:
    """Outermost ASGI layer: records every request and applies the faults (see module doc)."""

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

        async def recording_send(message: Message) -> None:
            nonlocal stalled
            if message["type"] == "http.response.start":
                if (wait := answer_at - time.monotonic()) > 0:
                    await _sleep_unless(gone, wait)
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


# --------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------


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
