"""The circuit breaker shared by the posting threads of one file."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

BREAKER_THRESHOLD = 3
BREAKER_COOLDOWN_SECONDS = 30.0


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
