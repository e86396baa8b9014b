"""What the stand-in keeps: the requests it received and the bulk ops it started."""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from local.standin.bodies import _CANONICAL_UUID
from local.standin.contract import BulkOpStatus

_UNPARSED: Any = object()


@dataclass(slots=True, eq=False)
class RecordedRequest:
    """One request the stand-in received.

    `status` is None while the request is in flight, the status the stand-in answered with
    afterwards, and 0 when the connection was dropped. `client_disconnected` is True when the
    client had already gone (e.g. timed out) by the time the answer was ready: the stand-in still
    processed the request, as the real API would. `answer_lost` is True when the stand-in
    processed the request and then dropped the connection instead of answering (`status` is
    the answer it did not send). `body` is the parsed JSON body (None when
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
    answer_lost: bool = False
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
