"""The one retry policy for requests to Vital: what is retried, how long to wait, when to stop.

Retries run on stamina (tenacity underneath). The backoff hook decides every wait itself:
``Retry-After`` when Vital sent one (capped), otherwise exponential backoff with full jitter. It
also refuses a retry when the file's retry budget is spent, when the circuit breaker is open, or
when the wait plus another attempt would run past the invocation's deadline (derived from the
Lambda's remaining time), so a sick API never burns the whole invocation.
"""

from __future__ import annotations

import email.utils
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC
from typing import TYPE_CHECKING

import httpx

from bulk_import.errors import (
    VitalAnswerLost,
    VitalClientError,
    VitalError,
    VitalNoTime,
    VitalUnavailable,
)
from bulk_import.observability import log_retries

if TYPE_CHECKING:
    from bulk_import.config import Settings
    from bulk_import.vital.breaker import CircuitBreaker
    from bulk_import.vital.client import CallStats

RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
# Transport failures worth another attempt. Not UnsupportedProtocol / LocalProtocolError: those
# are our own mistakes and fail the same way every time.
RETRYABLE_TRANSPORT_ERRORS: tuple[type[httpx.TransportError], ...] = (
    httpx.TimeoutException,
    httpx.NetworkError,
    httpx.RemoteProtocolError,
    httpx.ProxyError,
)
# Failures after which the request may have reached Vital and been acted on: the answer, not
# the request, was lost. A request that is not safe to repeat (a bulk import) is not retried
# after one: ``VitalAnswerLost`` hands it to a settlement by lookup. A connection refused, a
# 503, a 429 or a 408 say the request was not taken, and are retried.
ANSWER_LOST_ERRORS: tuple[type[httpx.TransportError], ...] = (
    httpx.ReadTimeout,
    httpx.ReadError,
    httpx.RemoteProtocolError,
)
# Vital's own failure mid-request, and a gateway's: the API behind it may have the request.
ANSWER_LOST_STATUS = frozenset({500, 502, 504})
MAX_RETRY_AFTER_SECONDS = 60.0
# Full jitter: the n-th retry waits uniform(0, min(BACKOFF_MAX, BACKOFF_BASE * 2 ** (n - 1))).
BACKOFF_BASE_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 20.0
# Of the retry budget, what a call answered at its first attempt gives back (see _refund).
REFUND_PER_ANSWER = 0.2
# No attempt starts with less time than this before the deadline.
MIN_ATTEMPT_SECONDS = 1.0


def reserve_seconds(settings: Settings) -> float:
    """Lambda time kept back from retries (half the run's margin)."""
    return max(1.0, settings.safety_margin_seconds / 2)


def start_seconds(settings: Settings) -> float:
    """Lambda time a request needs left for the client to start it (``post_bulk_import``)."""
    return reserve_seconds(settings) + MIN_ATTEMPT_SECONDS


class _Retryable(Exception):
    def __init__(self, status: int, retry_after: float | None) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.retry_after = retry_after


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
class Call:
    """One logical request and its retries (lives on one worker thread)."""

    deadline: float  # time.monotonic() after which no attempt may run
    max_attempts: int
    attempts: int = 0
    last: str = "no attempt made"
    last_status: int | None = None
    stopped: str | None = None  # why retrying stopped before the attempts ran out
    pending_wait: float | None = None  # chosen by the hook, committed when the retry starts
    # False for a request that must not reach Vital twice (a bulk import): see ANSWER_LOST_*.
    resend_safe: bool = True

    def give_up_message(self) -> str:
        message = f"gave up after {self.attempts} attempt(s): {self.last}"
        return f"{message} ({self.stopped})" if self.stopped else message


