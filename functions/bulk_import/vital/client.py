"""The httpx client for Vital's Link bulk import: one pooled client, typed errors.

Every request goes through the file's ``RetryPolicy`` (``retry.py``) and, for bulk imports, its
``CircuitBreaker``; answers that are not a success become a ``VitalError`` whose message is
scrubbed of the API key and the request's tokens (``messages.py``).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, NoReturn

import httpx
from pydantic_core import ValidationError

from bulk_import.config import Settings
from bulk_import.errors import (
    VitalAuthError,
    VitalClientError,
    VitalError,
    VitalProtocolError,
    VitalRejected,
    VitalUnavailable,
)
from bulk_import.model import BulkImportResponse
from bulk_import.vital import messages
from bulk_import.vital.breaker import CircuitBreaker
from bulk_import.vital.retry import MIN_ATTEMPT_SECONDS, Call, RetryPolicy

CONNECT_TIMEOUT_SECONDS = 5.0


class PostResult(NamedTuple):
    status: int
    # None for a 202 without the 200 shape's lists (enqueued; the body may well be empty).
    body: BulkImportResponse | None
    attempts: int
    duration_s: float


@dataclass(slots=True)
class CallStats:
    """Counters shared by all worker threads of one file (for metrics).

    ``wait_seconds`` is the backoff chosen before each retry that was then made (Retry-After or
    jittered exponential): what stamina sleeps, except in its testing mode, which sleeps 0.
    """

    retries: int = 0
    throttles: int = 0
    server_errors: int = 0
    transport_errors: int = 0
    wait_seconds: float = 0.0
    # Requests not sent because the circuit breaker was open.
    short_circuited: int = 0
    # Chunks whose retries stopped early: budget spent, deadline near, or breaker open.
    retries_refused: int = 0
    # Bulk imports whose answer was lost (not resent: settled by lookup).
    answers_lost: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, **deltas: float) -> None:
        with self._lock:
            for name, delta in deltas.items():
                setattr(self, name, getattr(self, name) + delta)


class VitalClient:
    """One instance per file: a keep-alive pool sized to the concurrency, shared by threads."""

    def __init__(
        self,
        settings: Settings,
        api_key: str,
        remaining_seconds: Callable[[], float],
        transport: httpx.BaseTransport | None = None,
        *,
        breaker: CircuitBreaker | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings
        # What waiting on Vital's bulk ops reads and pauses with (the wiring's: tests never sleep).
        self.clock = clock
        self.sleep = sleep
        self._api_key = api_key
        self.stats = CallStats()
        self.breaker = breaker or CircuitBreaker()
        self.retry = RetryPolicy(settings, remaining_seconds, self.stats, self.breaker, rng)
        params = {"team_id": settings.vital_team_id} if settings.vital_team_id else None
        self._http = httpx.Client(
            headers={
                "x-vital-api-key": api_key,
                "content-type": "application/json",
                "accept": "application/json",
                "user-agent": "vital-bulk-import/0.1",
            },
            params=params,
            timeout=self._timeout(settings.http_timeout_seconds),
            limits=httpx.Limits(
                max_connections=settings.max_concurrency,
                max_keepalive_connections=settings.max_concurrency,
                keepalive_expiry=30.0,
            ),
            transport=transport,
        )

    @property
    def retry_budget(self) -> int:
        """Retries the whole file may make (answered calls refill it)."""
        return self.retry.retry_budget

    @property
    def retries_left(self) -> float:
        return self.retry.retries_left

    def __enter__(self) -> VitalClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def post_bulk_import(self, body: bytes) -> PostResult:
        """POST one chunk, retrying transient failures; raises a ``VitalError`` otherwise."""
        self.retry.check_time_to_start()
        if not self.breaker.allow():
            self.stats.record(short_circuited=1)
            raise VitalUnavailable("not sent: Vital kept failing (circuit breaker open)")
        call = self.retry.new_call(self.settings.max_attempts, resend_safe=False)
        started = time.monotonic()
        try:
            result = self.retry.run(call, lambda: self._post_once(body, call, started))
        except VitalUnavailable:
            self.breaker.failure()
            raise
        except VitalError as exc:
            if isinstance(exc, VitalClientError) and (exc.status or 500) >= 500:
                self.breaker.failure()  # 501, 505, or nothing sent: not an answer from Vital
            else:  # Vital answered: a 4xx or an unreadable 200 say it is up
                self.breaker.success()
            raise
        self.breaker.success()
        return result

    def get(self, url: str, params: dict[str, Any], call: Call) -> httpx.Response:
        """One GET attempt of ``call`` (for ``RetryPolicy.run``): a 200, or raises what the
        answer means, its message scrubbed of the API key."""
        response = _released(
            self._http.get(url, params=params, timeout=self._attempt_timeout(call))
        )
        call.last_status = response.status_code
        if response.status_code != 200:
            self._raise_for_status(response, lambda: {self._api_key})
        return response

    def _post_once(self, body: bytes, call: Call, started: float) -> PostResult:
        response = _released(
            self._http.post(
                self.settings.bulk_import_url, content=body, timeout=self._attempt_timeout(call)
            )
        )
        status = response.status_code
        call.last_status = status
        if status not in (200, 201, 202):
            self._raise_for_status(response, lambda: self._secrets(body))
        elapsed = time.monotonic() - started
        if status == 202:
            return PostResult(status, _lists_of_202(response), call.attempts, elapsed)
        try:
            parsed = BulkImportResponse.model_validate_json(response.content or b"{}")
        except ValidationError:
            msg = (
                f"Vital answered {status} with a body that is not the documented "
                "shape; whether these rows were imported is unknown"
            )
            raise VitalProtocolError(msg, status) from None
        return PostResult(status, parsed, call.attempts, elapsed)

    def _attempt_timeout(self, call: Call) -> httpx.Timeout:
        """The configured timeouts, shortened so the attempt cannot outlive the deadline."""
        left = max(MIN_ATTEMPT_SECONDS, call.deadline - time.monotonic())
        return self._timeout(min(self.settings.http_timeout_seconds, left))

    @staticmethod
    def _timeout(seconds: float) -> httpx.Timeout:
        return httpx.Timeout(
            connect=min(CONNECT_TIMEOUT_SECONDS, seconds), read=seconds, write=seconds, pool=seconds
        )

    def _raise_for_status(
        self, response: httpx.Response, secrets: Callable[[], set[str]]
    ) -> NoReturn:
        """Raise what a non-2xx answer means; messages are scrubbed of ``secrets()``."""
        self.retry.raise_if_retryable(response)
        status = response.status_code
        known = secrets()
        if status in (401, 403):
            raise VitalAuthError(messages.auth_message(status, response, known), status)
        if status == 422:
            issues = messages.validation_issues(response, known)
            raise VitalRejected(messages.issues_summary(issues), issues)
        raise VitalClientError(f"HTTP {status}: {messages.detail_text(response, known)}", status)

    def _secrets(self, body: bytes) -> set[str]:
        """Every value an error message must not repeat: the key and the body's tokens."""
        return {self._api_key, *messages.request_secrets(body)}


def _lists_of_202(response: httpx.Response) -> BulkImportResponse | None:
    """The 200 shape's lists when a 202 carries them (the schema declares no body for a 202:
    anything else, empty or not, means every row is enqueued)."""
    if not response.content.strip():
        return None
    try:
        parsed = BulkImportResponse.model_validate_json(response.content)
    except ValidationError:
        return None
    return parsed if parsed.user_ids_imported or parsed.user_ids_failed else None


def _released(response: httpx.Response) -> httpx.Response:
    """A read, closed response, cut loose from httpx 0.28's response ↔ stream reference cycle.

    Each response and its stream refer to each other (encode/httpx#3733), so refcounting never
    frees them, nor the request they hold with its body (up to MAX_BODY_BYTES). Left to the
    cyclic GC, they are often promoted to an old generation while the request is out: ~47 MB of
    bodies at 100k rows with the GC held off, much of it in the peak RSS. Replacing the spent
    stream (its content is already read) lets each go as soon as its chunk is done.
    """
    response.close()  # already closed once read; makes sure before the stream is replaced
    response.stream = httpx.ByteStream(b"")
    return response
