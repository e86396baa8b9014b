"""The httpx client for Vital's Link bulk import: one pooled client, retries, typed errors.

Error messages carry status codes, Vital's own validation messages and Retry-After values only;
never a request body, a header or a token.
"""

from __future__ import annotations

import email.utils
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import stamina

from bulk_import.config import Settings
from bulk_import.models import (
    BulkImportResponse,
    BulkOp,
    BulkOpPage,
    ValidationErrorBody,
    ValidationIssue,
)
from bulk_import.redaction import redact_text

RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
MAX_RETRY_AFTER_SECONDS = 60.0
_MESSAGE_LIMIT = 300


class VitalError(Exception):
    """Base of every failure talking to Vital; ``status`` is the last HTTP status, if any."""

    def __init__(self, message: str, status: int | None = None, attempts: int = 0) -> None:
        super().__init__(message)
        self.status = status
        self.attempts = attempts


class VitalAuthError(VitalError):
    """401/403: wrong key, or Link Migration / BYO OAuth not enabled. Fatal for the file."""


class VitalRejected(VitalError):
    """422: Vital's validation refused the body; ``issues`` point at connections when they can."""

    def __init__(self, message: str, issues: list[ValidationIssue], attempts: int = 0) -> None:
        super().__init__(message, 422, attempts)
        self.issues = issues


class VitalClientError(VitalError):
    """Another 4xx: the request is wrong in a way retrying cannot fix."""


class VitalUnavailable(VitalError):
    """Retries, the retry budget, the deadline or the circuit breaker ran out."""


class _Retryable(Exception):
    def __init__(self, status: int, retry_after: float | None) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class PostResult:
    status: int
    body: BulkImportResponse | None  # None for 202 (enqueued; the body may be empty)
    attempts: int
    duration_s: float


@dataclass(slots=True)
class CallStats:
    """Counters shared by all worker threads of one file (for metrics and the retry budget)."""

    retries: int = 0
    throttles: int = 0
    server_errors: int = 0
    transport_errors: int = 0
    wait_seconds: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, **deltas: float) -> None:
        with self._lock:
            for name, delta in deltas.items():
                setattr(self, name, getattr(self, name) + delta)


