"""`StandinState`: the stand-in's configuration, switchable faults and records, under one lock."""

from __future__ import annotations

import copy
import hmac
import json
import threading
import time
from dataclasses import dataclass, field, fields
from typing import Any

from local.standin.contract import DEFAULT_API_KEY, BulkOpStatus, _is_bulk_import
from local.standin.faults import _NO_FAULTS, _Faults
from local.standin.records import RecordedRequest, _BulkOp, _canon, _ImportResult, _iso

# How much of a token a 422 echoes when `echo_token_prefix` is on.
ECHOED_TOKEN_CHARS = 14


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
    # Vital keeps the chunk, the answer is lost: the request is processed, then the connection
    # is dropped (as `drop_with_reset` says) instead of the answer being sent.
    lose_answer_script: list[bool] = field(default_factory=list)
    lose_answer_every: int = 0
    slow_body_seconds: float = 0.0
    reject_user_ids: set[str] = field(default_factory=set)
    reject_unattributed: set[str] = field(default_factory=set)
    # Bulk ops answered 202 finish this long after they started, with this status.
    op_complete_after_seconds: float = 0.2
    op_final_status: BulkOpStatus = "success"
    # False: a recorded body keeps only provider, wait_for_completion and each connection's
    # user_id and provider_id, and drops its bytes (with the tokens) once it is first read.
    record_full_bodies: bool = True
    # True: a 422's msg echoes the first ECHOED_TOKEN_CHARS characters of the offending
    # connection's access_token, as a careless API might.
    echo_token_prefix: bool = False
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
        lose = self.lose_answer_script.pop(0) if self.lose_answer_script else False
        lose = bool(lose) or (self.lose_answer_every > 0 and n % self.lose_answer_every == 0)
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
            lose_answer=lose and not drop and not status,
        )

    def _answered(self, record: RecordedRequest, status: int, *, client_gone: bool) -> None:
        with self._lock:
            record.status = status
            record.client_disconnected = client_gone

    def _answer_lost(self, record: RecordedRequest, status: int) -> None:
        with self._lock:
            record.status = status
            record.answer_lost = True
            record.client_disconnected = True

    def _dropped(self, record: RecordedRequest) -> None:
        with self._lock:
            record.status = 0
            record.dropped = True

    def _rejections(self, user_ids: list[str], raw: bytes = b"") -> list[dict[str, Any]]:
        with self._lock:
            unattributed = {_canon(u) for u in self.reject_unattributed}
            rejected = {_canon(u) for u in self.reject_user_ids}
            echo = self.echo_token_prefix
        if not unattributed and not rejected:
            return []

        def said(msg: str, index: int) -> str:
            return msg + _token_prefix(raw, index) if echo else msg

        first = next((i for i, u in enumerate(user_ids) if _canon(u) in unattributed), None)
        if first is not None:
            return [
                {
                    "type": "value_error",
                    "loc": ["body"],
                    "msg": said("Value error, the bulk import could not be processed", first),
                }
            ]
        return [
            {
                "type": "value_error",
                "loc": ["body", "connections", index, "user_id"],
                "msg": said("Value error, user_id cannot be imported", index),
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


def _token_prefix(raw: bytes, index: int) -> str:
    """`` (access_token tok-AT-00001…)``: the first characters of a connection's token."""
    token = json.loads(raw)["connections"][index]["access_token"]
    return f" (access_token {token[:ECHOED_TOKEN_CHARS]}…)"
