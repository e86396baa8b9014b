"""The httpx client for Vital's Link bulk import: one pooled client, retries, typed errors.

Retries run on stamina (tenacity underneath). The backoff hook decides every wait itself:
``Retry-After`` when Vital sent one (capped), otherwise exponential backoff with full jitter. It
also refuses a retry when the file's retry budget is spent, when the circuit breaker is open, or
when the wait plus another attempt would run past the invocation's deadline (derived from the
Lambda's remaining time), so a sick API never burns the whole invocation.

Error messages carry status codes, Vital's own validation messages (minus anything that looks
like a token, and minus every token value of the request that caused them) and exception type
names only; never a request or response body, a header or a token.
"""

from __future__ import annotations

import email.utils
import json
import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NoReturn

import httpx
from pydantic_core import ValidationError

from bulk_import.config import Settings
from bulk_import.errors import (
    VitalAuthError,
    VitalClientError,
    VitalError,
    VitalNoTime,
    VitalProtocolError,
    VitalRejected,
    VitalUnavailable,
)
from bulk_import.model import (
    BulkImportResponse,
    BulkOp,
    BulkOpPage,
    ValidationErrorBody,
    ValidationIssue,
)
from bulk_import.observability import log_retries
from bulk_import.redaction import MASK, redact_text

RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
# Transport failures worth another attempt. Not UnsupportedProtocol / LocalProtocolError: those
# are our own mistakes and fail the same way every time.
RETRYABLE_TRANSPORT_ERRORS: tuple[type[httpx.TransportError], ...] = (
    httpx.TimeoutException,
    httpx.NetworkError,
    httpx.RemoteProtocolError,
    httpx.ProxyError,
)
MAX_RETRY_AFTER_SECONDS = 60.0
# Full jitter: the n-th retry waits uniform(0, min(BACKOFF_MAX, BACKOFF_BASE * 2 ** (n - 1))).
BACKOFF_BASE_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 20.0
CONNECT_TIMEOUT_SECONDS = 5.0
# Of the retry budget, what a call answered at its first attempt gives back (see _refund).
REFUND_PER_ANSWER = 0.2
# No attempt starts with less time than this before the deadline.
MIN_ATTEMPT_SECONDS = 1.0


def _reserve_seconds(settings: Settings) -> float:
    """Lambda time the client keeps back from its retries (half the pipeline's margin)."""
    return max(1.0, settings.safety_margin_seconds / 2)


def start_seconds(settings: Settings) -> float:
    """Lambda time a request needs left for the client to start it (``post_bulk_import``)."""
    return _reserve_seconds(settings) + MIN_ATTEMPT_SECONDS


BULK_OP_MAX_ATTEMPTS = 3
BREAKER_THRESHOLD = 3
BREAKER_COOLDOWN_SECONDS = 30.0
_MESSAGE_LIMIT = 300
_MIN_SECRET_LENGTH = 4
# A token in another column (provider_id, a scope) is that long; shorter values there are not.
_MIN_STRAY_SECRET_LENGTH = 12
_TOKEN_FIELDS = frozenset({"access_token", "refresh_token"})


class _Retryable(Exception):
    def __init__(self, status: int, retry_after: float | None) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class PostResult:
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
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, **deltas: float) -> None:
        with self._lock:
            for name, delta in deltas.items():
                setattr(self, name, getattr(self, name) + delta)