class RetryPolicy:
    """The retries of one file: its budget, its deadline and its backoff, shared by threads."""

    def __init__(
        self,
        settings: Settings,
        remaining_seconds: Callable[[], float],
        stats: CallStats,
        breaker: CircuitBreaker,
        rng: random.Random | None = None,
    ) -> None:
        self._remaining = remaining_seconds
        # Retries stop this long before the invocation ends: the other half of the safety
        # margin is the run's, to write outcomes and a checkpoint after the last answer.
        self._reserve_seconds = reserve_seconds(settings)
        self._stats = stats
        self._breaker = breaker
        self._rng = rng
        # Retries for the whole file, so one sick API cannot burn the invocation chunk by chunk;
        # answered calls refill it (``_refund``).
        self.retry_budget = max(10, settings.max_attempts * 2 * settings.max_concurrency)
        self._budget_left = float(self.retry_budget)
        self._budget_lock = threading.Lock()

    @property
    def retries_left(self) -> float:
        with self._budget_lock:
            return self._budget_left

    def seconds_to_deadline(self) -> float:
        return self._remaining() - self._reserve_seconds

    def remaining_seconds(self) -> float:
        """The invocation's time left, margins included."""
        return self._remaining()

    def check_time_to_start(self) -> None:
        """Raise ``VitalNoTime`` when too little Lambda time is left to start a request."""
        if self.seconds_to_deadline() < MIN_ATTEMPT_SECONDS:
            raise VitalNoTime("not sent: too little Lambda time left for a request")

    def new_call(self, max_attempts: int, *, resend_safe: bool = True) -> Call:
        return Call(
            deadline=time.monotonic() + self.seconds_to_deadline(),
            max_attempts=max_attempts,
            resend_safe=resend_safe,
        )

    def raise_if_retryable(self, response: httpx.Response) -> None:
        """Raise a retry candidate for an answer worth another attempt (429, most 5xx)."""
        status = response.status_code
        if status in RETRYABLE_STATUS:
            if status == 429:
                self._stats.record(throttles=1)
            elif status >= 500:
                self._stats.record(server_errors=1)
            raise _Retryable(status, parse_retry_after(response.headers.get("retry-after")))

    def run[T](self, call: Call, attempt_once: Callable[[], T]) -> T:
        """``attempt_once`` until it returns, with retries while the policy allows them.

        Raises ``VitalUnavailable`` when retrying stopped, or the ``VitalError`` an attempt
        raised; either carries the attempts made.
        """
        try:
            return self._with_retries(call, attempt_once)
        except (_Retryable, httpx.TransportError):
            raise VitalUnavailable(
                call.give_up_message(), status=call.last_status, attempts=call.attempts
            ) from None
        except VitalError as exc:
            exc.attempts = call.attempts
            raise

    def _with_retries[T](self, call: Call, attempt_once: Callable[[], T]) -> T:
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

    def _retry[T](self, call: Call, attempt_once: Callable[[], T], failed: Exception) -> T:
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

    def _attempt[T](self, call: Call, attempt_once: Callable[[], T]) -> T:
        """One attempt; what escapes is a retry candidate (``_Retryable``, a transport error)
        or final (any ``VitalError``, ``VitalAnswerLost`` among them)."""
        call.attempts += 1
        if call.pending_wait is not None:
            self._stats.record(retries=1, wait_seconds=call.pending_wait)
            call.pending_wait = None
        sent_at = time.time()
        try:
            return attempt_once()
        except RETRYABLE_TRANSPORT_ERRORS as exc:
            call.last = f"{type(exc).__name__} talking to Vital"
            call.last_status = None
            self._stats.record(transport_errors=1)
            if call.resend_safe or not isinstance(exc, ANSWER_LOST_ERRORS):
                raise
        except httpx.HTTPError as exc:  # e.g. UnsupportedProtocol: no retry helps
            msg = f"could not talk to Vital ({type(exc).__name__})"
            raise VitalClientError(msg) from None
        except _Retryable as exc:
            call.last = f"HTTP {exc.status}"
            if call.resend_safe or exc.status not in ANSWER_LOST_STATUS:
                raise
        # The answer was lost. Raised outside the handler, so that no context chain keeps the
        # request (and its body, up to MAX_BODY_BYTES) or the response alive with the error.
        self._stats.record(answers_lost=1)
        raise _answer_lost(call, sent_at)

    def _backoff(self, exc: Exception, call: Call) -> bool | float:
        """stamina's hook: False to stop, else the seconds to wait before the next attempt."""
        if not isinstance(exc, _Retryable | httpx.TransportError):
            return False
        import stamina  # noqa: PLC0415 - loaded by _retry, which calls this hook

        if call.attempts >= call.max_attempts and not stamina.is_testing():
            return False  # stamina stops here anyway; spend no budget on it
        if self._breaker.open:
            return self._refuse(call, "circuit breaker open: Vital kept failing")
        if isinstance(exc, _Retryable) and exc.retry_after is not None:
            wait = exc.retry_after  # parse_retry_after caps it at MAX_RETRY_AFTER_SECONDS
        else:
            wait = full_jitter_backoff(call.attempts, self._rng)
        if time.monotonic() + wait + MIN_ATTEMPT_SECONDS > call.deadline:
            return self._refuse(call, "too little Lambda time left to retry")
        if not self._take_from_budget():
            return self._refuse(call, f"the file's retry budget of {self.retry_budget} is spent")
        call.pending_wait = wait
        return wait

    def _take_from_budget(self) -> bool:
        with self._budget_lock:
            if self._budget_left <= 0:
                return False
            self._budget_left -= 1
            return True

    def _refuse(self, call: Call, why: str) -> bool:
        call.stopped = why
        self._stats.record(retries_refused=1)
        return False


def _answer_lost(call: Call, sent_at: float) -> VitalAnswerLost:
    message = f"no answer from Vital ({call.last}); it may have received the request"
    return VitalAnswerLost(message, call.last_status, call.attempts, sent_at=sent_at)