class CircuitBreaker:
    """Opens after ``threshold`` consecutive failed chunks so a down API is not hammered."""

    def __init__(self, threshold: int = 3) -> None:
        self._threshold = threshold
        self._consecutive = 0
        self._lock = threading.Lock()

    @property
    def open(self) -> bool:
        with self._lock:
            return self._consecutive >= self._threshold

    def success(self) -> None:
        with self._lock:
            self._consecutive = 0

    def failure(self) -> None:
        with self._lock:
            self._consecutive += 1


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP date), capped."""
    if not value:
        return None
    value = value.strip()
    seconds: float
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - (time.time() if now is None else now)
    return max(0.0, min(seconds, MAX_RETRY_AFTER_SECONDS))


class VitalClient:
    """One instance per file: a keep-alive pool sized to the concurrency, shared by threads."""

    def __init__(
        self,
        settings: Settings,
        api_key: str,
        remaining_seconds: Callable[[], float],
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._settings = settings
        self._remaining = remaining_seconds
        self.stats = CallStats()
        self.breaker = CircuitBreaker()
        params = {"team_id": settings.vital_team_id} if settings.vital_team_id else None
        self._http = httpx.Client(
            headers={
                "x-vital-api-key": api_key,
                "content-type": "application/json",
                "accept": "application/json",
                "user-agent": "vital-bulk-import/0.1",
            },
            params=params,
            timeout=httpx.Timeout(
                connect=5.0,
                read=settings.http_timeout_seconds,
                write=settings.http_timeout_seconds,
                pool=settings.http_timeout_seconds * 2,
            ),
            limits=httpx.Limits(
                max_connections=settings.max_concurrency,
                max_keepalive_connections=settings.max_concurrency,
                keepalive_expiry=30.0,
            ),
            transport=transport,
        )
        # Retries for the whole file, so one sick API cannot burn the invocation chunk by chunk.
        self._retry_budget = max(10, settings.max_attempts * 2 * settings.max_concurrency)
        self._budget_lock = threading.Lock()

    def __enter__(self) -> VitalClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def post_bulk_import(self, body: bytes) -> PostResult:
        """POST one chunk, retrying transient failures; raises a ``VitalError`` otherwise."""
        if self.breaker.open:
            raise VitalUnavailable("not sent: Vital kept failing (circuit breaker open)")
        started = time.monotonic()
        attempts = 0
        last: str = "no attempt made"
        try:
            for attempt in self._retrying():
                with attempt:
                    attempts += 1
                    if attempts > 1:
                        self.stats.record(retries=1)
                    try:
                        result = self._post_once(body, attempts, started)
                    except httpx.TransportError as exc:
                        last = f"{type(exc).__name__} talking to Vital"
                        self.stats.record(transport_errors=1)
                        raise
                    except _Retryable as exc:
                        last = f"HTTP {exc.status}"
                        raise
            self.breaker.success()
            return result
        except (_Retryable, httpx.TransportError):
            self.breaker.failure()
            raise VitalUnavailable(
                f"gave up after {attempts} attempt(s): {last}",
                status=_status_of(last),
                attempts=attempts,
            ) from None
        except VitalError as exc:
            exc.attempts = attempts
            if not isinstance(exc, VitalRejected):
                self.breaker.failure()
            raise

    def _retrying(self) -> Iterator[stamina.Attempt]:
        # Keep a few seconds for the caller to record the outcome after the last attempt.
        budget = max(1.0, self._remaining() - 5.0)
        return iter(
            stamina.retry_context(
                on=self._backoff,
                attempts=self._settings.max_attempts,
                timeout=budget,
                wait_initial=0.5,
                wait_max=20.0,
                wait_jitter=1.0,
            )
        )

    def _backoff(self, exc: Exception) -> bool | float:
        """stamina's hook: retry transient failures, honouring Retry-After, within the budget."""
        if not isinstance(exc, _Retryable | httpx.TransportError) or self.breaker.open:
            return False
        with self._budget_lock:
            if self._retry_budget <= 0:
                return False
            self._retry_budget -= 1
        if isinstance(exc, _Retryable) and exc.retry_after is not None:
            self.stats.record(wait_seconds=exc.retry_after)
            return exc.retry_after
        return True

    def _post_once(self, body: bytes, attempt: int, started: float) -> PostResult:
        response = self._http.post(self._settings.bulk_import_url, content=body)
        status = response.status_code
        if status in (200, 201):
            parsed = BulkImportResponse.model_validate_json(response.content or b"{}")
            return PostResult(status, parsed, attempt, time.monotonic() - started)
        if status == 202:
            return PostResult(status, None, attempt, time.monotonic() - started)
        if status in RETRYABLE_STATUS:
            if status == 429:
                self.stats.record(throttles=1)
            elif status >= 500:
                self.stats.record(server_errors=1)
            raise _Retryable(status, parse_retry_after(response.headers.get("retry-after")))
        if status in (401, 403):
            raise VitalAuthError(_auth_message(status, response), status)
        if status == 422:
            issues = _validation_issues(response)
            raise VitalRejected(_issues_summary(issues), issues)
        raise VitalClientError(f"HTTP {status}: {_detail_text(response)}", status)

    def list_bulk_ops(self, page_size: int = 50, max_pages: int = 20) -> list[BulkOp]:
        """All bulk ops Vital lists, newest pages first, bounded by ``max_pages``."""
        ops: list[BulkOp] = []
        cursor: str | None = None
        for _ in range(max_pages):
            params: dict[str, Any] = {"page_size": max(1, min(page_size, 50))}
            if cursor:
                params["next_cursor"] = cursor
            response = self._http.get(self._settings.bulk_op_url, params=params)
            if response.status_code in (401, 403):
                raise VitalAuthError(
                    _auth_message(response.status_code, response), response.status_code
                )
            response.raise_for_status()
            page = BulkOpPage.model_validate_json(response.content)
            ops.extend(page.data)
            cursor = page.next_cursor
            if not cursor:
                break
        return ops


def _status_of(last: str) -> int | None:
    return int(last[5:]) if last.startswith("HTTP ") and last[5:].isdigit() else None


def _detail_text(response: httpx.Response) -> str:
    try:
        payload = response.json()
    except ValueError:
        return "no JSON body"
    detail = payload.get("detail") if isinstance(payload, dict) else None
    text = detail if isinstance(detail, str) else "see Vital's response"
    return redact_text(text)[:_MESSAGE_LIMIT]


def _auth_message(status: int, response: httpx.Response) -> str:
    what = (
        "Vital rejected the API key (401): check the secret named by VITAL_API_KEY_SECRET "
        "and that it belongs to this environment (production/sandbox, US/EU)"
        if status == 401
        else "Vital refused the request (403): Link Migration may not be enabled for this team, "
        "or no Bring-Your-Own-OAuth credential is set for the provider; ask Vital support"
    )
    return f"{what}. Vital said: {_detail_text(response)}"


def _validation_issues(response: httpx.Response) -> list[ValidationIssue]:
    try:
        body = ValidationErrorBody.model_validate_json(response.content)
    except ValueError:
        return []
    return [] if isinstance(body.detail, str) else body.detail


def _issues_summary(issues: list[ValidationIssue]) -> str:
    if not issues:
        return "Vital rejected the request (422) without details"
    parts = [f"{'.'.join(map(str, i.loc))}: {i.msg}" for i in issues[:3]]
    more = f" (+{len(issues) - 3} more)" if len(issues) > 3 else ""
    return redact_text("Vital rejected the request (422): " + "; ".join(parts) + more)[
        :_MESSAGE_LIMIT
    ]


def connection_index(issue: ValidationIssue) -> int | None:
    """The connection a 422 issue points at: ``["body", "connections", 3, ...]`` → 3."""
    loc = issue.loc
    for i, part in enumerate(loc[:-1]):
        if part == "connections" and isinstance(loc[i + 1], int):
            return int(loc[i + 1])
    return None


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