class CircuitBreaker:
    """Closed → open after ``threshold`` consecutive failed calls → one trial after ``cooldown``.

    While open, calls are refused at once and running retries stop. After the cooldown one call
    (a single attempt: retries stop while the breaker is not closed) may try; its success closes
    the breaker, its failure opens it for another cooldown.
    """

    def __init__(
        self,
        threshold: int = BREAKER_THRESHOLD,
        cooldown: float = BREAKER_COOLDOWN_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._threshold = threshold
        self._cooldown = cooldown
        self._clock = clock
        self._consecutive = 0
        self._opened_at: float | None = None
        self._trial = False
        self._lock = threading.Lock()

    @property
    def open(self) -> bool:
        """True unless closed (also while a trial call is running)."""
        with self._lock:
            return self._opened_at is not None

    def allow(self) -> bool:
        """May a call start now? Hands out the single trial when the cooldown has passed."""
        with self._lock:
            if self._opened_at is None:
                return True
            if self._trial or self._clock() - self._opened_at < self._cooldown:
                return False
            self._trial = True
            return True

    def success(self) -> None:
        with self._lock:
            self._consecutive = 0
            self._opened_at = None
            self._trial = False

    def failure(self) -> None:
        with self._lock:
            self._consecutive += 1
            if self._trial or self._consecutive >= self._threshold:
                self._opened_at = self._clock()
            self._trial = False


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


def full_jitter_backoff(retry: int, rng: random.Random | None = None) -> float:
    """The wait before the ``retry``-th retry (1-based): uniform over [0, exponential cap]."""
    ceiling = min(BACKOFF_MAX_SECONDS, BACKOFF_BASE_SECONDS * 2 ** min(retry - 1, 30))
    return (rng or random).uniform(0.0, ceiling)


@dataclass(slots=True)
class _Call:
    """One logical request and its retries (lives on one worker thread)."""

    deadline: float  # time.monotonic() after which no attempt may run
    max_attempts: int
    attempts: int = 0
    last: str = "no attempt made"
    last_status: int | None = None
    stopped: str | None = None  # why retrying stopped before the attempts ran out
    pending_wait: float | None = None  # chosen by the hook, committed when the retry starts


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
    ) -> None:
        self._settings = settings
        self._remaining = remaining_seconds
        self._api_key = api_key
        self._rng = rng
        self.stats = CallStats()
        self.breaker = breaker or CircuitBreaker()
        # Retries stop this long before the invocation ends: the other half of the safety
        # margin is the pipeline's, to write outcomes and a checkpoint after the last answer.
        self._reserve_seconds = _reserve_seconds(settings)
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
        # Retries for the whole file, so one sick API cannot burn the invocation chunk by chunk;
        # answered calls refill it (``_refund``).
        self.retry_budget = max(10, settings.max_attempts * 2 * settings.max_concurrency)
        self._budget_left = float(self.retry_budget)
        self._budget_lock = threading.Lock()

    @property
    def retries_left(self) -> float:
        with self._budget_lock:
            return self._budget_left

    def __enter__(self) -> VitalClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # --- bulk import --------------------------------------------------------------------------

    def post_bulk_import(self, body: bytes) -> PostResult:
        """POST one chunk, retrying transient failures; raises a ``VitalError`` otherwise."""
        if self._seconds_to_deadline() < MIN_ATTEMPT_SECONDS:
            raise VitalNoTime("not sent: too little Lambda time left for a request")
        if not self.breaker.allow():
            self.stats.record(short_circuited=1)
            raise VitalUnavailable("not sent: Vital kept failing (circuit breaker open)")
        call = self._new_call(self._settings.max_attempts)
        started = time.monotonic()
        try:
            result = self._with_retries(call, lambda: self._post_once(body, call, started))
        except (_Retryable, httpx.TransportError):
            self.breaker.failure()
            raise VitalUnavailable(
                _give_up_message(call), status=call.last_status, attempts=call.attempts
            ) from None
        except VitalError as exc:
            exc.attempts = call.attempts
            if isinstance(exc, VitalClientError) and (exc.status or 500) >= 500:
                self.breaker.failure()  # 501, 505, or nothing sent: not an answer from Vital
            else:  # Vital answered: a 4xx or an unreadable 200 say it is up
                self.breaker.success()
            raise
        self.breaker.success()
        return result

    def _post_once(self, body: bytes, call: _Call, started: float) -> PostResult:
        response = _released(
            self._http.post(
                self._settings.bulk_import_url, content=body, timeout=self._attempt_timeout(call)
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

    # --- bulk ops -----------------------------------------------------------------------------

    def list_bulk_ops(
        self, page_size: int = 50, max_pages: int = 20, since: datetime | None = None
    ) -> list[BulkOp]:
        """Bulk ops as Vital lists them (newest first), bounded by ``max_pages``.

        With ``since``, paging stops at the first page that reaches ops started before it.
        Transient failures are retried (a GET is safe to repeat); every failure is a
        ``VitalError``.
        """
        ops: list[BulkOp] = []
        cursor: str | None = None
        for _ in range(max_pages):
            params: dict[str, Any] = {"page_size": max(1, min(page_size, 50))}
            if cursor:
                params["next_cursor"] = cursor
            page = self._bulk_op_page(params)
            ops.extend(page.data)
            cursor = page.next_cursor
            if not cursor or (since is not None and _reaches_before(page.data, since)):
                break
        return ops

    def _bulk_op_page(self, params: dict[str, Any]) -> BulkOpPage:
        call = self._new_call(BULK_OP_MAX_ATTEMPTS)

        def get_once() -> BulkOpPage:
            response = _released(
                self._http.get(
                    self._settings.bulk_op_url, params=params, timeout=self._attempt_timeout(call)
                )
            )
            call.last_status = response.status_code
            if response.status_code != 200:
                self._raise_for_status(response, lambda: {self._api_key})
            try:
                return BulkOpPage.model_validate_json(response.content)
            except ValidationError:
                msg = "Vital's bulk op list is not in the documented shape"
                raise VitalProtocolError(msg, 200) from None

        try:
            return self._with_retries(call, get_once)
        except (_Retryable, httpx.TransportError):
            raise VitalUnavailable(
                _give_up_message(call), status=call.last_status, attempts=call.attempts
            ) from None
        except VitalError as exc:
            exc.attempts = call.attempts
            raise

    # --- retries ------------------------------------------------------------------------------

    def _new_call(self, max_attempts: int) -> _Call:
        return _Call(
            deadline=time.monotonic() + self._seconds_to_deadline(), max_attempts=max_attempts
        )

    def _with_retries[T](self, call: _Call, attempt_once: Callable[[], T]) -> T:
        try:
            result = self._attempt(call, attempt_once)
        except (_Retryable, httpx.TransportError) as exc:
            first_failure: Exception = exc
        else:
            self._refund(0)
            return result
        result = self._retry(call, attempt_once, first_failure)
        self._refund(call.attempts - 1)
        return result

    def _refund(self, retries: int) -> None:
        """An answered call gives back the retries it took, or a fifth of one if it took none
        (the AWS SDKs' retry quota): a file throttled now and then keeps its budget all the way
        through, while one meeting an outage spends it."""
        with self._budget_lock:
            self._budget_left = min(
                float(self.retry_budget), self._budget_left + (retries or REFUND_PER_ANSWER)
            )

    def _retry[T](self, call: _Call, attempt_once: Callable[[], T], failed: Exception) -> T:
        """After a first attempt failed: stamina decides from that failure on, as from the start.

        stamina (with tenacity) is imported here, on the rare path: ~10 ms of every cold start
        otherwise, and most invocations never retry. Its loop starts by re-raising the failure
        already seen, so its attempt count, testing mode and hooks see the same sequence.
        """
        import stamina  # noqa: PLC0415 - only a retry needs it (cold start)

        log_retries()
        replay: Exception | None = failed
        try:
            for attempt in stamina.retry_context(
                on=lambda exc: self._backoff(exc, call),
                attempts=call.max_attempts,
                timeout=None,  # the hook enforces the deadline, counting the wait it picks
                wait_initial=BACKOFF_BASE_SECONDS,
                wait_max=BACKOFF_MAX_SECONDS,
                wait_jitter=0.0,
            ):
                with attempt:
                    if replay is not None:
                        seen, replay = replay, None
                        raise seen
                    return self._attempt(call, attempt_once)
        finally:
            if call.pending_wait is not None:  # the hook allowed a retry stamina did not make
                call.pending_wait = None
                with self._budget_lock:
                    self._budget_left += 1
        raise AssertionError("unreachable")  # pragma: no cover

    def _attempt[T](self, call: _Call, attempt_once: Callable[[], T]) -> T:
        """One attempt; what escapes is a retry candidate (``_Retryable``, a transport error)
        or final (any ``VitalError``)."""
        self._start_attempt(call)
        try:
            return attempt_once()
        except RETRYABLE_TRANSPORT_ERRORS as exc:
            call.last = f"{type(exc).__name__} talking to Vital"
            call.last_status = None
            self.stats.record(transport_errors=1)
            raise
        except httpx.HTTPError as exc:  # e.g. UnsupportedProtocol: no retry helps
            msg = f"could not talk to Vital ({type(exc).__name__})"
            raise VitalClientError(msg) from None
        except _Retryable as exc:
            call.last = f"HTTP {exc.status}"
            raise

    def _start_attempt(self, call: _Call) -> None:
        call.attempts += 1
        if call.pending_wait is not None:
            self.stats.record(retries=1, wait_seconds=call.pending_wait)
            call.pending_wait = None

    def _backoff(self, exc: Exception, call: _Call) -> bool | float:
        """stamina's hook: False to stop, else the seconds to wait before the next attempt."""
        if not isinstance(exc, _Retryable | httpx.TransportError):
            return False
        import stamina  # noqa: PLC0415 - loaded by _retry, which calls this hook

        if call.attempts >= call.max_attempts and not stamina.is_testing():
            return False  # stamina stops here anyway; spend no budget on it
        if self.breaker.open:
            return self._refuse(call, "circuit breaker open: Vital kept failing")
        if isinstance(exc, _Retryable) and exc.retry_after is not None:
            wait = exc.retry_after  # parse_retry_after caps it at MAX_RETRY_AFTER_SECONDS
        else:
            wait = full_jitter_backoff(call.attempts, self._rng)
        if time.monotonic() + wait + MIN_ATTEMPT_SECONDS > call.deadline:
            return self._refuse(call, "too little Lambda time left to retry")
        with self._budget_lock:
            if self._budget_left <= 0:
                budget_spent = True
            else:
                budget_spent = False
                self._budget_left -= 1
        if budget_spent:
            return self._refuse(call, f"the file's retry budget of {self.retry_budget} is spent")
        call.pending_wait = wait
        return wait

    def _refuse(self, call: _Call, why: str) -> bool:
        call.stopped = why
        self.stats.record(retries_refused=1)
        return False

    def _seconds_to_deadline(self) -> float:
        return self._remaining() - self._reserve_seconds

    def _attempt_timeout(self, call: _Call) -> httpx.Timeout:
        """The configured timeouts, shortened so the attempt cannot outlive the deadline."""
        left = max(MIN_ATTEMPT_SECONDS, call.deadline - time.monotonic())
        return self._timeout(min(self._settings.http_timeout_seconds, left))

    @staticmethod
    def _timeout(seconds: float) -> httpx.Timeout:
        return httpx.Timeout(
            connect=min(CONNECT_TIMEOUT_SECONDS, seconds), read=seconds, write=seconds, pool=seconds
        )

    def _raise_for_status(
        self, response: httpx.Response, secrets: Callable[[], set[str]]
    ) -> NoReturn:
        """Raise what a non-2xx answer means; messages are scrubbed of ``secrets()``."""
        status = response.status_code
        if status in RETRYABLE_STATUS:
            if status == 429:
                self.stats.record(throttles=1)
            elif status >= 500:
                self.stats.record(server_errors=1)
            raise _Retryable(status, parse_retry_after(response.headers.get("retry-after")))
        known = secrets()
        if status in (401, 403):
            raise VitalAuthError(_auth_message(status, response, known), status)
        if status == 422:
            issues = _validation_issues(response, known)
            raise VitalRejected(_issues_summary(issues), issues)
        raise VitalClientError(f"HTTP {status}: {_detail_text(response, known)}", status)

    def _secrets(self, body: bytes) -> set[str]:
        """Every value an error message must not repeat: the key and the body's tokens."""
        return {self._api_key, *request_secrets(body)}


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
    frees them, nor the request they hold with its body (up to MAX_BODY_BYTES). They waited for
    the cyclic GC, which had often promoted them to an old generation while the request was out:
    ~47 MB of bodies at 100k rows with the GC held off, and much of it in the peak RSS. Replacing
    the spent stream (its content is already read) lets each go as soon as its chunk is done.
    """
    response.close()  # already closed once read; makes sure before the stream is replaced
    response.stream = httpx.ByteStream(b"")
    return response


# --- messages ---------------------------------------------------------------------------------


def _give_up_message(call: _Call) -> str:
    message = f"gave up after {call.attempts} attempt(s): {call.last}"
    return f"{message} ({call.stopped})" if call.stopped else message


def request_secrets(body: bytes) -> set[str]:
    """Every value of a bulk_import body's connections but the user id (error path only).

    Not the tokens alone: a token in the wrong column (``provider_id``, a scope) would come back
    unmasked in a message that quotes it. The user id is in the outcome row anyway.
    """
    try:
        payload = json.loads(body)
    except ValueError:
        return set()
    connections = payload.get("connections") if isinstance(payload, dict) else None
    found: set[str] = set()
    for connection in connections if isinstance(connections, list) else []:
        if not isinstance(connection, dict):
            continue
        for name, value in connection.items():
            if name == "user_id":
                continue
            # Short values of the other fields ("read", "1234") are masked only as tokens are
            # found by shape: masked as substrings, they would cut words out of Vital's text.
            shortest = _MIN_SECRET_LENGTH if name in _TOKEN_FIELDS else _MIN_STRAY_SECRET_LENGTH
            for text in value if isinstance(value, list) else [value]:
                if isinstance(text, str) and len(text) >= shortest:
                    found.add(text)
    return found


def scrub(text: str, secrets: Iterable[str]) -> str:
    """Mask each known secret value, then anything token-shaped."""
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= _MIN_SECRET_LENGTH:
            text = text.replace(secret, MASK)
    return redact_text(text)


def _reaches_before(ops: list[BulkOp], since: datetime) -> bool:
    for op in ops:
        started = parse_time(op.started_at)
        if started is not None and started < since:
            return True
    return False


def parse_time(value: str | None) -> datetime | None:
    """An ISO 8601 time from Vital (``Z`` or an offset; naive means UTC), or None."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _detail_text(response: httpx.Response, secrets: set[str]) -> str:
    """Vital's ``detail`` when it is a plain string (scrubbed, then cut), else a placeholder."""
    try:
        payload = response.json()
    except ValueError:
        return "no JSON body"
    detail = payload.get("detail") if isinstance(payload, dict) else None
    text = detail if isinstance(detail, str) else "see Vital's response"
    return scrub(text, secrets)[:_MESSAGE_LIMIT]


def _auth_message(status: int, response: httpx.Response, secrets: set[str]) -> str:
    what = (
        "Vital rejected the API key (401): check the secret named by VITAL_API_KEY_SECRET "
        "and that it belongs to this environment (production/sandbox, US/EU)"
        if status == 401
        else "Vital refused the request (403): Link Migration may not be enabled for this team, "
        "or no Bring-Your-Own-OAuth credential is set for the provider; ask Vital support"
    )
    return f"{what}. Vital said: {_detail_text(response, secrets)}"


def _validation_issues(response: httpx.Response, secrets: set[str]) -> list[ValidationIssue]:
    """FastAPI's issues, scrubbed: only loc, msg and type (never ``input``: it echoes data)."""
    try:
        body = ValidationErrorBody.model_validate_json(response.content)
    except ValueError:
        return []
    if isinstance(body.detail, str):
        return []
    return [
        ValidationIssue(
            loc=[scrub(p, secrets) if isinstance(p, str) else p for p in issue.loc],
            msg=scrub(issue.msg, secrets)[:_MESSAGE_LIMIT],
            type=issue.type,
        )
        for issue in body.detail
    ]


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
